//! `site-cache-bench`: one site, N agents, one model behind a thin uplink; bytes fetched from
//! the origin and rollout time without and with a site cache, and with the cache killed
//! halfway. Printed as a markdown table (BENCHMARKS.md, "Site cache").
//!
//! ```text
//! tests/tools/fetch-compress-models.sh     # minilm.onnx, 69 MB
//! cargo build --release -p edgefleet-agent --bins
//! target/release/site-cache-bench [--agents 20] [--uplink-mb-per-s 40]
//! ```
//!
//! The origin is an HTTP server in this process whose responses all share one token bucket
//! of `--uplink-mb-per-s` (the site's uplink; HTTP Range supported, so devices resume on it).
//! This process plays the controller: it publishes each device's desired document over MQTT,
//! naming the cache agent as the site cache in the cached scenarios, and waits until every
//! agent serves the model.

#[path = "shared/defaults.rs"]
mod defaults;
#[path = "shared/fleet.rs"]
mod fleet;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use rumqttc::QoS;
use tokio::sync::Mutex;

use edgefleet_agent::install::pull::sha256_hex;
use edgefleet_protocol::wire::{self, Assignment, Channel, Desired, DeviceId, Role};
use edgefleet_protocol::{Artifact, ModelRef, Precision, Runtime};
use fleet::{BenchAgent, broker, control_client, start_agent, wait_ready};

#[derive(clap::Parser)]
#[command(name = "site-cache-bench")]
struct Args {
    /// Agents at the site (besides the cache agent).
    #[arg(long, env = "EDGEFLEET_BENCH_AGENTS", default_value_t = 20)]
    agents: usize,
    /// The model file, in `--models`.
    #[arg(long, env = "EDGEFLEET_BENCH_MODEL", default_value = "minilm.onnx")]
    model: String,
    #[arg(long, env = "EDGEFLEET_MODELS", default_value_os_t = defaults::models_dir())]
    models: PathBuf,
    /// The site's uplink to the origin, shared by every download, in MB/s.
    #[arg(long, env = "EDGEFLEET_BENCH_UPLINK_MB_PER_S", default_value_t = 40.0)]
    uplink_mb_per_s: f64,
    /// Broker the agents connect to; a private Mosquitto is started when unset.
    #[arg(long, env = "EDGEFLEET_BENCH_BROKER")]
    broker: Option<String>,
    /// The agent binary; default: next to this executable.
    #[arg(long, env = "EDGEFLEET_BENCH_AGENT", default_value_os_t = defaults::agent())]
    agent: PathBuf,
}

/// The origin: one file, every byte through one shared uplink.
struct Origin {
    bytes: Bytes,
    sent: AtomicU64,
    /// When the uplink is next free.
    uplink_free_at: Mutex<Instant>,
    bytes_per_second: f64,
}

async fn serve_origin(State(origin): State<Arc<Origin>>, headers: HeaderMap) -> Response {
    let start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok());
    let total = origin.bytes.len();
    let (status, from) = match start {
        Some(from) if from < total => (StatusCode::PARTIAL_CONTENT, from),
        Some(_) => return StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
        None => (StatusCode::OK, 0),
    };
    let body = origin.bytes.slice(from..);
    let chunks: Vec<Bytes> = (0..body.len())
        .step_by(64 * 1024)
        .map(|i| body.slice(i..(i + 64 * 1024).min(body.len())))
        .collect();
    let paced = origin.clone();
    let stream = futures_util::stream::iter(chunks).then(move |chunk| {
        let origin = paced.clone();
        async move {
            let wait = {
                let mut free_at = origin.uplink_free_at.lock().await;
                let now = Instant::now();
                let start = (*free_at).max(now);
                *free_at =
                    start + Duration::from_secs_f64(chunk.len() as f64 / origin.bytes_per_second);
                *free_at - now
            };
            tokio::time::sleep(wait).await;
            origin.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(chunk)
        }
    });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, (total - from).into());
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {from}-{}/{total}", total - 1);
        if let Ok(value) = range.parse() {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    response
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    NoCache,
    Cache,
    CacheKilledHalfway,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::NoCache => "no site cache",
            Scenario::Cache => "site cache",
            Scenario::CacheKilledHalfway => "site cache killed halfway",
        }
    }
}

