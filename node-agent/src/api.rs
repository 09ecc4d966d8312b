//! The local inference API: KServe v2 / Open Inference Protocol over HTTP/1.1, with JSON
//! tensors and Triton's binary tensor extension, plus `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::config::TestKnobs;
use crate::metrics::Metrics;
use crate::registry::{Registry, Served};
use crate::runtime::IoSpec;
use crate::telemetry::WindowStats;
use crate::tensor::{DataType, Tensor};

pub const BINARY_HEADER: &str = "inference-header-content-length";

pub struct ApiInner {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<WindowStats>,
    /// Set once the models persisted from the last run are serving again.
    pub ready: AtomicBool,
    /// Bounds concurrent inferences (the blocking pool would grow otherwise).
    pub permits: Arc<Semaphore>,
    pub test: TestKnobs,
    pub max_body_bytes: usize,
}

pub type ApiState = Arc<ApiInner>;

pub fn router(state: ApiState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A 4xx/5xx answer with the protocol's `{"error": ...}` body.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

async fn server_metadata() -> impl IntoResponse {
    axum::Json(json!({
        "name": "edgefleet-agent",
        "version": crate::capabilities::AGENT_VERSION,
        "extensions": ["binary_tensor_data"],
    }))
}

async fn ready(State(s): State<ApiState>) -> StatusCode {
    if s.ready.load(Ordering::Acquire) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

fn lookup(s: &ApiState, name: &str) -> Result<Arc<Served>, ApiError> {
    s.registry.get(name).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("model {name:?} is not loaded"),
        )
    })
}

fn io_json(specs: &[IoSpec]) -> Vec<Value> {
    specs
        .iter()
        .map(|s| json!({ "name": s.name, "datatype": s.dt.as_str(), "shape": s.shape }))
        .collect()
}

async fn model_metadata(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let served = lookup(&s, &name)?;
    let a = &served.assignment;
    Ok(axum::Json(json!({
        "name": a.model.name,
        "versions": [a.model.version],
        "platform": "onnx",
        "inputs": io_json(served.model.inputs()),
        "outputs": io_json(served.model.outputs()),
        "deployment": a.deployment,
        "variant": a.variant,
        "version": a.model.version,
        "sha256": a.artifact.sha256,
        "runtime": a.runtime.as_str(),
        "role": a.role.as_str(),
    })))
}

async fn model_ready(State(s): State<ApiState>, Path(name): Path<String>) -> StatusCode {
    if s.registry.get(&name).is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

async fn infer(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let served = match lookup(&s, &name) {
        Ok(served) => served,
        Err(e) => return e.into_response(),
    };
    let result = infer_served(&s, &served, &headers, body).await;
    let a = &served.assignment;
    let extra = s.test.extra_latency(&a.variant);
    if extra > Duration::ZERO {
        tokio::time::sleep(extra).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let failed = matches!(&result, Err(ApiError(code, _)) if code.is_server_error());
    let labels = [a.deployment.as_str(), a.variant.as_str()];
    s.metrics.requests.with_label_values(&labels).inc();
    if failed {
        s.metrics.errors.with_label_values(&labels).inc();
    }
    s.metrics
        .latency
        .with_label_values(&labels)
        .observe(seconds);
    s.stats.record(&a.deployment, &a.variant, seconds, failed);
    match result {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn infer_served(
    s: &ApiState,
    served: &Arc<Served>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (json_part, binary) = split_binary(headers, body)?;
    let request: InferRequest = serde_json::from_slice(&json_part)
        .map_err(|e| ApiError::bad(format!("invalid inference request: {e}")))?;
    let used_binary = !binary.is_empty()
        || request
            .inputs
            .iter()
            .any(|i| i.parameters.contains_key("binary_data_size"));
    let inputs = decode_inputs(served.model.inputs(), &request.inputs, binary)?;

    let permit = s
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    let model = served.model.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        model.run(inputs)
    })
    .await
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference task: {e}"),
        )
    })?
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference failed: {e:#}"),
        )
    })?;

    let default_binary = request
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(used_binary);
    let specs = served.model.outputs();
    let selected: Vec<(usize, bool)> = if request.outputs.is_empty() {
        (0..specs.len()).map(|i| (i, default_binary)).collect()
    } else {
        request
            .outputs
            .iter()
            .map(|o| {
                let index = specs
                    .iter()
                    .position(|spec| spec.name == o.name)
                    .ok_or_else(|| ApiError::bad(format!("unknown output {:?}", o.name)))?;
                let binary = o
                    .parameters
                    .get("binary_data")
                    .and_then(Value::as_bool)
                    .unwrap_or(default_binary);
                Ok((index, binary))
            })
            .collect::<Result<_, ApiError>>()?
    };
    let a = &served.assignment;
    let mut out_json = Vec::with_capacity(selected.len());
    let mut blobs: Vec<Bytes> = Vec::new();
    for (index, binary) in selected {
        let (Some(spec), Some(tensor)) = (specs.get(index), outputs.get(index)) else {
            return Err(ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the model returned fewer outputs than it declares".into(),
            ));
        };
        let mut o = json!({
            "name": spec.name,
            "datatype": tensor.dt.as_str(),
            "shape": tensor.shape,
        });
        if binary {
            o["parameters"] = json!({ "binary_data_size": tensor.data.len() });
            blobs.push(tensor.data.clone());
        } else {
            o["data"] = tensor.to_json();
        }
        out_json.push(o);
    }
    let mut response = json!({
        "model_name": a.model.name,
        "model_version": a.model.version,
        "outputs": out_json,
    });
    if let Some(id) = request.id {
        response["id"] = id;
    }
    let header_bytes = serde_json::to_vec(&response)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if blobs.is_empty() {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            header_bytes,
        )
            .into_response());
    }
    let header_len = header_bytes.len();
    let mut body = Vec::with_capacity(header_len + blobs.iter().map(Bytes::len).sum::<usize>());
    body.extend_from_slice(&header_bytes);
    for blob in &blobs {
        body.extend_from_slice(blob);
    }
    let mut response = Response::new(Body::from(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(BINARY_HEADER, HeaderValue::from(header_len));
    Ok(response)
}

/// Splits a body into its JSON header and the binary tensor bytes that follow it.
fn split_binary(headers: &HeaderMap, body: Bytes) -> Result<(Bytes, Bytes), ApiError> {
    let Some(value) = headers.get(BINARY_HEADER) else {
        return Ok((body, Bytes::new()));
    };
    let len: usize = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ApiError::bad(format!("{BINARY_HEADER} is not a number")))?;
    if len > body.len() {
        return Err(ApiError::bad(format!(
            "{BINARY_HEADER} is {len} but the body has {} bytes",
            body.len()
        )));
    }
    let binary = body.slice(len..);
    Ok((body.slice(..len), binary))
}

