//! `offload-bench`: end-to-end latency through an edge agent's local API under concurrent
//! load, without and with offloading to a second agent acting as the cloud model, printed as
//! a markdown table.
//!
//! ```text
//! tests/tools/fetch-models.sh
//! cargo build --release -p edgefleet-agent --bins
//! target/release/offload-bench [--requests 400] [--clients 4] [--broker mqtt://127.0.0.1:1883]
//! ```
//!
//! Two release `edgefleet-agent` processes with one inference slot each: `edge` serves the
//! text-direction classifier (ocr-cls, 1×3×48×192, softmax over 2 classes) with the policy of
//! each scenario, `cloud` serves the same fp32 model without one. `--clients` concurrent
//! clients send binary-tensor requests over keep-alive connections; inputs cycle through 16
//! generated images, of which the classifier is unsure (top probability < 0.6) of a share the
//! bench prints. Both agents and the clients share this machine's cores, so the "cloud" is no
//! faster than the edge: what the table shows is the cost of the offload path and what an
//! extra inference slot elsewhere does to the tail, not a faster model.

#[path = "shared/defaults.rs"]
mod defaults;
#[path = "shared/fleet.rs"]
mod fleet;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use rumqttc::{AsyncClient, MqttOptions, QoS};

use edgefleet_agent::install::pull::sha256_hex;
use edgefleet_protocol::wire::{self, Assignment, Channel, Desired, DeviceId, Role};
use edgefleet_protocol::{
    Artifact, ConfidenceTrigger, ModelRef, OffloadEndpoint, OffloadPolicy, OffloadRateLimit,
    OffloadTriggers, Precision, Runtime, ScoreKind, SelfTest, SelfTestInput, TensorDatatype,
};
use fleet::Kill;

const MODEL: &str = "ocr-cls";
const FILE: &str = "ocr-cls.onnx";
const OUTPUT: &str = "save_infer_model/scale_0.tmp_1";
const SHAPE: [usize; 4] = [1, 3, 48, 192];
const INPUTS: usize = 16;
const THRESHOLD: f64 = 0.6;

fn input(k: usize) -> Vec<f32> {
    let count: usize = SHAPE.iter().product();
    let a = 0.0005 + 0.013 * k as f32;
    let b = 0.37 * k as f32;
    let scale = 0.2 + 0.06 * (k % 17) as f32;
    (0..count)
        .map(|i| scale * (a * i as f32 + b).sin())
        .collect()
}

