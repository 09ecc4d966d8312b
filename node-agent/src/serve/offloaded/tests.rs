use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::http::Request;
use edgefleet_protocol::wire::{Assignment, Role};
use edgefleet_protocol::{Artifact, ModelRef, OffloadEndpoint, Precision, Runtime};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use serde_json::{Value, json};

use edgefleet_protocol::{OffloadPolicy, OffloadRateLimit, OffloadTriggers};

use crate::config::TestKnobs;
use crate::link::window::WindowStats;
use crate::metrics::Metrics;
use crate::offload::tests::triggers;
use crate::offload::*;
use crate::registry::Registry;
use crate::registry::Served;
use crate::runtime::{IoSpec, Model};
use crate::serve::{ApiInner, ApiState, router};
use crate::tensor::BINARY_HEADER;
use crate::tensor::DataType;
use crate::tensor::Tensor;

// ---------------------------------------------------------------- the request path

/// Returns its input `x` (FP32 [1, 2]) as the probabilities `prob`, plus `tag`, a constant
/// that tells which server answered.
struct Scores {
    tag: f32,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
}

impl Scores {
    fn new(tag: f32) -> Scores {
        let spec = |name: &str| IoSpec {
            name: name.into(),
            dt: DataType::Fp32,
            shape: vec![1, 2],
        };
        Scores {
            tag,
            inputs: vec![spec("x")],
            outputs: vec![
                spec("prob"),
                IoSpec {
                    name: "tag".into(),
                    dt: DataType::Fp32,
                    shape: vec![1],
                },
            ],
        }
    }
}

impl Model for Scores {
    fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }
    fn run(&self, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
        let x: Vec<f32> = inputs[0].to_f64().iter().map(|v| *v as f32).collect();
        Ok(vec![
            Tensor::from_f32(vec![1, 2], &x)?,
            Tensor::from_f32(vec![1], &[self.tag])?,
        ])
    }
}

fn policy(url: &str, t: OffloadTriggers, rate: f64, burst: u32) -> OffloadPolicy {
    OffloadPolicy {
        inputs_may_leave_device: true,
        endpoint: OffloadEndpoint {
            url: url.into(),
            model: "scores".into(),
            protocol: Default::default(),
        },
        triggers: t,
        rate_limit: OffloadRateLimit {
            requests_per_second: rate,
            burst,
        },
        timeout_ms: 2000,
    }
}

fn state(tag: f32, offload: Option<OffloadPolicy>) -> ApiState {
    let registry = Arc::new(Registry::default());
    registry.insert(Served {
        assignment: Assignment {
            deployment: "vision/scores".into(),
            model: ModelRef {
                name: "scores".into(),
                version: "1".into(),
            },
            variant: "int8".into(),
            precision: Precision::Int8,
            runtime: Runtime::Tract,
            artifact: Artifact {
                uri: "http://x/s.onnx".into(),
                sha256: "ab".repeat(32),
                size_bytes: 1,
                signature: None,
            },
            role: Role::Stable,
            self_test: None,
            offload,
            llm: None,
            site_cache: None,
        },
        model: Arc::new(Scores::new(tag)),
    });
    Arc::new(ApiInner {
        registry,
        install_states: Default::default(),
        metrics: Arc::new(Metrics::new()),
        stats: Arc::new(WindowStats::new(0)),
        ready: AtomicBool::new(true),
        permits: Arc::new(Semaphore::new(2)),
        test: TestKnobs::default(),
        max_body_bytes: 1 << 20,
        offload: OffloadRuntime::new(2).unwrap(),
    })
}

/// A second agent API on a loopback port, standing in for the cloud model.
async fn cloud_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state(9.0, None));
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, handle)
}

/// A URL nothing listens on.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

struct Answer {
    source: String,
    parameters: Value,
    prob: Vec<f64>,
    tag: f64,
}

