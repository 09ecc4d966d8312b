use axum::body::Body;
use axum::http::HeaderMap;

use super::*;
use crate::install::repository::Wanted;
use crate::runtime::Model;
use crate::tensor::{DataType, Tensor};
use axum::http::Request;
use edgefleet_protocol::wire::{Assignment, ModelPhase, ModelState, Role};
use edgefleet_protocol::{Artifact, ModelRef, Precision, Runtime};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Doubles `x` (FP32, [-1, 3]) into `y`; `n` is x's element count as INT64.
struct Doubler {
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
}

impl Model for Doubler {
    fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }
    fn run(&self, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
        let x = &inputs[0];
        let y: Vec<f32> = x.to_f64().iter().map(|v| (*v * 2.0) as f32).collect();
        let n = (x.len() as i64).to_le_bytes().to_vec();
        Ok(vec![
            Tensor::from_f32(x.shape.clone(), &y)?,
            Tensor::from_bytes(DataType::Int64, vec![1], n.into())?,
        ])
    }
}

fn state() -> ApiState {
    let spec = |name: &str, dt, shape: Vec<i64>| IoSpec {
        name: name.into(),
        dt,
        shape,
    };
    let registry = Arc::new(Registry::default());
    registry.insert(Served {
        assignment: Assignment {
            deployment: "vision/doubler".into(),
            model: ModelRef {
                name: "double".into(),
                version: "2.0".into(),
            },
            variant: "fp32".into(),
            precision: Precision::Fp32,
            runtime: Runtime::Tract,
            artifact: Artifact {
                uri: "http://x/d.onnx".into(),
                sha256: "ab".repeat(32),
                size_bytes: 1,
                signature: None,
            },
            role: Role::Canary,
            self_test: None,
            offload: None,
            llm: None,
            site_cache: None,
        },
        model: Arc::new(Doubler {
            inputs: vec![spec("x", DataType::Fp32, vec![-1, 3])],
            outputs: vec![
                spec("y", DataType::Fp32, vec![-1, 3]),
                spec("n", DataType::Int64, vec![1]),
            ],
        }),
    });
    Arc::new(ApiInner {
        registry,
        install_states: Default::default(),
        metrics: Arc::new(Metrics::new()),
        stats: Arc::new(WindowStats::new(0)),
        ready: AtomicBool::new(false),
        permits: Arc::new(Semaphore::new(2)),
        test: TestKnobs::default(),
        max_body_bytes: 4096,
        offload: OffloadRuntime::new(2).unwrap(),
    })
}

