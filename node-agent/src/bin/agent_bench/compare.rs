//! `agent-bench --compare-runtimes`: each model on each runtime in a fresh agent, side by side
//! with ONNX Runtime's own Python session on the same file, input bytes and intra-op threads:
//! RSS the model adds (at load, and after the timed requests) against its file size, the
//! backend called in this process ("direct"), the agent's local API (binary tensors), and the
//! Python session.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use rumqttc::QoS;

use edgefleet_agent::install::pull::sha256_hex;
use edgefleet_agent::runtime::ort::OrtBackend;
use edgefleet_agent::runtime::{Backend, tract::TractBackend};
use edgefleet_agent::tensor::{DataType, Tensor};
use edgefleet_protocol::wire::{self, Assignment, Channel, Desired, DeviceId, Role};
use edgefleet_protocol::{
    Artifact, ModelRef, Precision, Runtime, SelfTest, SelfTestInput, TensorDatatype,
};

use super::{Args, Stats, control_client, start_agent, stats, status_kib, wait_ready};

struct Input {
    name: &'static str,
    shape: &'static [usize],
    int64: bool,
}

struct CompareModel {
    file: &'static str,
    name: &'static str,
    inputs: &'static [Input],
}

const fn f32_input(name: &'static str, shape: &'static [usize]) -> Input {
    Input {
        name,
        shape,
        int64: false,
    }
}

const MODELS: &[CompareModel] = &[
    CompareModel {
        file: "orientation.onnx",
        name: "orientation",
        inputs: &[f32_input("x", &[1, 3, 224, 224])],
    },
    CompareModel {
        file: "ocr-cls.onnx",
        name: "ocr-cls",
        inputs: &[f32_input("x", &[1, 3, 48, 192])],
    },
    CompareModel {
        file: "minilm.onnx",
        name: "minilm",
        inputs: &[
            Input {
                name: "input_ids",
                shape: &[1, 32],
                int64: true,
            },
            Input {
                name: "attention_mask",
                shape: &[1, 32],
                int64: true,
            },
        ],
    },
];

impl Input {
    /// Little-endian bytes: a smooth signal for images, token ids (and a full mask) for text.
    fn bytes(&self) -> Vec<u8> {
        let n: usize = self.shape.iter().product();
        if self.int64 {
            let value = |i: usize| -> i64 {
                if self.name.contains("mask") {
                    1
                } else {
                    101 + (i as i64 * 7919) % 20000
                }
            };
            (0..n).flat_map(|i| value(i).to_le_bytes()).collect()
        } else {
            (0..n)
                .flat_map(|i| ((0.5 * (0.37 * i as f64).sin()) as f32).to_le_bytes())
                .collect()
        }
    }

    fn datatype(&self) -> &'static str {
        if self.int64 { "INT64" } else { "FP32" }
    }

    fn tensor(&self) -> Tensor {
        Tensor {
            dt: if self.int64 {
                DataType::Int64
            } else {
                DataType::Fp32
            },
            shape: self.shape.to_vec(),
            data: Bytes::from(self.bytes()),
        }
    }
}

struct Row {
    model: &'static str,
    file_bytes: u64,
    runtime: Runtime,
    /// VmRSS growth: includes the runtime's code paged in on first use.
    rss_load_kib: i64,
    /// RssAnon growth (heap: weights, plans, buffers), at load and after the requests.
    anon_load_kib: i64,
    anon_run_kib: i64,
    direct: Stats,
    api: Stats,
}

