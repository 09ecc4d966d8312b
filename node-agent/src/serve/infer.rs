//! `POST /v2/models/{name}/infer`: decode the request (JSON or binary tensors), run the model
//! on the blocking pool, encode the answer, and record latency for telemetry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::codec::{InferRequest, decode_inputs, render, split_binary};
use super::{ApiError, ApiState, lookup, offloaded, run_local};
use crate::offload::{self, CloudRequest, OffloadOutcome};
use crate::registry::Served;

pub(super) async fn infer(
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
            let answering = offloaded::Answering {
                state: s,
                served,
                request: &request,
                used_binary,
            };
            offloaded::infer(answering, policy, inputs, cloud).await
        }
        None => {
            let outputs = run_local(s, served, inputs).await?;
            render(&request, served, &outputs, used_binary, None)
        }
    }
}