async fn call(s: &ApiState, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let resp = router(s.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post_json(path: &str, v: Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

fn json_of(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap()
}

#[tokio::test]
async fn health_and_metadata() {
    let s = state();
    assert_eq!(call(&s, get("/v2/health/live")).await.0, StatusCode::OK);
    assert_eq!(
        call(&s, get("/v2/health/ready")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    s.ready.store(true, Ordering::Release);
    assert_eq!(call(&s, get("/v2/health/ready")).await.0, StatusCode::OK);
    for name in ["double", "vision%2Fdoubler", "doubler"] {
        let (status, _, body) = call(&s, get(&format!("/v2/models/{name}"))).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        let m = json_of(&body);
        assert_eq!(m["name"], "double");
        assert_eq!(
            m["inputs"][0],
            json!({"name": "x", "datatype": "FP32", "shape": [-1, 3]})
        );
        assert_eq!(m["outputs"][1]["datatype"], "INT64");
        assert_eq!(
            (m["variant"].as_str(), m["version"].as_str()),
            (Some("fp32"), Some("2.0"))
        );
        assert_eq!(m["sha256"], "ab".repeat(32));
    }
    let (status, _, body) = call(&s, get("/v2/models/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json_of(&body)["error"].as_str().unwrap().contains("nope"));
    assert_eq!(
        call(&s, get("/v2/models/double/ready")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn json_inference() {
    let s = state();
    let req = json!({"id": "r1", "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32",
                     "data": [[1, 2, 3], [4, 5, 6.5]]}]});
    let (status, headers, body) = call(&s, post_json("/v2/models/double/infer", req)).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(headers.get(BINARY_HEADER).is_none());
    let r = json_of(&body);
    assert_eq!(r["id"], "r1");
    assert_eq!(r["model_name"], "double");
    assert_eq!(
        r["outputs"][0]["data"],
        json!([2.0, 4.0, 6.0, 8.0, 10.0, 13.0])
    );
    assert_eq!(r["outputs"][0]["shape"], json!([2, 3]));
    assert_eq!(r["outputs"][1]["data"], json!([6]));
    // Only the requested output.
    let req = json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                     "data": [1, 1, 1]}], "outputs": [{"name": "n"}]});
    let (_, _, body) = call(&s, post_json("/v2/models/double/infer", req)).await;
    let r = json_of(&body);
    assert_eq!(r["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(r["outputs"][0]["name"], "n");
    let metrics = call(&s, get("/metrics")).await.2;
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.contains(
            "edgefleet_agent_inference_requests_total{deployment=\"vision/doubler\",variant=\"fp32\"} 2"
        ),
        "{text}"
    );
    assert!(text.contains("edgefleet_agent_inference_duration_seconds_bucket"));
}

#[tokio::test]
async fn binary_inference_round_trip() {
    let s = state();
    let header = json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                        "parameters": {"binary_data_size": 12}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    for v in [1.5f32, -2.0, 0.25] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let req = Request::post("/v2/models/double/infer")
        .header(BINARY_HEADER, header.len())
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(body))
        .unwrap();
    let (status, headers, body) = call(&s, req).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let json_len: usize = headers[BINARY_HEADER].to_str().unwrap().parse().unwrap();
    let r: Value = serde_json::from_slice(&body[..json_len]).unwrap();
    assert_eq!(r["outputs"][0]["parameters"]["binary_data_size"], 12);
    assert!(r["outputs"][0].get("data").is_none());
    let y: Vec<f32> = body[json_len..json_len + 12]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(y, [3.0, -4.0, 0.5]);
    assert_eq!(body.len(), json_len + 12 + 8);
    // JSON request asking for binary output.
    let req = json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
                     "parameters": {"binary_data_output": true},
                     "outputs": [{"name": "y"}, {"name": "n", "parameters": {"binary_data": false}}]});
    let (_, headers, body) = call(&s, post_json("/v2/models/double/infer", req)).await;
    let json_len: usize = headers[BINARY_HEADER].to_str().unwrap().parse().unwrap();
    let r: Value = serde_json::from_slice(&body[..json_len]).unwrap();
    assert_eq!(r["outputs"][1]["data"], json!([3]));
    assert_eq!(body.len(), json_len + 12);
}

#[tokio::test]
async fn clear_client_errors() {
    let s = state();
    let cases = [
        (
            json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
            "shape",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}]}),
            "must be FP32",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]}),
            "elements",
        ),
        (
            json!({"inputs": [{"name": "z", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
            "unknown input",
        ),
        (json!({"inputs": []}), "missing input"),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP16", "data": [1, 2, 3]}]}),
            "unsupported datatype",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, "a", 3]}]}),
            "not a valid FP32",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32"}]}),
            "neither data",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
                "outputs": [{"name": "q"}]}),
            "unknown output",
        ),
        (json!({"nothing": 1}), "invalid inference request"),
    ];
    for (req, needle) in cases {
        let (status, _, body) = call(&s, post_json("/v2/models/double/infer", req.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{req}");
        let msg = json_of(&body)["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{req}: {msg:?} lacks {needle:?}");
    }
    // Binary size that does not match the shape.
    let header = json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                        "parameters": {"binary_data_size": 8}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&[0u8; 8]);
    let req = Request::post("/v2/models/double/infer")
        .header(BINARY_HEADER, header.len())
        .body(Body::from(body))
        .unwrap();
    let (status, _, body) = call(&s, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json_of(&body)["error"].as_str().unwrap().contains("bytes"));
    // Header length beyond the body.
    let req = Request::post("/v2/models/double/infer")
        .header(BINARY_HEADER, "999")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(call(&s, req).await.0, StatusCode::BAD_REQUEST);
    // Body over the limit.
    let big = vec![b' '; 8192];
    let req = Request::post("/v2/models/double/infer")
        .body(Body::from(big))
        .unwrap();
    assert_eq!(call(&s, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // Unknown model.
    let req = post_json("/v2/models/other/infer", json!({"inputs": []}));
    assert_eq!(call(&s, req).await.0, StatusCode::NOT_FOUND);
}

fn model_state(deployment: &str, version: &str, sha: &str, phase: ModelPhase) -> ModelState {
    ModelState {
        deployment: deployment.into(),
        variant: "fp32".into(),
        version: version.into(),
        sha256: sha.into(),
        phase,
        bytes_done: None,
        bytes_total: None,
        reason: None,
        serving_sha256: None,
        fetched: None,
    }
}

#[tokio::test]
async fn repository_index_lists_served_loading_and_failed_models() {
    let s = state();
    // v2.0 serves; its v3.0 failed the self-test; a second deployment is downloading.
    let mut failed = model_state(
        "vision/doubler",
        "3.0",
        &"cd".repeat(32),
        ModelPhase::Failed,
    );
    failed.reason = Some("self-test: self-test output \"y\" is not finite (round 0)".into());
    let mut downloading = model_state(
        "audio/vad",
        "6.2",
        &"ef".repeat(32),
        ModelPhase::Downloading,
    );
    (downloading.bytes_done, downloading.bytes_total) = (Some(100), Some(1000));
    s.install_states.publish(vec![
        Wanted {
            model: "double".into(),
            state: failed,
        },
        Wanted {
            model: "silero-vad".into(),
            state: downloading,
        },
    ]);
    let (status, headers, body) = call(&s, post_json("/v2/repository/index", json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        json_of(&body),
        json!([
            {"name": "double", "version": "2.0", "state": "READY", "reason": "",
             "deployment": "vision/doubler", "variant": "fp32"},
            {"name": "double", "version": "3.0", "state": "UNAVAILABLE",
             "reason": "self-test: self-test output \"y\" is not finite (round 0)",
             "deployment": "vision/doubler", "variant": "fp32"},
            {"name": "silero-vad", "version": "6.2", "state": "LOADING",
             "reason": "downloading (100 of 1000 bytes)",
             "deployment": "audio/vad", "variant": "fp32"},
        ])
    );
    // An empty body is a request for every model too; `ready` keeps the READY ones.
    let req = Request::post("/v2/repository/index")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = call(&s, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body).as_array().unwrap().len(), 3);
    let (_, _, body) = call(
        &s,
        post_json("/v2/repository/index", json!({"ready": true})),
    )
    .await;
    let ready = json_of(&body);
    assert_eq!(ready.as_array().unwrap().len(), 1, "{ready}");
    assert_eq!(ready[0]["state"], "READY");
    // The index is a POST, as the protocol has it; a bad body is a 400 naming the problem.
    let (status, _, body) = call(
        &s,
        post_json("/v2/repository/index", json!({"ready": "yes"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        json_of(&body)["error"]
            .as_str()
            .unwrap()
            .contains("invalid repository index request")
    );
    assert_eq!(
        call(&s, get("/v2/repository/index")).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn repository_index_of_a_model_that_serves_its_wanted_artifact_has_one_entry() {
    let s = state();
    s.install_states.publish(vec![Wanted {
        model: "double".into(),
        state: model_state("vision/doubler", "2.0", &"ab".repeat(32), ModelPhase::Ready),
    }]);
    let (_, _, body) = call(&s, post_json("/v2/repository/index", json!({}))).await;
    let index = json_of(&body);
    assert_eq!(index.as_array().unwrap().len(), 1, "{index}");
    assert_eq!(index[0]["state"], "READY");
}
