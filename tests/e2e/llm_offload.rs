//! Issue 20: edge–cloud collaboration for a chat model, end to end. An edge agent serves
//! SmolLM2 (Q4_1) with a 256-token context and an offload policy (`protocol: openai`,
//! `ttftBudgetMs: 1`, `contextExceeded: true`); the "cloud" is a second real agent serving the
//! same model with a 1,024-token context, placed there by its own ModelDeployment. Chats go to
//! the cloud; then the cloud agent is killed (SIGKILL) while six chats — three of them streamed
//! — are in flight, and every one is still answered to its end: those the cloud was streaming
//! are finished by the edge device, the rest answered by it from the start. The controller
//! counts the offloads and the fallbacks per cohort.

#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgefleet_e2e::*;
use serde_json::{Value, json};

const MODEL: &str = "smollm2";
const GGUF: &str = "smollm2-135m-instruct-q4_1.gguf";

fn manifest(
    name: &str,
    tier: &str,
    file: &(String, String, u64),
    context: u32,
    offload: &str,
) -> String {
    let (uri, sha, size) = file;
    let variant = smollm2_q4_1_variant(uri, sha, *size);
    format!(
        r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}, namespace: default}}
spec:
  model: {{name: {MODEL}, version: "0.1.2"}}
  selector: {{matchLabels: {{tier: {tier}}}}}
  llm: {{contextTokens: {context}, slots: 1}}
  variants:
{variant}
  rollout:
    steps: [{{percent: 100}}]
    analysis: {{intervalSeconds: 1, minSamples: 1}}
{offload}"#
    )
}

fn chat(prompt: &str, max_tokens: u32, stream: bool) -> Value {
    json!({"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
           "messages": [{"role": "user", "content": prompt}]})
}

/// A chat answer as a client sees it, streamed or not.
#[derive(Debug)]
struct Answer {
    status: u16,
    source: String,
    text: String,
    finish: String,
    error: Option<String>,
}

/// Sends one chat; `first_piece` is set once a streamed answer has produced text.
async fn ask(
    edge: std::net::SocketAddr,
    body: Value,
    first_piece: Option<Arc<AtomicBool>>,
) -> Answer {
    let stream = body["stream"] == true;
    let mut response = reqwest::Client::new()
        .post(format!("http://{edge}/v1/chat/completions"))
        .json(&body)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if !stream {
        let value: Value = response.json().await.unwrap();
        let choice = &value["choices"][0];
        return Answer {
            status,
            source: value["edgefleet"]["source"].as_str().unwrap_or("").into(),
            text: choice["message"]["content"].as_str().unwrap_or("").into(),
            finish: choice["finish_reason"].as_str().unwrap_or("").into(),
            error: value.get("error").map(|e| e.to_string()),
        };
    }
    let mut answer = Answer {
        status,
        source: String::new(),
        text: String::new(),
        finish: String::new(),
        error: None,
    };
    let mut buffer = String::new();
    while let Some(bytes) = response.chunk().await.unwrap() {
        buffer.push_str(std::str::from_utf8(&bytes).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                return answer;
            }
            let chunk: Value = serde_json::from_str(data).unwrap();
            if let Some(error) = chunk.get("error") {
                answer.error = Some(error.to_string());
            }
            let choice = &chunk["choices"][0];
            if let Some(piece) = choice["delta"]["content"].as_str() {
                answer.text.push_str(piece);
                if let Some(flag) = &first_piece {
                    flag.store(true, Ordering::SeqCst);
                }
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                answer.finish = reason.into();
                answer.source = chunk["edgefleet"]["source"].as_str().unwrap_or("").into();
            }
        }
    }
    answer
}

fn assert_answered(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 200, "{what}: {answer:?}");
    assert_eq!(answer.error, None, "{what}: {answer:?}");
    assert!(!answer.text.is_empty(), "{what}: {answer:?}");
    assert!(
        answer.finish == "stop" || answer.finish == "length",
        "{what}: answered to its end: {answer:?}"
    );
}

