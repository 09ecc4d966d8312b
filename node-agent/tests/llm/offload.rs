//! Edge–cloud offloading of chat requests (`spec.offload`, protocol `openai`) with the real
//! model on the device and a scripted OpenAI-compatible cloud: answered by the cloud, cut off
//! by it mid-answer (the device finishes the answer), refused by it, gone (the device answers),
//! prompts over the device's context, and loops prevented.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::response::IntoResponse;
use edgefleet_protocol::{OffloadPolicy, wire::ModelWindow};

use super::*;

const HEALTHY: u8 = 0;
/// Three pieces of text, then the connection closes without a finish.
const CUT: u8 = 1;
const FAILING: u8 = 2;
const CLOUD_TEXT: &str = "Once upon a time, in the cloud.";
const CUT_TEXT: &str = "Once upon a time";

/// A scripted OpenAI-compatible endpoint; `mode` says how it answers.
struct Cloud {
    addr: std::net::SocketAddr,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

fn sse(chunks: Vec<Value>, done: bool) -> String {
    let mut body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    if done {
        body.push_str("data: [DONE]\n\n");
    }
    body
}

async fn cloud_answer(mode: Arc<AtomicU8>, body: Value) -> axum::response::Response {
    assert_eq!(body["model"], "big-chat", "the endpoint's model name");
    assert_eq!(body["stream"], true, "always streamed to the device");
    let delta = |t: &str| json!({"choices": [{"delta": {"content": t}, "finish_reason": null}]});
    let pieces = ["Once", " upon", " a time", ", in the", " cloud."];
    match mode.load(Ordering::SeqCst) {
        HEALTHY => {
            let mut chunks: Vec<Value> = pieces.iter().map(|p| delta(p)).collect();
            chunks.push(json!({"choices": [{"delta": {}, "finish_reason": "stop"}]}));
            chunks.push(
                json!({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 5}}),
            );
            sse(chunks, true).into_response()
        }
        CUT => sse(pieces[..3].iter().map(|p| delta(p)).collect(), false).into_response(),
        _ => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response(),
    }
}

