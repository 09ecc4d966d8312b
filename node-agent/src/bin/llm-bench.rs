//! `llm-bench`: the agent's OpenAI-compatible streaming API against direct llama.cpp calls,
//! same model, threads, context and prompt, in one process, printed as a markdown table.
//!
//! ```text
//! tests/tools/fetch-models.sh
//! cargo build --release -p edgefleet-agent --bin llm-bench
//! target/release/llm-bench [--runs 10] [--max-tokens 128] [--threads 2]
//! ```
//!
//! The agent side is the agent's own code: the llama.cpp backend loads the GGUF (memory check,
//! slot threads, self-test) into a registry, the agent's router serves it on a local port, and
//! a streaming `/v1/chat/completions` request is timed from sending to the first and last SSE
//! chunk. The direct side loads the same file again with `llama-cpp-2` and runs the plain
//! decode loop. Runs alternate between the two; medians are reported. RSS is this process's
//! after the agent side loaded and before the direct side did.

#[path = "shared/defaults.rs"]
#[allow(dead_code)] // only the models directory is needed here
mod defaults;

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use tokio::sync::Semaphore;

use edgefleet_agent::config::{LlmConfig, TestKnobs};
use edgefleet_agent::install::repository::InstallStates;
use edgefleet_agent::link::window::WindowStats;
use edgefleet_agent::llm::LlamaCppBackend;
use edgefleet_agent::metrics::Metrics;
use edgefleet_agent::offload::OffloadRuntime;
use edgefleet_agent::registry::{Registry, Served};
use edgefleet_agent::runtime::Backend;
use edgefleet_agent::serve::{ApiInner, router};
use edgefleet_protocol::wire::{Assignment, Role};
use edgefleet_protocol::{Artifact, ModelRef, Precision, Runtime};

#[derive(clap::Parser)]
#[command(name = "llm-bench")]
struct Args {
    /// Timed runs per side (after one warm-up run each).
    #[arg(long, env = "EDGEFLEET_BENCH_RUNS", default_value_t = 10)]
    runs: usize,
    /// Tokens generated per run (greedy; both sides produce the same tokens).
    #[arg(long, env = "EDGEFLEET_BENCH_MAX_TOKENS", default_value_t = 128)]
    max_tokens: u32,
    /// llama.cpp threads, both sides; default one per core.
    #[arg(long, env = "EDGEFLEET_BENCH_THREADS")]
    threads: Option<u32>,
    #[arg(long, env = "EDGEFLEET_BENCH_CONTEXT_TOKENS", default_value_t = 2048)]
    context_tokens: u32,
    #[arg(
        long,
        env = "EDGEFLEET_BENCH_PROMPT",
        default_value = "Write a short story about a lighthouse keeper who finds a message in a bottle."
    )]
    prompt: String,
    #[arg(long, env = "EDGEFLEET_BENCH_GGUF", default_value_os_t = defaults::models_dir().join("smollm2-135m-instruct-q4_1.gguf"))]
    model: PathBuf,
}

/// One run: time to first token and decode speed after it.
#[derive(Clone, Copy)]
struct Run {
    ttft: Duration,
    tokens: u32,
    decode_tps: f64,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn settings(args: &Args) -> LlmConfig {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    LlmConfig {
        context_tokens: args.context_tokens,
        slots: 1,
        queue: 1,
        threads: args.threads.unwrap_or(cores),
        batch_tokens: 512,
    }
}

/// The agent's API on a local port, serving the model through the agent's own backend.
async fn start_agent_api(args: &Args) -> anyhow::Result<std::net::SocketAddr> {
    let backend = LlamaCppBackend::try_new(settings(args), Arc::new(|| u64::MAX))
        .context("this CPU lacks the level llama.cpp was built for")?;
    let path = args.model.clone();
    let model = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let model = backend.load(&path, &Default::default())?;
        model.prepare(None).map_err(anyhow::Error::msg)?;
        Ok(model)
    })
    .await??;
    let registry = Arc::new(Registry::default());
    registry.insert(Served {
        assignment: Assignment {
            deployment: "bench/chat".into(),
            model: ModelRef {
                name: "chat".into(),
                version: "1".into(),
            },
            variant: "q4".into(),
            precision: Precision::Int4,
            runtime: Runtime::Llamacpp,
            artifact: Artifact {
                uri: "http://unused.invalid/".into(),
                sha256: "0".repeat(64),
                size_bytes: 1,
                signature: None,
            },
            role: Role::Stable,
            self_test: None,
            offload: None,
            llm: None,
            site_cache: None,
        },
        model,
    });
    let state = Arc::new(ApiInner {
        registry,
        install_states: Arc::new(InstallStates::default()),
        metrics: Arc::new(Metrics::new()),
        stats: Arc::new(WindowStats::new(0)),
        ready: AtomicBool::new(true),
        permits: Arc::new(Semaphore::new(1)),
        test: TestKnobs::default(),
        max_body_bytes: 1 << 20,
        offload: OffloadRuntime::new(1)?,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    Ok(addr)
}

/// A streaming completion through the API, timed at the client.
async fn agent_run(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    args: &Args,
) -> anyhow::Result<Run> {
    let body = serde_json::json!({
        "model": "chat", "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
    });
    let sent = Instant::now();
    let mut response = http
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?
        .error_for_status()?;
    let (mut first, mut last, mut tokens) = (None, None, 0u32);
    let mut buffer = String::new();
    while let Some(bytes) = response.chunk().await? {
        let now = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data)?;
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n as u32;
            }
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
            {
                first.get_or_insert(now);
                last = Some(now);
            }
        }
    }
    let (Some(first), Some(last)) = (first, last) else {
        bail!("the agent streamed no text");
    };
    Ok(Run {
        ttft: first - sent,
        tokens,
        decode_tps: f64::from(tokens.saturating_sub(1)) / (last - first).as_secs_f64(),
    })
}

