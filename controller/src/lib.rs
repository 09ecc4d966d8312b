//! The EdgeFleet controller: thin adapters (SQL, MQTT, Kubernetes, HTTP) around the pure
//! decisions in `edgefleet-core`.

pub mod attribution;
pub mod cli;
pub mod clock;
pub mod http;
pub mod ingest;
pub mod ingest_worker;
pub mod inventory;
pub mod k8s;
pub mod metrics;
pub mod mqtt;
pub mod reconcile;
pub mod run;
#[cfg(feature = "standalone")]
pub mod standalone;
pub mod store;
pub mod telemetry;
