//! Configuration: a TOML file, overridden by environment variables and flags (clap gives a
//! flag precedence over its `EDGEFLEET_AGENT_*` variable). Every error names the field.
//! [`args`] declares the flags, [`file`] the TOML layout, [`resolve`] merges them into the
//! validated [`Config`] declared here.

mod args;
mod distribution;
mod file;
mod llm;
mod resolve;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use edgefleet_mqtt::BrokerUrl;
use edgefleet_protocol::Runtime;
use edgefleet_protocol::wire::DeviceId;

use crate::install::signing::TrustedKeys;

pub use args::Args;
pub use distribution::{Distribution, SiteCacheConfig};
pub use file::{FileConfig, parse_file};
pub use llm::LlmConfig;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config field `{field}`: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn err(field: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Replace what the agent detects, to simulate heterogeneous fleets on one machine.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityOverrides {
    pub arch: Option<String>,
    pub cores: Option<u32>,
    pub memory_mib: Option<u64>,
    pub memory_available_mib: Option<u64>,
    pub disk_free_mib: Option<u64>,
    pub cpu_features: Option<Vec<String>>,
    pub accelerators: Option<Vec<String>>,
    pub runtimes: Option<Vec<Runtime>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub max_windows: usize,
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        // A day of 10-second windows.
        Self {
            max_windows: 8640,
            max_bytes: 32 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial_ms: 250,
            max_ms: 30_000,
        }
    }
}

/// Knobs for tests (canary rollback): artificial latency added to every inference.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestKnobs {
    #[serde(default)]
    pub extra_latency_ms: u64,
    /// Per variant name, replaces the global value.
    #[serde(default)]
    pub extra_latency_ms_by_variant: BTreeMap<String, u64>,
}

impl TestKnobs {
    pub fn extra_latency(&self, variant: &str) -> Duration {
        let ms = self
            .extra_latency_ms_by_variant
            .get(variant)
            .copied()
            .unwrap_or(self.extra_latency_ms);
        Duration::from_millis(ms)
    }
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub device_id: DeviceId,
    pub broker: BrokerUrl,
    pub store: PathBuf,
    pub listen: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub telemetry_interval: Duration,
    pub keep_alive: Duration,
    pub max_body_bytes: usize,
    pub inference_threads: usize,
    /// Threads one inference uses inside an operator, the same for every runtime.
    pub intra_op_threads: usize,
    /// Where to load ONNX Runtime from, if not from `ORT_DYLIB_PATH` or the search path.
    pub onnxruntime_lib: Option<PathBuf>,
    pub trusted_keys: TrustedKeys,
    pub tls: TlsConfig,
    pub capabilities: CapabilityOverrides,
    pub spool: SpoolConfig,
    pub backoff: BackoffConfig,
    pub llm: LlmConfig,
    pub distribution: Distribution,
    pub test: TestKnobs,
}
