//! EdgeFleet's decisions, as pure functions over plain data: no I/O, no clock, no Kubernetes
//! client. The controller's adapters feed them inventory and telemetry and carry out the result.