struct Outcome {
    origin_bytes: u64,
    seconds: f64,
    ready: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Args = clap::Parser::parse();
    let path = args.models.join(&args.model);
    let bytes = Bytes::from(std::fs::read(&path).with_context(|| path.display().to_string())?);
    let work = std::env::temp_dir().join(format!("site-cache-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let (broker_url, _private) = broker(args.broker.clone(), &work).await?;
    let size = bytes.len() as u64;
    let mut rows = Vec::new();
    for scenario in [
        Scenario::NoCache,
        Scenario::Cache,
        Scenario::CacheKilledHalfway,
    ] {
        let outcome = run(&args, scenario, bytes.clone(), &broker_url, &work).await?;
        rows.push((scenario, outcome));
    }
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "\n{} agents, {} ({:.1} MB), uplink {} MB/s\n",
        args.agents,
        args.model,
        size as f64 / 1e6,
        args.uplink_mb_per_s
    );
    println!(
        "| scenario | bytes from the origin | × model size | rollout time (s) | devices ready |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (scenario, o) in rows {
        println!(
            "| {} | {} | {:.2} | {:.1} | {}/{} |",
            scenario.label(),
            o.origin_bytes,
            o.origin_bytes as f64 / size as f64,
            o.seconds,
            o.ready,
            args.agents
        );
    }
    Ok(())
}

async fn run(
    args: &Args,
    scenario: Scenario,
    bytes: Bytes,
    broker: &str,
    work: &std::path::Path,
) -> anyhow::Result<Outcome> {
    let size = bytes.len() as u64;
    let sha256 = sha256_hex(&bytes);
    let origin = Arc::new(Origin {
        bytes,
        sent: AtomicU64::new(0),
        uplink_free_at: Mutex::new(Instant::now()),
        bytes_per_second: args.uplink_mb_per_s * 1e6,
    });
    let app = axum::Router::new()
        .route("/model.onnx", axum::routing::get(serve_origin))
        .with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin_addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let tag = format!("{}-{}", std::process::id(), scenario as u8);
    let dir = work.join(&tag);
    let mut cache: Option<BenchAgent> = None;
    let mut cache_url = None;
    if scenario != Scenario::NoCache {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let agent = start_agent(
            &args.agent,
            1,
            &format!("cache-{tag}"),
            broker,
            &dir.join("cache"),
            &["--site-cache-listen".as_ref(), listen.as_ref()],
        )
        .await?;
        cache = Some(agent);
        cache_url = Some(format!("http://{listen}"));
    }
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let device = format!("site-{tag}-{i}");
        let agent = start_agent(&args.agent, 1, &device, broker, &dir.join(&device), &[]).await?;
        agents.push((device, agent));
    }
    let assignment = Assignment {
        deployment: "bench/site".into(),
        model: ModelRef {
            name: "minilm".into(),
            version: "1".into(),
        },
        variant: "fp32".into(),
        precision: Precision::Fp32,
        runtime: Runtime::Tract,
        artifact: Artifact {
            uri: format!("http://{origin_addr}/model.onnx"),
            sha256,
            size_bytes: size,
            signature: None,
        },
        role: Role::Stable,
        self_test: None,
        offload: None,
        llm: None,
        site_cache: cache_url,
    };
    let started = Instant::now();
    let mut pollers = Vec::new();
    for (device, _) in &agents {
        let (client, poller) = control_client(device, broker)?;
        let desired = Desired {
            device_id: DeviceId::new(device.as_str())?,
            generation: 1,
            assignments: vec![assignment.clone()],
        };
        let topic = wire::topic(&DeviceId::new(device.as_str())?, Channel::Desired);
        client
            .publish(topic, QoS::AtLeastOnce, true, wire::encode(&desired))
            .await?;
        pollers.push((client, poller));
    }
    if scenario == Scenario::CacheKilledHalfway
        && let Some(agent) = &cache
    {
        // killed once it has served half the site
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let text = http
                .get(format!("http://{}/metrics", agent.addr))
                .send()
                .await?
                .text()
                .await?;
            let served: f64 = text
                .lines()
                .find(|l| l.starts_with("edgefleet_agent_site_cache_served_bytes_total "))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0);
            if served >= (args.agents as f64 / 2.0) * size as f64 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cache.take();
    }
    let http = reqwest::Client::new();
    let mut ready = 0;
    for (_, agent) in &agents {
        if wait_ready(&http, &agent.addr, "minilm").await.is_ok() {
            ready += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    for (device, _) in &agents {
        let (client, _) = &pollers[0];
        let topic = wire::topic(&DeviceId::new(device.as_str())?, Channel::Desired);
        client
            .publish(topic, QoS::AtLeastOnce, true, Vec::new())
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (_, poller) in pollers {
        poller.abort();
    }
    drop(agents);
    drop(cache);
    server.abort();
    Ok(Outcome {
        origin_bytes: origin.sent.load(Ordering::Relaxed),
        seconds,
        ready,
    })
}
