//! The `edgefleet` command line. Every flag also reads an environment variable.

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "edgefleet",
    version,
    about = "EdgeFleet: ML models onto fleets of edge devices"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[arg(
        long,
        global = true,
        env = "EDGEFLEET_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller against a Kubernetes cluster (ModelDeployment CRs).
    Run(Box<RunArgs>),
    /// Print the ModelDeployment CRD generated from the Rust types.
    Crds,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings shared by every mode that runs the control loop.
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    /// Fleet state database: sqlite://PATH (embedded) or postgres://... (production).
    #[arg(
        long,
        env = "EDGEFLEET_DATABASE_URL",
        default_value = "sqlite://edgefleet.db"
    )]
    pub database_url: String,
    /// MQTT broker devices connect to.
    #[arg(
        long,
        env = "EDGEFLEET_BROKER",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    pub broker: String,
    /// MQTT client id; keep it stable per replica so the broker holds telemetry across restarts.
    #[arg(
        long,
        env = "EDGEFLEET_MQTT_CLIENT_ID",
        default_value = "edgefleet-controller"
    )]
    pub mqtt_client_id: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "EDGEFLEET_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Width in seconds of the telemetry slices canary analysis reads.
    #[arg(long, env = "EDGEFLEET_TELEMETRY_SLICE_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub telemetry_slice_seconds: u32,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Only watch this namespace (empty: all namespaces).
    #[arg(long, env = "EDGEFLEET_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,
    /// Take part in leader election through a coordination.k8s.io Lease.
    #[arg(long, env = "EDGEFLEET_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    #[arg(
        long,
        env = "EDGEFLEET_LEASE_NAME",
        default_value = "edgefleet-controller"
    )]
    pub lease_name: String,
    #[arg(long, env = "EDGEFLEET_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(
        long,
        env = "EDGEFLEET_IDENTITY",
        default_value = "edgefleet-controller-0"
    )]
    pub identity: String,
}
