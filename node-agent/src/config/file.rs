//! The TOML configuration file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::distribution::DistributionFile;
use super::{
    BackoffConfig, CapabilityOverrides, ConfigError, LlmConfig, SpoolConfig, TestKnobs, TlsConfig,
    err,
};

/// The TOML file's layout; every field optional so flags and env can fill in.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub device_id: Option<String>,
    pub broker: Option<String>,
    pub store: Option<PathBuf>,
    pub listen: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub telemetry_interval_secs: Option<u64>,
    pub keep_alive_secs: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub inference_threads: Option<usize>,
    /// See `--intra-op-threads`.
    pub intra_op_threads: Option<usize>,
    /// `libonnxruntime.so` to load; see `--onnxruntime-lib`.
    pub onnxruntime_lib: Option<PathBuf>,
    /// PEM ed25519 public keys (or base64 raw keys, one per line) artifacts must be signed by.
    pub trusted_keys_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub capabilities: CapabilityOverrides,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub backoff: BackoffConfig,
    #[serde(default)]
    pub llm: LlmConfig,
    #[serde(default)]
    pub distribution: DistributionFile,
    #[serde(default)]
    pub test: TestKnobs,
}

pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let field = e
            .span()
            .and_then(|span| text.get(span))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "config".into());
        err(&field, e.message())
    })
}
