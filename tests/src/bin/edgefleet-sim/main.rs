//! `edgefleet-sim`: a fleet of simulated devices speaking wire protocol v1 to a real
//! Mosquitto, driving a real standalone controller (`edgefleet up --broker-impl mosquitto`),
//! and measuring what BENCHMARKS.md reports: time to plan and publish a rollout to every
//! device, time to 100 % through zero-pause canary steps, telemetry ingest next to the broker's
//! own throughput (a bare subscriber counting the same messages), controller CPU and peak RSS.
//!
//! Devices sit behind `--gateways` MQTT connections (gateway mode, see `fleet.rs`). With
//! `--llm` the deployment's variants are language models on llama.cpp and devices report LLM
//! windows (`llm.rs`); with `--hold` the fleet keeps sending telemetry after the last phase
//! until standard input closes, for a Prometheus scraping `--api-listen` to watch.

mod bench;
mod fleet;
mod llm;
mod mix;
mod probe;
mod rng;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "edgefleet-sim",
    about = "Simulated device fleet and controller benchmarks"
)]
pub struct Args {
    /// Simulated devices.
    #[arg(long, env = "EDGEFLEET_SIM_DEVICES", default_value_t = 1000)]
    pub devices: usize,
    /// MQTT connections the devices are spread over (gateway mode).
    #[arg(long, env = "EDGEFLEET_SIM_GATEWAYS", default_value_t = 8)]
    pub gateways: usize,
    /// Seed of the capability mix and the latency samples.
    #[arg(long, env = "EDGEFLEET_SIM_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Each device sends a telemetry window this often (staggered over the period).
    #[arg(long, env = "EDGEFLEET_SIM_TELEMETRY_SECONDS", default_value_t = 5)]
    pub telemetry_seconds: u32,
    /// Inferences per telemetry window (latency samples drawn per window).
    #[arg(long, env = "EDGEFLEET_SIM_REQUESTS_PER_WINDOW", default_value_t = 20)]
    pub requests_per_window: u64,
    /// Simulated download + load time of a model; 0 acknowledges desired documents at once.
    #[arg(long, env = "EDGEFLEET_SIM_DOWNLOAD_MS", default_value_t = 0)]
    pub download_ms: u64,
    /// Canary steps (percent, no pause) of the second rollout.
    #[arg(
        long,
        env = "EDGEFLEET_SIM_STEPS",
        value_delimiter = ',',
        default_value = "10,50"
    )]
    pub steps: Vec<u32>,
    /// Windows every device sends back to back in the ingest phase (0 skips the phase).
    #[arg(long, env = "EDGEFLEET_SIM_FLOOD_WINDOWS", default_value_t = 2)]
    pub flood_windows: u64,
    /// Stop after this phase (`publish` skips the canary rollout and the flood).
    #[arg(
        long,
        env = "EDGEFLEET_SIM_STOP_AFTER",
        value_enum,
        default_value = "all"
    )]
    pub stop_after: StopAfter,
    /// The `edgefleet` binary; default: next to this executable.
    #[arg(long, env = "EDGEFLEET_SIM_EDGEFLEET_BIN")]
    pub edgefleet_bin: Option<PathBuf>,
    /// Controller database; default a fresh SQLite file in the work directory. A PostgreSQL
    /// URL must name an empty database.
    #[arg(long, env = "EDGEFLEET_SIM_DATABASE_URL")]
    pub database_url: Option<String>,
    /// `edgefleet ingest` workers beside the controller, sharing telemetry with it (an MQTT 5
    /// shared subscription) and counting windows into the same database; ingest figures add
    /// up all of them.
    #[arg(long, env = "EDGEFLEET_SIM_INGEST_WORKERS", default_value_t = 0)]
    pub ingest_workers: usize,
    /// Give up on any phase after this long.
    #[arg(
        long,
        env = "EDGEFLEET_SIM_PHASE_TIMEOUT_SECONDS",
        default_value_t = 600
    )]
    pub phase_timeout_seconds: u64,
    /// Roll out language models: every variant runs on llama.cpp (`runtime: llamacpp`), devices
    /// announce it, and each window of a device serving one carries an LLM window (time to
    /// first token, inter-token latency, token rates and counts).
    #[arg(long, env = "EDGEFLEET_SIM_LLM")]
    pub llm: bool,
    /// The controller's API and /metrics address; default a free port on 127.0.0.1.
    #[arg(long, env = "EDGEFLEET_SIM_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// After the last phase, keep the fleet online and sending telemetry until standard input
    /// closes, then report (what the fleet sent until then included).
    #[arg(long, env = "EDGEFLEET_SIM_HOLD")]
    pub hold: bool,
    #[arg(
        long,
        short = 'o',
        env = "EDGEFLEET_SIM_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: Output,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum StopAfter {
    /// Hellos, then the first rollout until every device holds its desired document.
    Publish,
    /// Also the second rollout through its canary steps.
    Rollout,
    /// Also the telemetry flood.
    All,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Progress and a markdown table row on stderr/stdout.
    Text,
    /// The report as one JSON object on stdout.
    Json,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("edgefleet-sim: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("edgefleet-sim: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