async fn ask(s: &ApiState, x: [f32; 2]) -> Answer {
    let body = json!({"id": "q", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": x}]});
    let req = Request::post("/v2/models/scores/infer")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router(s.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let source = resp.headers()[SOURCE_HEADER].to_str().unwrap().to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["id"], "q", "{v}");
    let data = |i: usize| -> Vec<f64> {
        v["outputs"][i]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    Answer {
        parameters: v["parameters"].clone(),
        source,
        prob: data(0),
        tag: data(1)[0],
    }
}

fn window(s: &ApiState) -> edgefleet_protocol::wire::ModelWindow {
    let d = edgefleet_protocol::wire::DeviceId::new("d1").unwrap();
    s.stats.cut(&d, 1, 1, 1).models.remove(0)
}

#[tokio::test]
async fn unsure_answers_come_from_the_cloud_and_sure_ones_stay_local() {
    let (url, _cloud) = cloud_server().await;
    let s = state(
        1.0,
        Some(policy(&url, triggers(Some(0.7), None, None), 100.0, 100)),
    );
    let sure = ask(&s, [0.9, 0.1]).await;
    assert_eq!((sure.source.as_str(), sure.tag), ("local", 1.0));
    assert_eq!(sure.parameters[SOURCE_PARAMETER], "local");
    let unsure = ask(&s, [0.4, 0.6]).await;
    assert_eq!((unsure.source.as_str(), unsure.tag), ("cloud", 9.0));
    assert_eq!(unsure.parameters[SOURCE_PARAMETER], "cloud");
    assert_eq!(unsure.parameters[TRIGGER_PARAMETER], "confidence");
    assert_eq!(
        unsure.prob,
        vec![0.4f32 as f64, 0.6f32 as f64],
        "same inputs forwarded"
    );

    let w = window(&s);
    let offload = w.offload.expect("offload counts");
    assert_eq!((w.requests, offload.requests, offload.fallbacks), (2, 1, 0));
    assert_eq!(offload.cloud_latency.count(), 1);
    let metrics = s.metrics.render();
    assert!(
        metrics.contains(r#"edgefleet_agent_offload_requests_total{deployment="vision/scores",result="cloud",trigger="confidence",variant="int8"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unreachable_cloud_answers_with_the_local_result_marked_fallback() {
    let s = state(
        1.0,
        Some(policy(
            &dead_url(),
            triggers(Some(0.7), None, None),
            100.0,
            100,
        )),
    );
    let a = ask(&s, [0.45, 0.55]).await;
    assert_eq!((a.source.as_str(), a.tag), ("local-fallback", 1.0));
    assert_eq!(a.prob, vec![0.45f32 as f64, 0.55f32 as f64]);
    let offload = window(&s).offload.expect("counted");
    assert_eq!((offload.requests, offload.fallbacks), (1, 1));
}

#[tokio::test]
async fn a_cloud_error_status_or_timeout_falls_back() {
    // A server that answers 500, and one that never answers within the timeout.
    let failing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let failing_url = format!("http://{}", failing.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async { StatusCode::INTERNAL_SERVER_ERROR });
    tokio::spawn(async move {
        let _ = axum::serve(failing, app).await;
    });
    let s = state(
        1.0,
        Some(policy(
            &failing_url,
            triggers(Some(0.7), None, None),
            100.0,
            100,
        )),
    );
    assert_eq!(ask(&s, [0.5, 0.5]).await.source, "local-fallback");

    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_url = format!("http://{}", slow.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        StatusCode::OK
    });
    tokio::spawn(async move {
        let _ = axum::serve(slow, app).await;
    });
    let mut p = policy(&slow_url, triggers(Some(0.7), None, None), 100.0, 100);
    p.timeout_ms = 200;
    let s = state(1.0, Some(p));
    let started = Instant::now();
    assert_eq!(ask(&s, [0.5, 0.5]).await.source, "local-fallback");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn over_the_rate_limit_requests_stay_local() {
    let (url, _cloud) = cloud_server().await;
    // Two tokens, refilled once every 1000 s: the third unsure request stays local.
    let s = state(
        1.0,
        Some(policy(&url, triggers(Some(0.7), None, None), 0.001, 2)),
    );
    let sources: Vec<String> = [
        ask(&s, [0.5, 0.5]).await,
        ask(&s, [0.5, 0.5]).await,
        ask(&s, [0.5, 0.5]).await,
    ]
    .into_iter()
    .map(|a| a.source)
    .collect();
    assert_eq!(sources, ["cloud", "cloud", "local"]);
    let limited = ask(&s, [0.5, 0.5]).await;
    assert_eq!(limited.parameters[RATE_LIMITED_PARAMETER], true);
    assert_eq!(limited.parameters[TRIGGER_PARAMETER], "confidence");
    let offload = window(&s).offload.expect("counted");
    assert_eq!(
        offload.requests, 2,
        "rate-limited requests are not offloads"
    );
}

#[tokio::test]
async fn a_full_queue_offloads_without_running_locally_and_falls_back_when_needed() {
    let (url, _cloud) = cloud_server().await;
    let s = state(
        1.0,
        Some(policy(&url, triggers(None, Some(0), None), 100.0, 100)),
    );
    assert_eq!(ask(&s, [0.9, 0.1]).await.source, "local", "empty queue");
    let busy = s.offload.enter_queue();
    let a = ask(&s, [0.9, 0.1]).await;
    assert_eq!((a.source.as_str(), a.tag), ("cloud", 9.0));
    assert_eq!(a.parameters[TRIGGER_PARAMETER], "queue_depth");
    drop(busy);

    let s = state(
        1.0,
        Some(policy(
            &dead_url(),
            triggers(None, Some(0), None),
            100.0,
            100,
        )),
    );
    let _busy = s.offload.enter_queue();
    let a = ask(&s, [0.9, 0.1]).await;
    assert_eq!((a.source.as_str(), a.tag), ("local-fallback", 1.0));
}

#[tokio::test]
async fn binary_requests_are_forwarded_and_answered_in_binary() {
    let (url, _cloud) = cloud_server().await;
    let s = state(
        1.0,
        Some(policy(&url, triggers(Some(0.7), None, None), 100.0, 100)),
    );
    let header = json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                        "parameters": {"binary_data_size": 8}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    for v in [0.5f32, 0.5] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let req = Request::post("/v2/models/scores/infer")
        .header(BINARY_HEADER, header.len())
        .body(Body::from(body))
        .unwrap();
    let resp = router(s.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[SOURCE_HEADER], "cloud");
    let json_len: usize = resp.headers()[BINARY_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body[..json_len]).unwrap();
    assert_eq!(v["parameters"][SOURCE_PARAMETER], "cloud");
    assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 4);
    let tag = f32::from_le_bytes(body[json_len + 8..json_len + 12].try_into().unwrap());
    assert_eq!(tag, 9.0);
}

#[tokio::test]
async fn without_consent_nothing_leaves_the_device() {
    let (url, _cloud) = cloud_server().await;
    let mut p = policy(&url, triggers(Some(0.99), Some(0), None), 100.0, 100);
    p.inputs_may_leave_device = false;
    let s = state(1.0, Some(p));
    let req = Request::post("/v2/models/scores/infer")
        .body(Body::from(
            json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 0.5]}]})
                .to_string(),
        ))
        .unwrap();
    let resp = router(s.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get(SOURCE_HEADER).is_none());
    assert_eq!(window(&s).offload, None);
}

#[tokio::test]
async fn agents_offloading_to_each_other_do_not_bounce_a_request() {
    // This agent's cloud is an agent with the same policy pointing back at the first one.
    let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let first_url = format!("http://{}", first.local_addr().unwrap());
    let second_url = format!("http://{}", second.local_addr().unwrap());
    let always = || triggers(Some(1.0), None, None);
    let a = state(1.0, Some(policy(&second_url, always(), 100.0, 100)));
    let b = state(9.0, Some(policy(&first_url, always(), 100.0, 100)));
    let (app_a, app_b) = (router(a.clone()), router(b.clone()));
    tokio::spawn(async move {
        let _ = axum::serve(first, app_a).await;
    });
    tokio::spawn(async move {
        let _ = axum::serve(second, app_b).await;
    });
    let answer = ask(&a, [0.5, 0.5]).await;
    assert_eq!((answer.source.as_str(), answer.tag), ("cloud", 9.0));
    assert_eq!(
        window(&b).offload,
        None,
        "the second agent answered locally"
    );
}
