//! The `edgefleet` command line. Every flag also reads an environment variable.

use clap::{Parser, Subcommand, ValueEnum};

use crate::ingest_worker::IngestArgs;
use crate::run::RunArgs;
#[cfg(feature = "standalone")]
use crate::standalone::args::{ApplyArgs, DeleteArgs, DemoArgs, DescribeArgs, GetArgs, UpArgs};

#[derive(Parser, Debug)]
#[command(
    name = "edgefleet",
    version,
    about = "EdgeFleet: ML models onto fleets of edge devices"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr; text is coloured only on a terminal and without NO_COLOR.
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
    /// Count a share of device telemetry into the fleet store and reconcile nothing: scales
    /// ingest apart from the reconciling leader (needs --telemetry-share-group and the
    /// leader's database).
    Ingest(Box<IngestArgs>),
    /// Print the ModelDeployment CRD generated from the Rust types.
    Crds,
    #[cfg(feature = "standalone")]
    /// Run the whole control plane on this machine: embedded MQTT broker, SQLite, artifact
    /// server and the REST API the other verbs talk to.
    Up(Box<UpArgs>),
    #[cfg(feature = "standalone")]
    /// Run a demo fleet: the standalone control plane, real agent processes and a real model
    /// rolled out in compressed variants through a canary.
    Demo(Box<DemoArgs>),
    #[cfg(feature = "standalone")]
    /// Create or update ModelDeployments from YAML files (multi-document; `-` for stdin).
    Apply(ApplyArgs),
    #[cfg(feature = "standalone")]
    /// List ModelDeployments (`md`) or devices.
    Get(GetArgs),
    #[cfg(feature = "standalone")]
    /// Show one ModelDeployment in detail: devices, variants, cohorts, verdicts, history.
    Describe(DescribeArgs),
    #[cfg(feature = "standalone")]
    /// Delete a ModelDeployment (its models leave every device).
    Delete(DeleteArgs),
    #[cfg(feature = "compress")]
    /// Make int8/fp16 variants of an ONNX model and measure size, latency and drift
    /// (`edgefleet compress measure` imports a variant made by another tool).
    Compress(Box<edgefleet_compress::CompressArgs>),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