fn cohort_value(exposition: &str, metric: &str) -> Option<f64> {
    deployment_metric(exposition, metric, "chat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_go_to_the_cloud_and_every_one_is_answered_when_it_dies_mid_load() {
    let logs = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let file = artifacts.put(
        "q4_1.gguf",
        &std::fs::read(models_dir().join(GGUF)).unwrap(),
    );
    let db = tempfile::tempdir().unwrap();
    let controller = ControllerProc::start(
        &standin,
        &format!("sqlite://{}", db.path().join("fleet.db").display()),
        &broker.url(),
        "llm-offload",
        logs.path(),
    );
    let device = |id: &str, labels: &'static str| DeviceSpec {
        id: id.into(),
        arch: "x86_64",
        memory_mib: 4096,
        labels,
        extra_latency_ms: 0,
    };
    // Room for every request of the load below on both sides: a full queue is a 429, which
    // is not what this test is about.
    let queue = [("EDGEFLEET_AGENT_LLM_QUEUE", "8")];
    let edge = AgentProc::start_with_env(
        &device("edge-1", "tier=edge"),
        &broker.url(),
        logs.path(),
        &queue,
    );
    let mut cloud = AgentProc::start_with_env(
        &device("cloud-1", "tier=cloud"),
        &broker.url(),
        logs.path(),
        &queue,
    );
    let fail = |what: &str| format!("{what}\n{}", controller.proc.log_tail());

    let policy = format!(
        r#"  offload:
    inputsMayLeaveDevice: true
    endpoint: {{url: "http://{}", model: {MODEL}, protocol: openai}}
    triggers: {{ttftBudgetMs: 1, contextExceeded: true}}
    rateLimit: {{requestsPerSecond: 1000, burst: 1000}}
    timeoutMs: 5000
"#,
        cloud.api
    );
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("chat-cloud", "cloud", &file, 1024, "")),
    );
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("chat", "edge", &file, 256, &policy)),
    );
    for (agent, context) in [(&edge, 256), (&cloud, 1024)] {
        eventually(Duration::from_secs(180), "chat model served", || async {
            match agent.model(MODEL).await {
                Some(m) if m["llm"]["contextTokens"] == context => Ok(()),
                other => Err(fail(&format!("{}: {other:?}", agent.device.id))),
            }
        })
        .await;
    }
    let served = edge.model(MODEL).await.unwrap();
    assert_eq!(
        served["offload"]["endpoint"]["protocol"], "openai",
        "{served}"
    );

    // The model's speed is unknown until it has answered once: the first chat is local.
    let question = "What is the capital of France?";
    let first = ask(edge.api, chat(question, 16, false), None).await;
    assert_answered(&first, "first chat");
    assert_eq!(first.source, "local");

    // 1. The cloud answers (its own agent, model and context), streamed or not.
    let direct: Value = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", cloud.api))
        .json(&chat(question, 16, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for stream in [false, true] {
        let answer = ask(edge.api, chat(question, 16, stream), None).await;
        assert_answered(&answer, "via the cloud");
        assert_eq!(answer.source, "cloud", "{answer:?}");
        assert_eq!(
            answer.text, direct["choices"][0]["message"]["content"],
            "the cloud's answer"
        );
    }
    // A prompt the edge's 256 tokens cannot hold; the cloud's 1,024 can.
    let long = format!(
        "Summarise: {}",
        "the quick brown fox jumps over the lazy dog ".repeat(40)
    );
    let answer = ask(edge.api, chat(&long, 8, false), None).await;
    assert_answered(&answer, "a prompt over the edge's context");
    assert_eq!(answer.source, "cloud");

    // 2. Six chats in flight, three streamed; the cloud dies once one stream has begun.
    let story = "Tell me a long story about a dragon.";
    let streaming = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|i| {
            let flag = (i % 2 == 1).then(|| streaming.clone());
            tokio::spawn(ask(edge.api, chat(story, 96, i % 2 == 1), flag))
        })
        .collect();
    eventually(
        Duration::from_secs(60),
        "a stream from the cloud",
        || async {
            if streaming.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("no streamed text yet".to_string())
            }
        },
    )
    .await;
    cloud.kill();
    let mut sources = Vec::new();
    for (i, task) in load.into_iter().enumerate() {
        let answer = task.await.unwrap();
        assert_answered(&answer, &format!("chat {i} with the cloud killed"));
        sources.push(answer.source.clone());
    }
    eprintln!("sources with the cloud killed mid-load: {sources:?}");
    assert!(
        sources
            .iter()
            .all(|s| s == "cloud" || s == "local-fallback"),
        "{sources:?}"
    );
    assert!(sources.iter().any(|s| s == "local-fallback"), "{sources:?}");

    // 3. The cloud is gone: the edge answers, and says why it cannot take what only the
    //    cloud could.
    for stream in [false, true] {
        let answer = ask(edge.api, chat(question, 16, stream), None).await;
        assert_answered(&answer, "with the cloud gone");
        assert_eq!(answer.source, "local-fallback");
        assert_eq!(answer.text, first.text, "greedy: the device's own answer");
    }
    let refused: Value = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", edge.api))
        .json(&chat(&long, 8, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        refused["error"]["code"], "context_length_exceeded",
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the cloud endpoint did not answer"),
        "{refused}"
    );

    // The controller's per-cohort offload series count the cloud's answers and the fallbacks.
    eventually(
        Duration::from_secs(30),
        "offloads in the controller's metrics",
        || async {
            let text = controller.metrics().await;
            let offloads = cohort_value(&text, "edgefleet_offload_requests_total");
            let fallbacks = cohort_value(&text, "edgefleet_offload_fallbacks_total");
            match (offloads, fallbacks) {
                // 3 + 6 + 2 + 1 requests tried the cloud; at least the last 3 fell back.
                (Some(o), Some(f)) if o >= 12.0 && f >= 3.0 && f <= o => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}