fn decode_inputs(
    specs: &[IoSpec],
    given: &[InputTensor],
    binary: Bytes,
) -> Result<Vec<Tensor>, ApiError> {
    let mut slots: Vec<Option<Tensor>> = vec![None; specs.len()];
    let mut cursor = 0usize;
    for input in given {
        let index = specs
            .iter()
            .position(|s| s.name == input.name)
            .ok_or_else(|| {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                ApiError::bad(format!(
                    "unknown input {:?}; the model takes {names:?}",
                    input.name
                ))
            })?;
        let spec = &specs[index];
        let dt = DataType::parse(&input.datatype).ok_or_else(|| {
            ApiError::bad(format!(
                "input {:?}: unsupported datatype {:?}",
                input.name, input.datatype
            ))
        })?;
        if dt != spec.dt {
            return Err(ApiError::bad(format!(
                "input {:?} must be {}, got {dt}",
                input.name, spec.dt
            )));
        }
        let shape: Vec<usize> = input
            .shape
            .iter()
            .map(|d| usize::try_from(*d))
            .collect::<Result<_, _>>()
            .map_err(|_| ApiError::bad(format!("input {:?}: negative dimension", input.name)))?;
        if !spec.accepts_shape(&shape) {
            return Err(ApiError::bad(format!(
                "input {:?} has shape {shape:?}, the model expects {:?}",
                input.name, spec.shape
            )));
        }
        let tensor = match input.parameters.get("binary_data_size") {
            Some(size) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| ApiError::bad("binary_data_size must be a byte count"))?;
                let end = cursor
                    .checked_add(size)
                    .filter(|end| *end <= binary.len())
                    .ok_or_else(|| {
                        ApiError::bad(format!(
                            "input {:?}: binary_data_size {size} overruns the {} binary bytes",
                            input.name,
                            binary.len()
                        ))
                    })?;
                let bytes = binary.slice(cursor..end);
                cursor = end;
                Tensor::from_bytes(dt, shape, bytes)
            }
            None => {
                let data = input.data.as_ref().ok_or_else(|| {
                    ApiError::bad(format!(
                        "input {:?} has neither data nor binary_data_size",
                        input.name
                    ))
                })?;
                Tensor::from_json(dt, shape, data)
            }
        }
        .map_err(|e| ApiError::bad(format!("input {:?}: {e}", input.name)))?;
        if slots[index].replace(tensor).is_some() {
            return Err(ApiError::bad(format!("input {:?} given twice", input.name)));
        }
    }
    if cursor != binary.len() {
        return Err(ApiError::bad(format!(
            "{} binary bytes are not claimed by any input",
            binary.len() - cursor
        )));
    }
    slots
        .into_iter()
        .zip(specs)
        .map(|(slot, spec)| {
            slot.ok_or_else(|| ApiError::bad(format!("missing input {:?}", spec.name)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Model;
    use axum::http::Request;
    use edgefleet_crds::wire::{Assignment, Role};
    use edgefleet_crds::{Artifact, ModelRef, Precision, Runtime};
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
            metrics: Arc::new(Metrics::new()),
            stats: Arc::new(WindowStats::new(0)),
            ready: AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(2)),
            test: TestKnobs::default(),
            max_body_bytes: 4096,
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
            let (status, _, body) =
                call(&s, post_json("/v2/models/double/infer", req.clone())).await;
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
}
