//! MQTT plumbing both sides share, so the controller and the node agent read a broker URL,
//! build a TLS client and back off between reconnects in exactly the same way.

pub mod backoff;
pub mod tls;
pub mod url;

pub use backoff::Backoff;
pub use tls::{TlsError, TlsField, TlsFiles, TlsSettingNames, client_config, transport};
pub use url::BrokerUrl;

pub use rustls;