fn body(k: usize) -> (Bytes, usize) {
    let values = input(k);
    let header = serde_json::json!({"inputs": [{"name": "x", "shape": SHAPE, "datatype": "FP32",
        "parameters": {"binary_data_size": values.len() * 4}}],
        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": false}}]});
    let mut bytes = serde_json::to_vec(&header).unwrap_or_default();
    let header_len = bytes.len();
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    (Bytes::from(bytes), header_len)
}

/// Measures offloading: a device agent whose hard requests go to a cloud agent.
#[derive(clap::Parser)]
#[command(name = "offload-bench")]
struct Args {
    /// Requests per scenario.
    #[arg(long, env = "EDGEFLEET_BENCH_REQUESTS", default_value_t = 400)]
    requests: usize,
    /// Concurrent clients.
    #[arg(long, env = "EDGEFLEET_BENCH_CLIENTS", default_value_t = 4)]
    clients: usize,
    /// Broker the agents connect to; a private Mosquitto is started when unset.
    #[arg(long, env = "EDGEFLEET_BENCH_BROKER")]
    broker: Option<String>,
    /// Where tests/tools/fetch-models.sh put the models.
    #[arg(long, env = "EDGEFLEET_MODELS", default_value_os_t = defaults::models_dir())]
    models: PathBuf,
    /// The agent binary; default: next to this executable.
    #[arg(long, env = "EDGEFLEET_BENCH_AGENT", default_value_os_t = defaults::agent())]
    agent: PathBuf,
}

struct Agent {
    process: Option<Kill>,
    device: DeviceId,
    addr: String,
}

fn start_agent(
    args: &Args,
    broker: &str,
    work: &std::path::Path,
    name: &str,
) -> anyhow::Result<Agent> {
    let device = format!("offload-bench-{name}-{}", std::process::id());
    let store = work.join(name);
    let process = Kill(
        Command::new(&args.agent)
            .args(["--device-id", &device, "--broker", broker])
            .args(["--listen", "127.0.0.1:0", "--inference-threads", "1"])
            .arg("--store")
            .arg(&store)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.agent.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Ok(s) = std::fs::read_to_string(store.join("listen-addr")) {
            break s.trim().to_string();
        }
        if Instant::now() > deadline {
            bail!("agent {name} did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Agent {
        process: Some(process),
        device: DeviceId::new(device)?,
        addr,
    })
}

fn policy(cloud: &str, triggers: OffloadTriggers) -> OffloadPolicy {
    OffloadPolicy {
        inputs_may_leave_device: true,
        endpoint: OffloadEndpoint {
            url: format!("http://{cloud}"),
            model: MODEL.into(),
            protocol: Default::default(),
        },
        triggers,
        rate_limit: OffloadRateLimit {
            requests_per_second: 10_000.0,
            burst: 10_000,
        },
        timeout_ms: 2000,
    }
}

struct Deployer {
    mqtt: AsyncClient,
    http: reqwest::Client,
    artifact: Artifact,
    generation: u64,
}

impl Deployer {
    /// Publishes `agent`'s desired document and waits until its metadata shows `offload`.
    async fn deploy(
        &mut self,
        agent: &Agent,
        offload: Option<OffloadPolicy>,
    ) -> anyhow::Result<()> {
        self.generation += 1;
        let expected = offload.as_ref().map(serde_json::to_value).transpose()?;
        let doc = Desired {
            device_id: agent.device.clone(),
            generation: self.generation,
            assignments: vec![Assignment {
                deployment: format!("bench/{MODEL}"),
                model: ModelRef {
                    name: MODEL.into(),
                    version: "1".into(),
                },
                variant: "fp32".into(),
                precision: Precision::Fp32,
                runtime: Runtime::Tract,
                artifact: self.artifact.clone(),
                role: Role::Stable,
                self_test: Some(SelfTest {
                    inputs: vec![SelfTestInput {
                        name: "x".into(),
                        shape: SHAPE.iter().map(|d| *d as u64).collect(),
                        datatype: TensorDatatype::Fp32,
                        fill: Some(0.1),
                        data: None,
                    }],
                }),
                offload,
                llm: None,
                site_cache: None,
            }],
        };
        self.mqtt
            .publish(
                wire::topic(&doc.device_id, Channel::Desired),
                QoS::AtLeastOnce,
                true,
                wire::encode(&doc),
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = self
                .http
                .get(format!("http://{}/v2/models/{MODEL}", agent.addr))
                .send()
                .await?;
            if r.status().is_success() {
                let meta: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
                let policy = meta.get("offload").cloned();
                if policy == expected {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("{} did not serve the new document", agent.device);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn clear(&mut self, agent: &Agent) {
        let _ = self
            .mqtt
            .publish(
                wire::topic(&agent.device, Channel::Desired),
                QoS::AtLeastOnce,
                true,
                Vec::new(),
            )
            .await;
    }
}

#[derive(Default)]
struct Run {
    latencies_ms: Vec<f64>,
    cloud: usize,
    fallback: usize,
    errors: usize,
    seconds: f64,
}

/// `clients` concurrent keep-alive clients send `requests` requests in total.
async fn load(addr: &str, requests: usize, clients: usize) -> Run {
    let bodies: Arc<Vec<(Bytes, usize)>> = Arc::new((0..INPUTS).map(body).collect());
    let url = Arc::new(format!("http://{addr}/v2/models/{MODEL}/infer"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (bodies, url) = (bodies.clone(), url.clone());
        let share = requests / clients + usize::from(c < requests % clients);
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut run = Run::default();
            for i in 0..share {
                let (bytes, header_len) = &bodies[(c * 7 + i) % bodies.len()];
                let t = Instant::now();
                let response = http
                    .post(url.as_str())
                    .header("Inference-Header-Content-Length", *header_len)
                    .body(bytes.clone())
                    .send()
                    .await;
                let source = match response {
                    Ok(r) if r.status().is_success() => {
                        let source = r
                            .headers()
                            .get("edgefleet-source")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("local")
                            .to_string();
                        let _ = r.bytes().await;
                        source
                    }
                    _ => "error".to_string(),
                };
                run.latencies_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                match source.as_str() {
                    "cloud" => run.cloud += 1,
                    "local-fallback" => run.fallback += 1,
                    "error" => run.errors += 1,
                    _ => {}
                }
            }
            run
        }));
    }
    let mut total = Run::default();
    for task in tasks {
        if let Ok(run) = task.await {
            total.latencies_ms.extend(run.latencies_ms);
            total.cloud += run.cloud;
            total.fallback += run.fallback;
            total.errors += run.errors;
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    total
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Share of the generated inputs the classifier is unsure of, asked one by one.
async fn unsure_share(http: &reqwest::Client, addr: &str) -> anyhow::Result<f64> {
    let mut unsure = 0;
    for k in 0..INPUTS {
        let (bytes, header_len) = body(k);
        let r = http
            .post(format!("http://{addr}/v2/models/{MODEL}/infer"))
            .header("Inference-Header-Content-Length", header_len)
            .body(bytes)
            .send()
            .await?;
        let len: usize = r
            .headers()
            .get("inference-header-content-length")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(usize::MAX);
        let all = r.bytes().await?;
        let json = &all[..len.min(all.len())];
        let v: serde_json::Value = serde_json::from_slice(json)?;
        let top = v["outputs"][0]["data"]
            .as_array()
            .context("no output data")?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .fold(f64::MIN, f64::max);
        unsure += usize::from(top < THRESHOLD);
    }
    Ok(unsure as f64 / INPUTS as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let model_path = args.models.join(FILE);
    let model = Bytes::from(std::fs::read(&model_path).with_context(|| {
        format!(
            "{} is missing: run tests/tools/fetch-models.sh",
            model_path.display()
        )
    })?);
    let work = std::env::temp_dir().join(format!("offload-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    let (broker, _private) = fleet::broker(args.broker.clone(), &work).await?;
    let broker_port: u16 = broker.rsplit(':').next().unwrap_or("1883").parse()?;

    let app = axum::Router::new().route(
        "/model.onnx",
        axum::routing::get({
            let model = model.clone();
            move || {
                let model = model.clone();
                async move { model }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let file_addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let edge = start_agent(&args, &broker, &work, "edge")?;
    let mut cloud = start_agent(&args, &broker, &work, "cloud")?;
    let mut o = MqttOptions::new(
        format!("offload-bench-{}", std::process::id()),
        "127.0.0.1",
        broker_port,
    );
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (mqtt, mut eventloop) = AsyncClient::new(o, 16);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let http = reqwest::Client::new();
    let mut deployer = Deployer {
        mqtt,
        http: http.clone(),
        artifact: Artifact {
            uri: format!("http://{file_addr}/model.onnx"),
            sha256: sha256_hex(&model),
            size_bytes: model.len() as u64,
            signature: None,
        },
        generation: 0,
    };
    deployer.deploy(&cloud, None).await?;
    deployer.deploy(&edge, None).await?;
    let unsure = unsure_share(&http, &edge.addr).await?;
    // Warm-up: connections, allocator, caches.
    load(&edge.addr, 50, args.clients).await;
    load(&cloud.addr, 50, args.clients).await;

    let confidence = OffloadTriggers {
        confidence_below: Some(ConfidenceTrigger {
            threshold: THRESHOLD,
            output: OUTPUT.into(),
            scores: ScoreKind::Probabilities,
        }),
        ..Default::default()
    };
    let overflow = OffloadTriggers {
        queue_depth_above: Some(1),
        ..Default::default()
    };
    let mut rows = Vec::new();
    let scenarios: [(&str, Option<OffloadTriggers>); 3] = [
        ("offload off (edge only)", None),
        (
            "confidenceBelow 0.6 (unsure requests to the cloud)",
            Some(confidence.clone()),
        ),
        ("queueDepthAbove 1 (overflow to the cloud)", Some(overflow)),
    ];
    for (name, triggers) in scenarios {
        deployer
            .deploy(&edge, triggers.map(|t| policy(&cloud.addr, t)))
            .await?;
        rows.push((
            name.to_string(),
            load(&edge.addr, args.requests, args.clients).await,
        ));
    }
    // The cloud stops: unsure requests fall back to the local answer.
    deployer
        .deploy(&edge, Some(policy(&cloud.addr, confidence)))
        .await?;
    cloud.process.take();
    rows.push((
        "confidenceBelow 0.6, cloud stopped (local-fallback)".into(),
        load(&edge.addr, args.requests, args.clients).await,
    ));
    deployer.clear(&edge).await;
    deployer.clear(&cloud).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(edge);
    let _ = std::fs::remove_dir_all(&work);

    println!(
        "| scenario | p50 (ms) | p95 (ms) | p99 (ms) | throughput (req/s) | cloud | local-fallback | errors |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, mut run) in rows {
        run.latencies_ms.sort_by(f64::total_cmp);
        let n = run.latencies_ms.len();
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.1} | {} ({:.0}%) | {} | {} |",
            percentile(&run.latencies_ms, 0.5),
            percentile(&run.latencies_ms, 0.95),
            percentile(&run.latencies_ms, 0.99),
            n as f64 / run.seconds,
            run.cloud,
            100.0 * run.cloud as f64 / n.max(1) as f64,
            run.fallback,
            run.errors
        );
    }
    println!();
    println!(
        "{} requests per row from {} concurrent keep-alive clients (binary tensors, 16 inputs of which {:.0}% are below 0.6 top probability), after a warm-up; edge and cloud agents with one inference slot each, all on the same {}-core machine.",
        args.requests,
        args.clients,
        unsure * 100.0,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    Ok(())
}