pub async fn run(args: &Args, work: &Path, broker: &str) -> anyhow::Result<()> {
    let lib = match &args.onnxruntime_lib {
        Some(lib) => lib.clone(),
        None => find_onnxruntime_lib(&args.ort_python)?,
    };
    let mut files = std::collections::HashMap::new();
    for m in MODELS {
        let path = args.models.join(m.file);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "{}: run tests/tools/fetch-models.sh and tests/tools/fetch-compress-models.sh",
                path.display()
            )
        })?;
        files.insert(m.file.to_string(), Bytes::from(bytes));
    }
    let files = Arc::new(files);
    let file_addr = super::serve_files(files.clone()).await?;
    // ONNX Runtime allows one environment per process: one backend for every direct run.
    let ort = OrtBackend::from_library(&lib.display().to_string())?
        .with_intra_op_threads(args.intra_op_threads);
    let mut rows = Vec::new();
    let mut python = Vec::new();
    for m in MODELS {
        let backends: [&dyn Backend; 2] = [&TractBackend, &ort];
        for backend in backends {
            let runtime = backend.runtime();
            let row = measure(
                args,
                work,
                broker,
                &lib,
                file_addr,
                &files[m.file],
                m,
                backend,
            )
            .await
            .with_context(|| format!("{} on {}", m.name, runtime.as_str()))?;
            rows.push(row);
        }
        python.push(python_session(args, work, m)?);
    }

    println!(
        "| model | file | runtime | VmRSS added at load | heap (RssAnon) added at load (x file) | heap added after the requests (x file) | direct p50 / p99 ms | agent API p50 / p99 ms | ORT Python session p50 / p99 ms | direct / Python p50 | API / Python p50 |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mib = |kib: i64| kib as f64 / 1024.0;
    for (i, r) in rows.iter().enumerate() {
        let py = &python[i / 2];
        let file_mib = r.file_bytes as f64 / 1048576.0;
        println!(
            "| {} | {:.2} MiB | {} | {:.1} MiB | {:.1} MiB ({:.2}x) | {:.1} MiB ({:.2}x) | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} | {:.2}x | {:.2}x |",
            r.model,
            file_mib,
            r.runtime.as_str(),
            mib(r.rss_load_kib),
            mib(r.anon_load_kib),
            mib(r.anon_load_kib) / file_mib,
            mib(r.anon_run_kib),
            mib(r.anon_run_kib) / file_mib,
            r.direct.p50,
            r.direct.p99,
            r.api.p50,
            r.api.p99,
            py.p50,
            py.p99,
            r.direct.p50 / py.p50,
            r.api.p50 / py.p50,
        );
    }
    println!(
        "\n{} timed runs per cell after 50 warm-up ones, {} intra-op thread(s) everywhere; a fresh agent per row (growth of VmRSS and RssAnon from the idle agent); direct = the agent's backend called in this process; ONNX Runtime {} through {}.",
        args.iterations,
        args.intra_op_threads,
        python.first().map_or("?", |p| p.version.as_str()),
        lib.display(),
    );
    for m in MODELS {
        print_tract_profile(args, m)?;
    }
    Ok(())
}

/// Where tract spends an inference: the optimized plan's nodes timed one by one (tract's own
/// evaluation, wrapped), summed by operator, over `--iterations` runs.
fn print_tract_profile(args: &Args, m: &CompareModel) -> anyhow::Result<()> {
    use tract_onnx::prelude::{
        Framework, InferenceFact, InferenceModelExt, IntoRunnable, IntoTValue, TVec,
        TypedSimpleState,
    };
    use tract_onnx::tract_core::plan::eval;

    let mut model = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
        .model_for_path(args.models.join(m.file))?;
    let mut values: TVec<tract_onnx::prelude::TValue> = TVec::new();
    for (ix, input) in m.inputs.iter().enumerate() {
        let dt = if input.int64 {
            tract_onnx::prelude::DatumType::I64
        } else {
            tract_onnx::prelude::DatumType::F32
        };
        model.set_input_fact(ix, InferenceFact::dt_shape(dt, input.shape))?;
        let mut t = tract_onnx::prelude::Tensor::zero_dt(dt, input.shape)?;
        t.as_bytes_mut().copy_from_slice(&input.bytes());
        values.push(t.into_tvalue());
    }
    let plan = model.into_optimized()?.into_runnable()?;
    let mut state = TypedSimpleState::new(&plan)?;
    let mut by_op: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    let mut total = 0.0;
    for i in 0..args.iterations + 10 {
        let start = Instant::now();
        let mut timed: Vec<(String, f64)> = Vec::new();
        state.run_plan_with_eval(values.clone(), |ctx, op_state, node, input| {
            let t = Instant::now();
            let out = eval(ctx, op_state, node, input);
            timed.push((
                node.op().name().to_string(),
                t.elapsed().as_secs_f64() * 1000.0,
            ));
            out
        })?;
        if i >= 10 {
            total += start.elapsed().as_secs_f64() * 1000.0;
            for (op, ms) in timed {
                let e = by_op.entry(op).or_default();
                e.0 += ms;
                e.1 += 1;
            }
        }
    }
    let runs = args.iterations as f64;
    let mut rows: Vec<_> = by_op.into_iter().collect();
    rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    println!(
        "\ntract profile, {}: {:.3} ms per run ({} plan nodes)\n\n| operator | ms per run | share | nodes |\n| --- | ---: | ---: | ---: |",
        m.name,
        total / runs,
        plan.model().nodes.len()
    );
    for (op, (ms, count)) in rows.iter().take(8) {
        println!(
            "| {op} | {:.3} | {:.0}% | {} |",
            ms / runs,
            100.0 * ms / total,
            *count as f64 / runs
        );
    }
    Ok(())
}

