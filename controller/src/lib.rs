//! The EdgeFleet controller: thin adapters (SQL, MQTT, Kubernetes, HTTP) around the pure
//! decisions in `edgefleet-core`.

pub mod cli;
pub mod engine;
pub mod http;
pub mod ingest;
pub mod inventory;
pub mod k8s;
pub mod metrics;
pub mod mqtt;
pub mod run;
pub mod standalone;
pub mod store;
pub mod telemetry;
