//! The EdgeFleet controller: thin adapters (SQL, MQTT, Kubernetes, HTTP) around the pure
//! decisions in `edgefleet-core`.

pub mod engine;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod mqtt;
pub mod store;
pub mod telemetry;
