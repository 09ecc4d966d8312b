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
use crate::offload::{self, CloudRequest, Marker, OffloadOutcome, OffloadRuntime};
use crate::registry::{Registry, Served};
use crate::repository::{self, InstallStates};
use crate::runtime::IoSpec;
use crate::telemetry::WindowStats;
use crate::tensor::{DataType, Tensor};

pub const BINARY_HEADER: &str = "inference-header-content-length";

pub struct ApiInner {
    pub registry: Arc<Registry>,
    /// Install phases of the applied desired document (for the repository index).
    pub install_states: Arc<InstallStates>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<WindowStats>,
    /// Set once the models persisted from the last run are serving again.
    pub ready: AtomicBool,
    /// Bounds concurrent inferences (the blocking pool would grow otherwise).
    pub permits: Arc<Semaphore>,
    pub test: TestKnobs,
    pub max_body_bytes: usize,
    /// Local queue, rate limits and the cloud client of deployments with an offload policy.
    pub offload: OffloadRuntime,
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
        .route("/v2/repository/index", post(repository_index))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A 4xx/5xx answer with the protocol's `{"error": ...}` body.
#[derive(Debug)]
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl ApiError {
    pub(crate) fn bad(msg: impl Into<String>) -> ApiError {
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
    let mut metadata = json!({
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
    });
    if let Some(policy) = &a.offload {
        metadata["offload"] = json!(policy);
    }
    Ok(axum::Json(metadata))
}

async fn model_ready(State(s): State<ApiState>, Path(name): Path<String>) -> StatusCode {
    if s.registry.get(&name).is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

/// The repository extension's index request; an empty body asks for every model.
#[derive(Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(
    State(s): State<ApiState>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let request: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("invalid repository index request: {e}")))?
    };
    let served = s.registry.all();
    let wanted = s.install_states.snapshot();
    Ok(axum::Json(repository::index(
        &served,
        &wanted,
        request.ready,
    )))
}

#[derive(Deserialize)]
pub(crate) struct InferRequest {
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
    let offloaded = match &result {
        Ok(response) => response.extensions().get::<OffloadOutcome>().copied(),
        Err(_) => None,
    };
    s.stats
        .record_with_offload(&a.deployment, &a.variant, seconds, failed, offloaded);
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
    let inputs = decode_inputs(served.model.inputs(), &request.inputs, binary.clone())?;
    // A request another agent offloaded here is answered here: two agents that offload to
    // each other must not bounce a request between them.
    let forwarded = headers.contains_key(offload::FORWARDED_HEADER);
    let policy = served.assignment.offload.as_ref();
    match policy.filter(|p| p.inputs_may_leave_device && !forwarded) {
        Some(policy) => {
            let cloud = CloudRequest {
                json: json_part,
                binary,
            };
            offload::infer(s, served, policy, &request, used_binary, inputs, cloud).await
        }
        None => {
            let outputs = run_local(s, served, inputs).await?;
            render(&request, served, &outputs, used_binary, None)
        }
    }
}

/// Runs the model on the blocking pool, within the inference slots.
pub(crate) async fn run_local(
    s: &ApiState,
    served: &Arc<Served>,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, ApiError> {
    let _queued = s.offload.enter_queue();
    let permit = s
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
    let model = served.model.clone();
    let (outputs, run_seconds) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let started = Instant::now();
        let outputs = model.run(inputs);
        (outputs, started.elapsed().as_secs_f64())
    })
    .await
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference task: {e}"),
        )
    })?;
    if served.assignment.offload.is_some() {
        s.offload
            .observe_run(&served.assignment.deployment, run_seconds);
    }
    outputs.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference failed: {e:#}"),
        )
    })
}

/// The protocol's response for `outputs`; `marker` says where the answer came from.
pub(crate) fn render(
    request: &InferRequest,
    served: &Served,
    outputs: &[Tensor],
    used_binary: bool,
    marker: Option<Marker>,
) -> Result<Response, ApiError> {
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
    if let Some(id) = &request.id {
        response["id"] = id.clone();
    }
    if let Some(marker) = marker {
        marker.annotate(&mut response);
    }
    let mut response = assemble(&response, &blobs)?;
    if let Some(marker) = marker {
        marker.set_header(response.headers_mut());
    }
    Ok(response)
}

/// A JSON body, or with binary tensors the JSON header followed by the blobs.
pub(crate) fn assemble(header: &Value, blobs: &[Bytes]) -> Result<Response, ApiError> {
    let header_bytes = serde_json::to_vec(header)
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
    for blob in blobs {
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
mod tests;
