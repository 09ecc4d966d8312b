//! The contract between the controller and devices: the versioned MQTT wire protocol, the
//! controller's presence messages, the latency histogram devices report, and the parts of a
//! `ModelDeployment` spec a device needs to run its model. Pure data and pure functions, no
//! I/O and no Kubernetes, so the node agent links none of the control plane.

mod checks;
pub mod histogram;
pub mod llm;
pub mod oci;
pub mod offload;
pub mod presence;
pub mod spec;
pub mod terminal;
pub mod wire;

pub use histogram::LatencyHistogram;
pub use offload::*;
pub use spec::*;