/// `libonnxruntime.so*` inside the onnxruntime package of `python`.
fn find_onnxruntime_lib(python: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} has no onnxruntime (run tests/tools/fetch-compress-models.sh, or pass --onnxruntime-lib)",
            python.display()
        );
    }
    let capi = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    std::fs::read_dir(&capi)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .with_context(|| format!("no libonnxruntime.so* in {}", capi.display()))
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &Args,
    work: &Path,
    broker: &str,
    lib: &Path,
    file_addr: std::net::SocketAddr,
    bytes: &Bytes,
    m: &CompareModel,
    backend: &dyn Backend,
) -> anyhow::Result<Row> {
    let runtime = backend.runtime();
    let device = format!(
        "bench-{}-{}-{}",
        std::process::id(),
        m.name,
        runtime.as_str()
    );
    let store = work.join(&device);
    let agent = start_agent(
        &args.agent,
        args.intra_op_threads,
        &device,
        broker,
        &store,
        &["--onnxruntime-lib".as_ref(), lib.as_os_str()],
    )
    .await?;
    let (pid, addr) = (agent.pid, agent.addr.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = status_kib(pid, "VmRSS")? as i64;
    let idle_anon = status_kib(pid, "RssAnon")? as i64;

    let (client, poller) = control_client(&device, broker)?;
    let assignment = Assignment {
        deployment: format!("bench/{}", m.name),
        model: ModelRef {
            name: m.name.into(),
            version: "1".into(),
        },
        variant: "fp32".into(),
        precision: Precision::Fp32,
        runtime,
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
                .map(|i| SelfTestInput {
                    name: i.name.to_string(),
                    shape: i.shape.iter().map(|d| *d as u64).collect(),
                    datatype: if i.int64 {
                        TensorDatatype::Int64
                    } else {
                        TensorDatatype::Fp32
                    },
                    fill: Some(1.0),
                    data: None,
                })
                .collect(),
        }),
        offload: None,
        llm: None,
        site_cache: None,
    };
    let doc = Desired {
        device_id: DeviceId::new(device.clone())?,
        generation: 1,
        assignments: vec![assignment],
    };
    let topic = wire::topic(&doc.device_id, Channel::Desired);
    client
        .publish(topic.clone(), QoS::AtLeastOnce, false, wire::encode(&doc))
        .await?;
    let http = reqwest::Client::new();
    wait_ready(&http, &addr, m.name)
        .await
        .with_context(|| format!("on {}", runtime.as_str()))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = status_kib(pid, "VmRSS")? as i64;
    let loaded_anon = status_kib(pid, "RssAnon")? as i64;
    let api = time_api(&http, &addr, m, args.iterations).await?;
    let after_anon = status_kib(pid, "RssAnon")? as i64;
    let _ = client
        .publish(topic, QoS::AtLeastOnce, true, Vec::new())
        .await;
    drop(agent);
    poller.abort();
    let _ = std::fs::remove_dir_all(&store);

    let direct = time_direct(args, &args.models.join(m.file), m, backend)?;
    Ok(Row {
        model: m.name,
        file_bytes: bytes.len() as u64,
        runtime,
        rss_load_kib: loaded - idle,
        anon_load_kib: loaded_anon - idle_anon,
        anon_run_kib: after_anon - idle_anon,
        direct,
        api,
    })
}

