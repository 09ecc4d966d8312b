//! The local inference API: KServe v2 / Open Inference Protocol over HTTP/1.1, with JSON
//! tensors and Triton's binary tensor extension, plus `/metrics`. This file holds the state,
//! the router and the metadata endpoints; [`infer`] answers inference requests,
//! [`offloaded`] those of deployments with an offload policy, and `openai` the language
//! models' OpenAI-compatible routes.

mod codec;
mod infer;
mod offloaded;
mod openai;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::config::TestKnobs;
use crate::install::repository::{self, InstallStates};
use crate::link::window::WindowStats;
use crate::metrics::Metrics;
use crate::offload::OffloadRuntime;
use crate::registry::{Registry, Served};
use crate::runtime::IoSpec;
pub use crate::tensor::BINARY_HEADER;
use crate::tensor::Tensor;

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
    openai::routes(Router::new())
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer::infer))
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

pub(super) fn lookup(s: &ApiState, name: &str) -> Result<Arc<Served>, ApiError> {
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
        "platform": served.model.platform(),
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
    if let Some(model) = served.model.language_model() {
        let info = model.info();
        metadata["llm"] = json!({
            "architecture": info.architecture,
            "contextTokens": info.context_tokens,
            "slots": info.slots,
            "queue": info.queue,
            "free": info.free,
        });
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

/// Runs the model on the blocking pool, within the inference slots.
async fn run_local(
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

#[cfg(test)]
mod tests;
