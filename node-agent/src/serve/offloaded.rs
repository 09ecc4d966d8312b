//! Inference for deployments with an offload policy (`spec.offload`, see `crate::offload`):
//! the local run, the cloud attempt when a trigger fires and the rate limit allows it, and the
//! local answer when the cloud does not come through, so a request is never lost.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;

use edgefleet_protocol::{ConfidenceTrigger, OffloadPolicy};

use super::codec::{InferRequest, assemble, render};
use super::{ApiError, ApiState, run_local};
use crate::offload::{
    CloudAnswer, CloudRequest, Marker, OffloadOutcome, Source, Trigger, confidence,
    trigger_after_local, trigger_before_local,
};
use crate::registry::Served;
use crate::tensor::Tensor;

/// The request being answered, and how its answer is encoded.
pub(super) struct Answering<'a> {
    pub state: &'a ApiState,
    pub served: &'a Arc<Served>,
    pub request: &'a InferRequest,
    pub used_binary: bool,
}

/// Where the local result stands when a trigger fires: not computed yet (a trigger before the
/// local run) or already computed (the confidence trigger after it).
enum LocalResult {
    NotRun(Vec<Tensor>),
    Ran(Vec<Tensor>),
}

/// Serves one request of a deployment with an offload policy (see `crate::offload`).
pub(super) async fn infer(
    a: Answering<'_>,
    policy: &OffloadPolicy,
    inputs: Vec<Tensor>,
    cloud: CloudRequest,
) -> Result<Response, ApiError> {
    let (s, served) = (a.state, a.served);
    let deployment = &served.assignment.deployment;
    let mut skipped = None;
    if let Some(trigger) = trigger_before_local(&policy.triggers, &s.offload.load(deployment)) {
        if s.offload.allow(deployment, &policy.rate_limit) {
            return cloud_else_local(&a, policy, &cloud, trigger, LocalResult::NotRun(inputs))
                .await;
        }
        skipped = Some(trigger);
        count(s, served, trigger, "rate_limited");
    }

    let outputs = run_local(s, served, inputs).await?;
    let confidence = policy
        .triggers
        .confidence_below
        .as_ref()
        .and_then(|trigger| output_confidence(served, &outputs, trigger));
    if let Some(trigger) = trigger_after_local(&policy.triggers, confidence) {
        if s.offload.allow(deployment, &policy.rate_limit) {
            return cloud_else_local(&a, policy, &cloud, trigger, LocalResult::Ran(outputs)).await;
        }
        skipped = Some(trigger);
        count(s, served, trigger, "rate_limited");
    }
    let marker = Marker {
        trigger: skipped,
        rate_limited: skipped.is_some(),
        ..Marker::local()
    };
    local_response(&a, &outputs, marker, None)
}

/// The cloud's answer or, when it does not come, the local one (running the model now if it
/// has not run yet), marked as a fallback.
async fn cloud_else_local(
    a: &Answering<'_>,
    policy: &OffloadPolicy,
    cloud: &CloudRequest,
    trigger: Trigger,
    local: LocalResult,
) -> Result<Response, ApiError> {
    let (answer, outcome) = try_cloud(a.state, a.served, policy, cloud, trigger).await;
    if let Some(answer) = answer {
        return cloud_response(answer, trigger, outcome);
    }
    let outputs = match local {
        LocalResult::NotRun(inputs) => run_local(a.state, a.served, inputs).await?,
        LocalResult::Ran(outputs) => outputs,
    };
    let marker = Marker {
        source: Source::LocalFallback,
        trigger: Some(trigger),
        rate_limited: false,
    };
    local_response(a, &outputs, marker, Some(outcome))
}

/// One cloud attempt, timed and counted; `None` when the cloud did not answer.
async fn try_cloud(
    s: &ApiState,
    served: &Served,
    policy: &OffloadPolicy,
    cloud: &CloudRequest,
    trigger: Trigger,
) -> (Option<CloudAnswer>, OffloadOutcome) {
    let started = Instant::now();
    let result = s.offload.forward(policy, cloud).await;
    let cloud_seconds = started.elapsed().as_secs_f64();
    let a = &served.assignment;
    s.metrics
        .cloud_latency
        .with_label_values(&[a.deployment.as_str(), a.variant.as_str()])
        .observe(cloud_seconds);
    match result {
        Ok(answer) => {
            count(s, served, trigger, "cloud");
            let outcome = OffloadOutcome {
                cloud_seconds,
                fallback: false,
            };
            (Some(answer), outcome)
        }
        Err(reason) => {
            tracing::warn!(deployment = %a.deployment, trigger = trigger.as_str(), %reason,
                "cloud endpoint did not answer; answering with the local result");
            count(s, served, trigger, "fallback");
            let outcome = OffloadOutcome {
                cloud_seconds,
                fallback: true,
            };
            (None, outcome)
        }
    }
}

pub(super) fn count(s: &ApiState, served: &Served, trigger: Trigger, result: &str) {
    let a = &served.assignment;
    s.metrics
        .offloads
        .with_label_values(&[
            a.deployment.as_str(),
            a.variant.as_str(),
            trigger.as_str(),
            result,
        ])
        .inc();
}

fn local_response(
    a: &Answering<'_>,
    outputs: &[Tensor],
    marker: Marker,
    outcome: Option<OffloadOutcome>,
) -> Result<Response, ApiError> {
    let mut response = render(a.request, a.served, outputs, a.used_binary, Some(marker))?;
    if let Some(outcome) = outcome {
        response.extensions_mut().insert(outcome);
    }
    Ok(response)
}

fn cloud_response(
    mut answer: CloudAnswer,
    trigger: Trigger,
    outcome: OffloadOutcome,
) -> Result<Response, ApiError> {
    let marker = Marker {
        source: Source::Cloud,
        trigger: Some(trigger),
        rate_limited: false,
    };
    marker.annotate(&mut answer.header);
    let blobs: &[Bytes] = if answer.binary.is_empty() {
        &[]
    } else {
        std::slice::from_ref(&answer.binary)
    };
    let mut response = assemble(&answer.header, blobs).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("re-encoding the cloud answer: {}", e.1),
        )
    })?;
    marker.set_header(response.headers_mut());
    response.extensions_mut().insert(outcome);
    Ok(response)
}

/// The confidence of the output a trigger names, from a local run's outputs.
fn output_confidence(
    served: &Served,
    outputs: &[Tensor],
    trigger: &ConfidenceTrigger,
) -> Option<f64> {
    let index = served
        .model
        .outputs()
        .iter()
        .position(|spec| spec.name == trigger.output)?;
    let tensor = outputs.get(index)?;
    confidence(&tensor.to_f64(), &tensor.shape, trigger.scores)
}

#[cfg(test)]
mod tests;