fn time_direct(
    args: &Args,
    path: &Path,
    m: &CompareModel,
    backend: &dyn Backend,
) -> anyhow::Result<Stats> {
    let hints = m
        .inputs
        .iter()
        .map(|i| (i.name.to_string(), i.shape.to_vec()))
        .collect();
    let model = backend.load(path, &hints)?;
    let tensors: Vec<Tensor> = model
        .inputs()
        .iter()
        .map(|spec| {
            m.inputs
                .iter()
                .find(|i| i.name == spec.name)
                .map(Input::tensor)
                .with_context(|| {
                    format!(
                        "the model has an input {:?} the bench does not fill",
                        spec.name
                    )
                })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut samples = Vec::with_capacity(args.iterations);
    for i in 0..args.iterations + 50 {
        let inputs = tensors.clone();
        let start = Instant::now();
        model.run(inputs)?;
        if i >= 50 {
            samples.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(stats(samples))
}

async fn time_api(
    http: &reqwest::Client,
    addr: &str,
    m: &CompareModel,
    iterations: usize,
) -> anyhow::Result<Stats> {
    let header = serde_json::json!({
        "inputs": m.inputs.iter().map(|i| serde_json::json!({
            "name": i.name, "shape": i.shape, "datatype": i.datatype(),
            "parameters": {"binary_data_size": i.bytes().len()}
        })).collect::<Vec<_>>()
    });
    let mut body = serde_json::to_vec(&header)?;
    let header_len = body.len();
    for i in m.inputs {
        body.extend_from_slice(&i.bytes());
    }
    let body = Bytes::from(body);
    let url = format!("http://{addr}/v2/models/{}/infer", m.name);
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations + 50 {
        let start = Instant::now();
        let r = http
            .post(&url)
            .header("Inference-Header-Content-Length", header_len)
            .body(body.clone())
            .send()
            .await?;
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
    Ok(stats(samples))
}

struct Python {
    p50: f64,
    p99: f64,
    version: String,
}

/// ONNX Runtime's Python session on the same file and input bytes.
fn python_session(args: &Args, work: &Path, m: &CompareModel) -> anyhow::Result<Python> {
    let dir = work.join(format!("python-{}", m.name));
    std::fs::create_dir_all(&dir)?;
    let mut inputs = Vec::new();
    for i in m.inputs {
        let file = dir.join(format!("{}.bin", i.name));
        std::fs::write(&file, i.bytes())?;
        inputs.push(serde_json::json!({
            "name": i.name, "shape": i.shape,
            "dtype": if i.int64 { "<i8" } else { "<f4" },
            "file": file,
        }));
    }
    let spec = dir.join("spec.json");
    std::fs::write(
        &spec,
        serde_json::to_vec(&serde_json::json!({
            "threads": args.intra_op_threads,
            "iterations": args.iterations,
            "inputs": inputs,
        }))?,
    )?;
    let script = dir.join("ort_session.py");
    std::fs::write(&script, include_str!("ort_session.py"))?;
    let out = Command::new(&args.ort_python)
        .arg(&script)
        .arg(args.models.join(m.file))
        .arg(&spec)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", args.ort_python.display()))?;
    if !out.status.success() {
        bail!("the ONNX Runtime Python session failed on {}", m.name);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: {}", m.name, String::from_utf8_lossy(&out.stdout)))?;
    let num = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
    Ok(Python {
        p50: num("p50_ms")?,
        p99: num("p99_ms")?,
        version: v["version"].as_str().unwrap_or("?").to_string(),
    })
}