/// The plain llama.cpp loop: the model's chat template, tokenize, evaluate the prompt, sample
/// greedily token by token.
fn direct_run(
    model: &LlamaModel,
    ctx: &mut llama_cpp_2::context::LlamaContext<'_>,
    args: &Args,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    ctx.clear_kv_cache();
    let template = model.chat_template(None)?;
    let message = LlamaChatMessage::new("user".into(), args.prompt.clone())?;
    let text = model.apply_chat_template(&template, &[message], true)?;
    let tokens = model.vocab().tokenize(text.as_bytes(), true, true);
    let mut batch = LlamaBatch::new(512, 1);
    for (i, t) in tokens.iter().enumerate() {
        batch.add(*t, i as i32, &[0], i + 1 == tokens.len())?;
    }
    ctx.decode(&mut batch)?;
    let mut sampler = LlamaSampler::greedy();
    let (mut first, mut generated) = (None, 0u32);
    let mut last: Instant;
    let mut position = tokens.len() as i32;
    loop {
        let token = sampler.sample(ctx, batch.n_tokens() - 1);
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        if model.vocab().is_eog(token) {
            break;
        }
        let _piece = model.vocab().token_to_piece(token, false, None);
        generated += 1;
        if generated >= args.max_tokens {
            break;
        }
        batch.clear();
        batch.add(token, position, &[0], true)?;
        position += 1;
        ctx.decode(&mut batch)?;
    }
    let first = first.context("no token")?;
    Ok(Run {
        ttft: first - started,
        tokens: generated,
        decode_tps: f64::from(generated.saturating_sub(1)) / (last - first).as_secs_f64(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    if !args.model.is_file() {
        bail!(
            "{} is missing: run tests/tools/fetch-models.sh",
            args.model.display()
        );
    }
    let rss_before = rss_mib();
    let addr = start_agent_api(&args).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_agent = rss_mib();

    // The direct side: llama.cpp is initialised already (by the agent's backend).
    let backend = edgefleet_agent::llm::llama().map_err(anyhow::Error::msg)?;
    let model = LlamaModel::load_from_file(backend, &args.model, &LlamaModelParams::default())?;
    let s = settings(&args);
    let mut ctx = model.new_context(
        backend,
        LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(s.context_tokens))
            .with_n_batch(s.batch_tokens)
            .with_n_ubatch(s.batch_tokens)
            .with_n_threads(s.threads as i32)
            .with_n_threads_batch(s.threads as i32),
    )?;

    let http = reqwest::Client::new();
    agent_run(&http, addr, &args).await?;
    direct_run(&model, &mut ctx, &args)?;
    let (mut agent, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        agent.push(agent_run(&http, addr, &args).await?);
        direct.push(direct_run(&model, &mut ctx, &args)?);
    }
    let ttft = |runs: &[Run]| median(runs.iter().map(|r| r.ttft.as_secs_f64() * 1e3).collect());
    let tps = |runs: &[Run]| median(runs.iter().map(|r| r.decode_tps).collect());
    let (agent_ttft, direct_ttft) = (ttft(&agent), ttft(&direct));
    let (agent_tps, direct_tps) = (tps(&agent), tps(&direct));
    println!(
        "model {} ({:.1} MB), {} threads, context {}, {} runs of {} tokens (greedy), prompt {:?}\n",
        args.model.file_name().unwrap_or_default().to_string_lossy(),
        std::fs::metadata(&args.model)?.len() as f64 / 1e6,
        s.threads,
        s.context_tokens,
        args.runs,
        agent[0].tokens,
        args.prompt
    );
    println!("| | TTFT p50 (ms) | decode tok/s p50 |");
    println!("|---|---:|---:|");
    println!("| agent API, streaming `/v1/chat/completions` | {agent_ttft:.1} | {agent_tps:.1} |");
    println!("| direct llama.cpp, same process | {direct_ttft:.1} | {direct_tps:.1} |");
    println!(
        "| agent − direct / agent ÷ direct | {:+.1} ms | {:.3}x |",
        agent_ttft - direct_ttft,
        agent_tps / direct_tps
    );
    let shape = edgefleet_agent::llm::gguf::read_shape(&args.model).map_err(anyhow::Error::msg)?;
    let estimate = edgefleet_protocol::llm::llm_memory(
        &shape,
        u64::from(s.context_tokens),
        u64::from(s.slots),
        u64::from(s.batch_tokens),
    );
    println!(
        "\nRSS: {rss_before:.0} MiB before loading, {rss_agent:.0} MiB with the model loaded and \
         served by the agent's API (+{:.0} MiB); the agent's memory check estimates {} MiB \
         ({} weights + {} KV cache + {} compute + {} runtime)",
        rss_agent - rss_before,
        estimate.total_mib(),
        estimate.weights_bytes >> 20,
        estimate.kv_cache_bytes >> 20,
        estimate.compute_bytes >> 20,
        estimate.runtime_bytes >> 20,
    );
    Ok(())
}