impl Cloud {
    async fn start() -> Cloud {
        let mode = Arc::new(AtomicU8::new(HEALTHY));
        let m = mode.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                cloud_answer(m.clone(), body)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Cloud { addr, mode, task }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

fn policy(cloud: std::net::SocketAddr) -> OffloadPolicy {
    serde_json::from_value(json!({
        "inputsMayLeaveDevice": true,
        "endpoint": {"url": format!("http://{cloud}"), "model": "big-chat", "protocol": "openai"},
        // Any first token expected later than 1 ms goes to the cloud once the model has run
        // once: every request after the first.
        "triggers": {"ttftBudgetMs": 1, "contextExceeded": true},
        "rateLimit": {"requestsPerSecond": 1000, "burst": 1000},
        "timeoutMs": 2000
    }))
    .unwrap()
}

fn question() -> Value {
    json!({"model": MODEL, "max_tokens": 24, "temperature": 0,
           "messages": [{"role": "user", "content": "What is the capital of France?"}]})
}

struct Answer {
    status: u16,
    source: Option<String>,
    text: String,
    body: Value,
}

async fn ask(agent: &AgentProcess, body: Value, forwarded: bool) -> Answer {
    let mut request = reqwest::Client::new()
        .post(agent.url("/v1/chat/completions"))
        .json(&body);
    if forwarded {
        request = request.header("edgefleet-offloaded", "1");
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let source = r
        .headers()
        .get("edgefleet-source")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().await.unwrap();
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Answer {
        status,
        source,
        text,
        body,
    }
}

/// A streamed answer: its text, the last chunk's `edgefleet.source` and finish reason.
async fn ask_streaming(agent: &AgentProcess) -> (String, String, String) {
    let mut body = question();
    body["stream"] = json!(true);
    let text = reqwest::Client::new()
        .post(agent.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut content = String::new();
    let mut last = Value::Null;
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert!(chunk.get("error").is_none(), "{chunk}");
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(piece);
        }
        if chunk["choices"][0]["finish_reason"].is_string() {
            last = chunk;
        }
    }
    let source = last["edgefleet"]["source"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let finish = last["choices"][0]["finish_reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (content, source, finish)
}

fn long_prompt() -> Value {
    let words = "the quick brown fox jumps over the lazy dog ".repeat(40);
    json!({"model": MODEL, "max_tokens": 8, "temperature": 0,
           "messages": [{"role": "user", "content": format!("Summarise: {words}")}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_requests_go_to_the_cloud_and_the_device_answers_when_it_fails() {
    let server = ArtifactServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start().await;
    let bytes = model_bytes(GGUF);
    let uri = server.add(GGUF, bytes.clone());
    let broker = TestBroker::get();
    let device = unique_device("llm-offload");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let url = broker.url();
    let args = [
        "--device-id",
        device.as_str(),
        "--broker",
        url.as_str(),
        "--telemetry-interval-secs",
        "1",
    ];
    let agent = AgentProcess::spawn(&dir.path().join("store"), &args);
    let mut a = llm_assignment(&uri, &bytes);
    // 256 tokens of context: the long prompt (~400 tokens) does not fit.
    a.llm = Some(LlmRun {
        context_tokens: 256,
        slots: 1,
    });
    a.offload = Some(policy(cloud.addr));
    obs.publish_desired(&device, desired(&device, 1, vec![a.clone()]))
        .await;
    wait_phase(&mut obs, 1, DEPLOYMENT, ModelPhase::Ready, T).await;
    wait_serving(&agent, MODEL, &a.artifact.sha256, T).await;

    // Nothing is known about the model's speed yet: the first request is answered here.
    let local = ask(&agent, question(), false).await;
    assert_eq!(local.status, 200, "{}", local.body);
    assert_eq!(local.source.as_deref(), Some("local"));
    assert_eq!(local.body["edgefleet"]["source"], "local");
    assert!(local.text.contains("Paris"), "{}", local.text);

    // Now every first token is expected later than 1 ms: the cloud answers.
    let answer = ask(&agent, question(), false).await;
    assert_eq!(answer.source.as_deref(), Some("cloud"), "{}", answer.body);
    assert_eq!(answer.text, CLOUD_TEXT);
    assert_eq!(answer.body["edgefleet"]["trigger"], "ttft_budget");
    assert_eq!(
        answer.body["model"], MODEL,
        "answered as the device's model"
    );
    assert_eq!(answer.body["usage"]["completion_tokens"], 5);
    let (text, source, finish) = ask_streaming(&agent).await;
    assert_eq!(
        (text.as_str(), source.as_str(), finish.as_str()),
        (CLOUD_TEXT, "cloud", "stop")
    );

    // An agent never offloads a request another agent offloaded to it.
    let forwarded = ask(&agent, question(), true).await;
    assert_eq!(forwarded.source, None, "no offload for a forwarded request");
    assert_eq!(forwarded.text, local.text);

    // The cloud stops mid-answer: the device continues the cloud's text itself.
    cloud.set(CUT);
    let cut = ask(&agent, question(), false).await;
    assert_eq!(cut.status, 200, "{}", cut.body);
    assert_eq!(cut.source.as_deref(), Some("local-fallback"));
    assert!(
        cut.text.starts_with(CUT_TEXT) && cut.text.len() > CUT_TEXT.len(),
        "the cloud's start, then the device's continuation: {:?}",
        cut.text
    );
    // A continuation, not the device's own answer started over after the cloud's words.
    let rest = cut.text[CUT_TEXT.len()..].trim_start();
    assert!(!local.text.starts_with(rest), "restarted: {:?}", cut.text);
    eprintln!(
        "local: {:?}\ncut by the cloud, continued here: {:?}",
        local.text, cut.text
    );
    let (text, source, finish) = ask_streaming(&agent).await;
    assert_eq!(source, "local-fallback");
    assert!(
        text.starts_with(CUT_TEXT) && text.len() > CUT_TEXT.len(),
        "{text:?}"
    );
    assert!(finish == "stop" || finish == "length", "{finish}");

    // The cloud refuses, then is gone: the device's own answer, the same as before.
    for mode in [Some(FAILING), None] {
        match mode {
            Some(mode) => cloud.set(mode),
            None => cloud.task.abort(),
        }
        let fallback = ask(&agent, question(), false).await;
        assert_eq!(fallback.source.as_deref(), Some("local-fallback"));
        assert_eq!(fallback.text, local.text, "greedy: the same local answer");
        let (text, source, _) = ask_streaming(&agent).await;
        assert_eq!(
            (text.as_str(), source.as_str()),
            (local.text.as_str(), "local-fallback")
        );
    }

    // Over the device's context: only the cloud could answer, and it is gone.
    let refused = ask(&agent, long_prompt(), false).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "context_length_exceeded");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("context is 256 tokens")
            && message.contains("the cloud endpoint did not answer"),
        "{message}"
    );

    // The agent's telemetry counts the offloads and the fallbacks.
    let payload = obs
        .wait_for(Channel::Telemetry, T, |p| {
            let t: Telemetry = wire::decode(p).unwrap();
            t.models.iter().any(|m| m.offload.is_some())
        })
        .await;
    let t: Telemetry = wire::decode(&payload).unwrap();
    let m: &ModelWindow = t.models.iter().find(|m| m.offload.is_some()).unwrap();
    let offload = m.offload.as_ref().unwrap();
    assert!(
        offload.requests >= 1 && offload.fallbacks <= offload.requests,
        "{offload:?}"
    );
    let total = metric(
        &agent,
        "edgefleet_agent_offload_requests_total{deployment=\"chat/smollm2\",result=\"cloud\",trigger=\"ttft_budget\",variant=\"q4-1\"}",
    )
    .await;
    assert_eq!(total, Some(2.0), "two answers from the cloud");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_over_the_context_goes_to_the_cloud() {
    let server = ArtifactServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start().await;
    let mut policy = policy(cloud.addr);
    policy.triggers.ttft_budget_ms = None;
    let bytes = model_bytes(GGUF);
    let uri = server.add(GGUF, bytes.clone());
    let broker = TestBroker::get();
    let device = unique_device("llm-context");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let url = broker.url();
    let agent = AgentProcess::spawn(
        &dir.path().join("store"),
        &["--device-id", device.as_str(), "--broker", url.as_str()],
    );
    let mut a = llm_assignment(&uri, &bytes);
    a.llm = Some(LlmRun {
        context_tokens: 256,
        slots: 1,
    });
    a.offload = Some(policy);
    obs.publish_desired(&device, desired(&device, 1, vec![a.clone()]))
        .await;
    wait_phase(&mut obs, 1, DEPLOYMENT, ModelPhase::Ready, T).await;
    wait_serving(&agent, MODEL, &a.artifact.sha256, T).await;

    let short = ask(&agent, question(), false).await;
    assert_eq!(short.source.as_deref(), Some("local"), "{}", short.body);
    let long = ask(&agent, long_prompt(), false).await;
    assert_eq!(long.status, 200, "{}", long.body);
    assert_eq!(long.source.as_deref(), Some("cloud"));
    assert_eq!(long.body["edgefleet"]["trigger"], "context_exceeded");
    assert_eq!(long.text, CLOUD_TEXT);
}
