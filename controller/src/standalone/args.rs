//! Flags of the embedded default's verbs: `up`, `demo`, and the kubectl-like client verbs.
//! Every flag also reads an environment variable.

use clap::{Args, ValueEnum};

/// Where the standalone control plane keeps its state and listens.
#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// State directory (fleet.db, token, artifacts); default $XDG_DATA_HOME/edgefleet.
    #[arg(long, env = "EDGEFLEET_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Fleet state database; default sqlite://<data-dir>/fleet.db.
    #[arg(long, env = "EDGEFLEET_DATABASE_URL")]
    pub database_url: Option<String>,
    /// REST API, artifacts (/artifacts/), /healthz, /readyz and /metrics.
    #[arg(long, env = "EDGEFLEET_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// MQTT listener devices connect to.
    #[arg(long, env = "EDGEFLEET_MQTT_LISTEN", default_value = "127.0.0.1:1883")]
    pub mqtt_listen: String,
    #[arg(
        long,
        env = "EDGEFLEET_BROKER_IMPL",
        value_enum,
        default_value = "embedded"
    )]
    pub broker_impl: super::broker::BrokerImpl,
    /// Directory served at /artifacts/ (Range requests supported); default <data-dir>/artifacts.
    #[arg(long, env = "EDGEFLEET_ARTIFACTS_DIR")]
    pub artifacts_dir: Option<std::path::PathBuf>,
    /// Share telemetry with `edgefleet ingest` workers on the same database: the MQTT 5
    /// shared subscription group they name too. Unset: this process counts every window.
    #[arg(long, env = "EDGEFLEET_TELEMETRY_SHARE_GROUP")]
    pub telemetry_share_group: Option<String>,
    #[command(flatten)]
    pub timing: crate::run::LoopTiming,
    #[command(flatten)]
    pub distribution: crate::run::DistributionArgs,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of agent processes (at least 4 devices are always started).
    #[arg(long, env = "EDGEFLEET_DEMO_DEVICES", default_value_t = 8)]
    pub devices: usize,
    /// The edgefleet-agent binary; default: next to this executable.
    #[arg(long, env = "EDGEFLEET_AGENT_BIN")]
    pub agent_bin: Option<std::path::PathBuf>,
    /// Where fetch-models.sh put the models; default ~/.cache/edgefleet/models.
    #[arg(long, env = "EDGEFLEET_MODELS")]
    pub models_dir: Option<std::path::PathBuf>,
    #[arg(
        long,
        short = 'o',
        env = "EDGEFLEET_DEMO_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: DemoOutput,
    /// Fewer devices and requests, no pauses: for tests.
    #[arg(long, env = "EDGEFLEET_DEMO_SHORT")]
    pub short: bool,
    /// The chat-model scene: SmolLM2 in Q4_1 and Q2_K on four devices of two memory
    /// classes, one streamed answer, time to first token and tokens/s per cohort.
    #[arg(long, env = "EDGEFLEET_DEMO_LLM")]
    pub llm: bool,
    /// Keep state here instead of a temporary directory that is removed at the end.
    #[arg(long, env = "EDGEFLEET_DEMO_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    #[arg(long, env = "EDGEFLEET_DEMO_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: String,
    #[arg(
        long,
        env = "EDGEFLEET_DEMO_MQTT_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub mqtt_listen: String,
    #[arg(
        long,
        env = "EDGEFLEET_BROKER_IMPL",
        value_enum,
        default_value = "embedded"
    )]
    pub broker_impl: super::broker::BrokerImpl,
    /// Keep the control plane and agents running after the summary, until Ctrl-C, to explore
    /// with `edgefleet get/describe` and /metrics.
    #[arg(long, env = "EDGEFLEET_DEMO_HOLD")]
    pub hold: bool,
    /// Give up (and fail) after this long.
    #[arg(long, env = "EDGEFLEET_DEMO_TIMEOUT_SECONDS", default_value_t = 600)]
    pub timeout_seconds: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DemoOutput {
    /// Live table on stderr-friendly ANSI, then a summary.
    Text,
    /// Only a machine-readable summary on stdout (progress goes to stderr).
    Json,
}

/// How the CLI verbs reach the standalone API.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    #[arg(
        long,
        env = "EDGEFLEET_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// Bearer token; default: read <data-dir>/token.
    #[arg(long, env = "EDGEFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where `edgefleet up` wrote the token; default $XDG_DATA_HOME/edgefleet.
    #[arg(long, env = "EDGEFLEET_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    #[arg(
        long,
        short = 'n',
        env = "EDGEFLEET_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
}

#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    /// YAML files with one or more ModelDeployments; `-` reads stdin.
    #[arg(
        long = "filename",
        short = 'f',
        env = "EDGEFLEET_APPLY_FILES",
        value_delimiter = ',',
        required = true
    )]
    pub files: Vec<std::path::PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Yaml,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// `md` (modeldeployments) or `devices`.
    pub resource: String,
    pub name: Option<String>,
    #[arg(
        long,
        short = 'o',
        env = "EDGEFLEET_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    pub output: OutputFormat,
    /// `md` only: after the table, print a line whenever a deployment's phase, step or
    /// device counts change (like `kubectl get -w`), until Ctrl-C.
    #[arg(long, short = 'w', env = "EDGEFLEET_WATCH")]
    pub watch: bool,
    /// How often `--watch` asks the API.
    #[arg(long, env = "EDGEFLEET_WATCH_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
    pub watch_interval_ms: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug, Clone)]
pub struct DescribeArgs {
    /// `md`
    pub resource: String,
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    /// `md`
    pub resource: String,
    pub name: String,
    /// Wait until the models left the devices and the deployment is gone.
    #[arg(long, env = "EDGEFLEET_DELETE_WAIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}
