//! `agent-bench`: footprint and latency of the agent, printed as a markdown table.
//!
//! ```text
//! tests/tools/fetch-models.sh
//! cargo build --release -p edgefleet-agent --bins
//! target/release/agent-bench [--iterations 1000] [--broker mqtt://127.0.0.1:1883]
//! ```
//!
//! It starts the release `edgefleet-agent` next to it with an empty store, measures idle RSS,
//! deploys the test models one after another over MQTT (from an HTTP server it runs), measures
//! RSS after each, then times sequential requests through the local API (binary and JSON
//! tensors, one keep-alive connection) against direct tract calls on the same model and input
//! in this process.

#[cfg(feature = "onnxruntime")]
#[path = "agent_bench/compare.rs"]
mod compare;
#[path = "shared/defaults.rs"]
mod defaults;
#[path = "shared/fleet.rs"]
mod fleet;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use rumqttc::QoS;

use edgefleet_agent::install::pull::sha256_hex;
use edgefleet_agent::runtime::{Backend, tract::TractBackend};
use edgefleet_agent::tensor::Tensor;
use edgefleet_protocol::wire::{self, Assignment, Channel, Desired, DeviceId, Role};
use edgefleet_protocol::{
    Artifact, ModelRef, Precision, Runtime, SelfTest, SelfTestInput, TensorDatatype,
};
use fleet::{broker, control_client, serve_files, start_agent, wait_ready};

struct BenchModel {
    file: &'static str,
    name: &'static str,
    /// Input name, shape.
    inputs: &'static [(&'static str, &'static [usize])],
}

const MODELS: &[BenchModel] = &[
    BenchModel {
        file: "silero-vad.onnx",
        name: "silero-vad",
        inputs: &[("input", &[1, 576]), ("state", &[2, 1, 128])],
    },
    BenchModel {
        file: "ocr-cls.onnx",
        name: "ocr-cls",
        inputs: &[("x", &[1, 3, 48, 192])],
    },
    BenchModel {
        file: "orientation.onnx",
        name: "orientation",
        inputs: &[("x", &[1, 3, 224, 224])],
    },
];

fn values(shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|i| (0.5 * (0.37 * i as f64).sin()) as f32)
        .collect()
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `RssAnon`: heap and stacks, not code pages).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field}"))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

struct Stats {
    p50: f64,
    p99: f64,
}

fn stats(mut samples: Vec<f64>) -> Stats {
    samples.sort_by(f64::total_cmp);
    Stats {
        p50: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
    }
}

