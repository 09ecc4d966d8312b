//! The agent's flags; each has an `EDGEFLEET_AGENT_*` environment variable.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Default, Clone)]
#[command(name = "edgefleet-agent", version, about = "EdgeFleet node agent")]
pub struct Args {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "EDGEFLEET_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_AGENT_DEVICE_ID")]
    pub device_id: Option<String>,
    /// mqtt://host:port or mqtts://host:port
    #[arg(long, env = "EDGEFLEET_AGENT_BROKER")]
    pub broker: Option<String>,
    /// Model store directory (artifacts, persisted state, telemetry spool).
    #[arg(long, env = "EDGEFLEET_AGENT_STORE")]
    pub store: Option<PathBuf>,
    /// Local inference API address; port 0 picks a free one (written to <store>/listen-addr).
    #[arg(long, env = "EDGEFLEET_AGENT_LISTEN")]
    pub listen: Option<String>,
    /// k=v,k2=v2 (added to the file's labels)
    #[arg(long, env = "EDGEFLEET_AGENT_LABELS")]
    pub labels: Option<String>,
    #[arg(long, env = "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_SECS")]
    pub telemetry_interval_secs: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_KEEP_ALIVE_SECS")]
    pub keep_alive_secs: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Inferences run at once (default: the cores).
    #[arg(long, env = "EDGEFLEET_AGENT_INFERENCE_THREADS")]
    pub inference_threads: Option<usize>,
    /// Threads one inference may use inside an operator (intra-op), for tract and ONNX Runtime
    /// alike (default: the cores divided by --inference-threads, at least 1).
    #[arg(long, env = "EDGEFLEET_AGENT_INTRA_OP_THREADS")]
    pub intra_op_threads: Option<usize>,
    /// `libonnxruntime.so` to load (the PyPI `onnxruntime` wheel's `capi/` has one); default:
    /// `ORT_DYLIB_PATH`, else the library search path. Without it the agent runs tract only.
    #[arg(long, env = "EDGEFLEET_AGENT_ONNXRUNTIME_LIB")]
    pub onnxruntime_lib: Option<PathBuf>,
    /// Artifacts must carry an ed25519 signature by one of these keys (PEM or base64 lines).
    #[arg(long, env = "EDGEFLEET_AGENT_TRUSTED_KEYS_FILE")]
    pub trusted_keys_file: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_AGENT_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_AGENT_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_AGENT_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_AGENT_ARCH")]
    pub arch: Option<String>,
    #[arg(long, env = "EDGEFLEET_AGENT_CORES")]
    pub cores: Option<u32>,
    #[arg(long, env = "EDGEFLEET_AGENT_MEMORY_MIB")]
    pub memory_mib: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_MEMORY_AVAILABLE_MIB")]
    pub memory_available_mib: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_DISK_FREE_MIB")]
    pub disk_free_mib: Option<u64>,
    /// Comma-separated; an empty value announces none.
    #[arg(long, env = "EDGEFLEET_AGENT_CPU_FEATURES")]
    pub cpu_features: Option<String>,
    #[arg(long, env = "EDGEFLEET_AGENT_ACCELERATORS")]
    pub accelerators: Option<String>,
    /// Comma-separated of tract, onnxruntime, llamacpp.
    #[arg(long, env = "EDGEFLEET_AGENT_RUNTIMES")]
    pub runtimes: Option<String>,
    #[arg(long, env = "EDGEFLEET_AGENT_SPOOL_MAX_WINDOWS")]
    pub spool_max_windows: Option<usize>,
    #[arg(long, env = "EDGEFLEET_AGENT_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_BACKOFF_INITIAL_MS")]
    pub backoff_initial_ms: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_BACKOFF_MAX_MS")]
    pub backoff_max_ms: Option<u64>,
    /// Language models: context length per sequence (prompt + completion), default 2048.
    #[arg(long, env = "EDGEFLEET_AGENT_LLM_CONTEXT_TOKENS")]
    pub llm_context_tokens: Option<u32>,
    /// Language models: sequences generated at once per model, default 1.
    #[arg(long, env = "EDGEFLEET_AGENT_LLM_SLOTS")]
    pub llm_slots: Option<u32>,
    /// Language models: requests that may wait for a slot (more get 429), default 4.
    #[arg(long, env = "EDGEFLEET_AGENT_LLM_QUEUE")]
    pub llm_queue: Option<u32>,
    /// Language models: llama.cpp threads per sequence, 0 (default) for one per core.
    #[arg(long, env = "EDGEFLEET_AGENT_LLM_THREADS")]
    pub llm_threads: Option<u32>,
    /// Language models: prompt tokens per evaluation step, default 512.
    #[arg(long, env = "EDGEFLEET_AGENT_LLM_BATCH_TOKENS")]
    pub llm_batch_tokens: Option<u32>,
    /// Registry credentials as a docker `config.json` (`docker login` / `oras login` write
    /// one), for `oci://` artifacts.
    #[arg(long, env = "EDGEFLEET_AGENT_REGISTRY_AUTH_FILE")]
    pub registry_auth_file: Option<PathBuf>,
    /// Comma-separated `host:port`s of registries reached over plain HTTP.
    #[arg(long, env = "EDGEFLEET_AGENT_INSECURE_REGISTRIES")]
    pub insecure_registries: Option<String>,
    /// Serve verified artifacts to this device's site on this address (this device is the
    /// site cache).
    #[arg(long, env = "EDGEFLEET_AGENT_SITE_CACHE_LISTEN")]
    pub site_cache_listen: Option<String>,
    /// The URL the site's devices reach the cache at (default: http://<site-cache-listen>).
    #[arg(long, env = "EDGEFLEET_AGENT_SITE_CACHE_URL")]
    pub site_cache_url: Option<String>,
    /// Test knob: artificial latency added to every inference.
    #[arg(long, env = "EDGEFLEET_AGENT_EXTRA_LATENCY_MS")]
    pub extra_latency_ms: Option<u64>,
    /// Test knob per variant: variant=ms,variant2=ms
    #[arg(long, env = "EDGEFLEET_AGENT_EXTRA_LATENCY_MS_BY_VARIANT")]
    pub extra_latency_ms_by_variant: Option<String>,
}