/// Times the agent's local API against direct tract calls on the same models.
#[derive(clap::Parser)]
#[command(name = "agent-bench")]
struct Args {
    /// Timed requests per model and tensor encoding (after 50 warm-up ones).
    #[arg(long, env = "EDGEFLEET_BENCH_ITERATIONS", default_value_t = 1000)]
    iterations: usize,
    /// Broker the agent connects to; a private Mosquitto is started when unset.
    #[arg(long, env = "EDGEFLEET_BENCH_BROKER")]
    broker: Option<String>,
    /// Where tests/tools/fetch-models.sh put the models.
    #[arg(long, env = "EDGEFLEET_MODELS", default_value_os_t = defaults::models_dir())]
    models: PathBuf,
    /// The agent binary; default: next to this executable.
    #[arg(long, env = "EDGEFLEET_BENCH_AGENT", default_value_os_t = defaults::agent())]
    agent: PathBuf,
    /// Intra-op threads, for the agent (`--intra-op-threads`) and the direct tract calls alike.
    #[arg(long, env = "EDGEFLEET_BENCH_INTRA_OP_THREADS", default_value_t = 1)]
    intra_op_threads: usize,
    /// Instead: each model on tract and on ONNX Runtime in a fresh agent, against ONNX
    /// Runtime's own Python session (RSS per model, direct, API and Python latency).
    #[arg(long, env = "EDGEFLEET_BENCH_COMPARE_RUNTIMES")]
    compare_runtimes: bool,
    /// `libonnxruntime.so` for the agent and the direct calls; default: the one inside
    /// `--ort-python`'s onnxruntime package.
    #[arg(long, env = "EDGEFLEET_BENCH_ONNXRUNTIME_LIB")]
    onnxruntime_lib: Option<PathBuf>,
    /// A Python with onnxruntime and numpy (tests/tools/fetch-compress-models.sh makes one).
    #[arg(long, env = "EDGEFLEET_BENCH_ORT_PYTHON", default_value_os_t = defaults::ort_python())]
    ort_python: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    edgefleet_agent::runtime::tract::set_intra_op_threads(args.intra_op_threads);
    for m in MODELS {
        if !args.models.join(m.file).is_file() {
            bail!(
                "{} is missing: run tests/tools/fetch-models.sh",
                args.models.join(m.file).display()
            );
        }
    }
    let work = std::env::temp_dir().join(format!("agent-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    let (broker, _private) = broker(args.broker.clone(), &work).await?;
    if args.compare_runtimes {
        #[cfg(feature = "onnxruntime")]
        let compared = compare::run(&args, &work, &broker).await;
        #[cfg(not(feature = "onnxruntime"))]
        let compared: anyhow::Result<()> = Err(anyhow::anyhow!(
            "--compare-runtimes needs the `onnxruntime` feature"
        ));
        let _ = std::fs::remove_dir_all(&work);
        return compared;
    }

    // Artifact server.
    let mut files = std::collections::HashMap::new();
    for m in MODELS {
        files.insert(
            m.file.to_string(),
            Bytes::from(std::fs::read(args.models.join(m.file))?),
        );
    }
    let files = std::sync::Arc::new(files);
    let file_addr = serve_files(files.clone()).await?;

    let binary_size = std::fs::metadata(&args.agent)
        .with_context(|| format!("agent binary {}", args.agent.display()))?
        .len();
    let device = format!("bench-{}", std::process::id());
    let store = work.join("store");
    let agent = start_agent(
        &args.agent,
        args.intra_op_threads,
        &device,
        &broker,
        &store,
        &[],
    )
    .await?;
    let (pid, addr) = (agent.pid, agent.addr.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_kib(pid)?;

    let (client, _poller) = control_client(&device, &broker)?;
    let http = reqwest::Client::new();
    let mut assignments = Vec::new();
    let mut rss_rows = Vec::new();
    for (generation, m) in MODELS.iter().enumerate() {
        let bytes = &files[m.file];
        assignments.push(Assignment {
            deployment: format!("bench/{}", m.name),
            model: ModelRef {
                name: m.name.into(),
                version: "1".into(),
            },
            variant: "fp32".into(),
            precision: Precision::Fp32,
            runtime: Runtime::Tract,
            artifact: Artifact {
                uri: format!("http://{file_addr}/{}", m.file),
                sha256: sha256_hex(bytes),
                size_bytes: bytes.len() as u64,
                signature: None,
            },
            role: Role::Stable,
            self_test: Some(SelfTest {
                inputs: m
                    .inputs
                    .iter()
                    .map(|(name, shape)| SelfTestInput {
                        name: name.to_string(),
                        shape: shape.iter().map(|d| *d as u64).collect(),
                        datatype: TensorDatatype::Fp32,
                        fill: Some(0.1),
                        data: None,
                    })
                    .collect(),
            }),
            offload: None,
            llm: None,
            site_cache: None,
        });
        let doc = Desired {
            device_id: DeviceId::new(device.clone())?,
            generation: generation as u64 + 1,
            assignments: assignments.clone(),
        };
        let topic = wire::topic(&doc.device_id, Channel::Desired);
        client
            .publish(topic, QoS::AtLeastOnce, false, wire::encode(&doc))
            .await?;
        wait_ready(&http, &addr, m.name).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_rows.push((m.name, rss_kib(pid)?));
    }

    let mut latency_rows = Vec::new();
    for m in MODELS.iter().filter(|m| m.name != "ocr-cls") {
        let row = bench_model(&http, &addr, &args.models, m, args.iterations).await?;
        latency_rows.push(row);
    }
    let _ = client
        .publish(
            wire::topic(&DeviceId::new(device.clone())?, Channel::Desired),
            QoS::AtLeastOnce,
            true,
            Vec::new(),
        )
        .await;
    drop(agent);
    let _ = std::fs::remove_dir_all(&work);

    println!("| measurement | value |");
    println!("| --- | --- |");
    println!(
        "| release binary `edgefleet-agent` (stripped) | {:.1} MiB ({binary_size} bytes) |",
        binary_size as f64 / 1048576.0
    );
    println!(
        "| idle RSS, no model, connected to the broker | {:.1} MiB |",
        idle as f64 / 1024.0
    );
    let mut before = idle;
    for (name, rss) in &rss_rows {
        println!(
            "| RSS after loading {name} (cumulative) | {:.1} MiB (+{:.1} MiB) |",
            *rss as f64 / 1024.0,
            (*rss as f64 - before as f64) / 1024.0
        );
        before = *rss;
    }
    println!();
    println!(
        "| model | tensors | direct tract p50 / p99 (ms) | local API p50 / p99 (ms) | API overhead p50 (ms) | overhead / inference p50 |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in latency_rows {
        for (kind, api) in [("binary", &r.binary), ("JSON", &r.json)] {
            let overhead = api.p50 - r.direct.p50;
            println!(
                "| {} | {kind} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} | {:.1}% |",
                r.name,
                r.direct.p50,
                r.direct.p99,
                api.p50,
                api.p99,
                overhead,
                100.0 * overhead / r.direct.p50
            );
        }
    }
    println!();
    println!(
        "{} sequential requests per row after 50 warm-up ones, one keep-alive HTTP/1.1 connection (reqwest), agent and client on the same {}-core machine.",
        args.iterations,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    Ok(())
}

struct LatencyRow {
    name: &'static str,
    direct: Stats,
    binary: Stats,
    json: Stats,
}

async fn bench_model(
    http: &reqwest::Client,
    addr: &str,
    models: &Path,
    m: &BenchModel,
    iterations: usize,
) -> anyhow::Result<LatencyRow> {
    let hints = m
        .inputs
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_vec()))
        .collect();
    let model = TractBackend.load(&models.join(m.file), &hints)?;
    let tensors: Vec<Tensor> = model
        .inputs()
        .iter()
        .map(|spec| {
            let shape = m
                .inputs
                .iter()
                .find(|(n, _)| *n == spec.name)
                .map(|(_, s)| s.to_vec())
                .unwrap_or_default();
            Tensor::from_f32(shape.clone(), &values(&shape))
        })
        .collect::<Result<_, _>>()?;
    let mut direct = Vec::with_capacity(iterations);
    for i in 0..iterations + 50 {
        let inputs = tensors.clone();
        let start = Instant::now();
        model.run(inputs)?;
        if i >= 50 {
            direct.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }

    let header = serde_json::json!({
        "inputs": m.inputs.iter().map(|(n, s)| serde_json::json!({
            "name": n, "shape": s, "datatype": "FP32",
            "parameters": {"binary_data_size": s.iter().product::<usize>() * 4}
        })).collect::<Vec<_>>()
    });
    let mut binary_body = serde_json::to_vec(&header)?;
    let header_len = binary_body.len();
    for (_, s) in m.inputs {
        for v in values(s) {
            binary_body.extend_from_slice(&v.to_le_bytes());
        }
    }
    let binary_body = Bytes::from(binary_body);
    let json_body = Bytes::from(serde_json::to_vec(&serde_json::json!({
        "inputs": m.inputs.iter().map(|(n, s)| serde_json::json!({
            "name": n, "shape": s, "datatype": "FP32", "data": values(s)
        })).collect::<Vec<_>>()
    }))?);
    let url = format!("http://{addr}/v2/models/{}/infer", m.name);
    let time = async |binary: bool| -> anyhow::Result<Vec<f64>> {
        let mut samples = Vec::with_capacity(iterations);
        for i in 0..iterations + 50 {
            let mut req = http.post(&url);
            req = if binary {
                req.header("Inference-Header-Content-Length", header_len)
                    .body(binary_body.clone())
            } else {
                req.header("Content-Type", "application/json")
                    .body(json_body.clone())
            };
            let start = Instant::now();
            let r = req.send().await?;
            let status = r.status();
            let _ = r.bytes().await?;
            let elapsed = start.elapsed().as_secs_f64() * 1000.0;
            if !status.is_success() {
                bail!("{url}: HTTP {status}");
            }
            if i >= 50 {
                samples.push(elapsed);
            }
        }
        Ok(samples)
    };
    let binary = time(true).await?;
    let json = time(false).await?;
    Ok(LatencyRow {
        name: m.name,
        direct: stats(direct),
        binary: stats(binary),
        json: stats(json),
    })
}
