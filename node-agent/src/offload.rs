//! Edge–cloud collaboration on the device (`spec.offload`): every request is answered, locally
//! or by the deployment's cloud endpoint (a KServe v2 / Open Inference Protocol server).
//!
//! Per request:
//! 1. before the local run, a full local queue (`queueDepthAbove`) or an expected local latency
//!    over `latencyBudgetMs` sends the request to the cloud without running it locally;
//! 2. after the local run, a top class probability of the named output below
//!    `confidenceBelow.threshold` sends the same request to the cloud;
//! 3. a trigger only offloads while the per-device token bucket has a token; otherwise the
//!    local result stands;
//! 4. a cloud failure, error status or timeout answers with the local result (running the
//!    model then, if step 1 had skipped it): the request is never lost.
//!
//! The answer says where it came from: `parameters["edgefleet.source"]` (`local`, `cloud` or
//! `local-fallback`) and the `edgefleet-source` header. The decisions are pure functions below;
//! [`OffloadRuntime`] and [`infer`] are the I/O around them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use edgefleet_crds::{
    ConfidenceTrigger, OffloadPolicy, OffloadRateLimit, OffloadTriggers, ScoreKind,
};

use crate::api::{self, ApiError, ApiState, BINARY_HEADER, InferRequest};
use crate::registry::Served;
use crate::tensor::Tensor;

pub const SOURCE_HEADER: &str = "edgefleet-source";
/// Set on forwarded requests; an agent receiving one never offloads it again.
pub const FORWARDED_HEADER: &str = "edgefleet-offloaded";
pub const SOURCE_PARAMETER: &str = "edgefleet.source";
pub const TRIGGER_PARAMETER: &str = "edgefleet.offload_trigger";
pub const RATE_LIMITED_PARAMETER: &str = "edgefleet.offload_rate_limited";

/// Weight of the newest local run in the recent run time (an exponential moving average).
const RUN_TIME_WEIGHT: f64 = 0.2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Confidence,
    QueueDepth,
    LatencyBudget,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Confidence => "confidence",
            Trigger::QueueDepth => "queue_depth",
            Trigger::LatencyBudget => "latency_budget",
        }
    }
}

/// Who answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Local,
    Cloud,
    /// A trigger fired but the cloud did not answer: the device's own result.
    LocalFallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Cloud => "cloud",
            Source::LocalFallback => "local-fallback",
        }
    }
}

/// What the device knows about its local queue when a request arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LocalLoad {
    /// Requests running or waiting for a local inference slot, not counting this one.
    pub ahead: usize,
    /// Local inference slots (`inferenceThreads`).
    pub slots: usize,
    /// The model's recent local run time, once it has run.
    pub recent_run_seconds: Option<f64>,
}

impl LocalLoad {
    /// Time until this request's local result: the waves of requests ahead of it, then its own.
    pub fn expected_seconds(&self) -> Option<f64> {
        let run = self.recent_run_seconds?;
        let waves = self.ahead / self.slots.max(1) + 1;
        Some(run * waves as f64)
    }
}

/// Before the local run: a full queue, or a latency budget the local path would miss.
pub fn trigger_before_local(triggers: &OffloadTriggers, load: &LocalLoad) -> Option<Trigger> {
    if let Some(depth) = triggers.queue_depth_above
        && load.ahead > depth as usize
    {
        return Some(Trigger::QueueDepth);
    }
    if let (Some(budget_ms), Some(expected)) = (triggers.latency_budget_ms, load.expected_seconds())
        && expected * 1000.0 > f64::from(budget_ms)
    {
        return Some(Trigger::LatencyBudget);
    }
    None
}

/// After the local run: the classifier was not confident enough.
pub fn trigger_after_local(triggers: &OffloadTriggers, confidence: Option<f64>) -> Option<Trigger> {
    match (&triggers.confidence_below, confidence) {
        (Some(trigger), Some(confidence)) if confidence < trigger.threshold => {
            Some(Trigger::Confidence)
        }
        _ => None,
    }
}

/// A classifier output's confidence: per row (the last axis holds the classes) the largest
/// class probability, and of the rows the least confident. A row of one score is a binary
/// probability `p` (or its logit), whose confidence is `max(p, 1 - p)`. `None` for an empty
/// output, a shape that does not divide it, or a score that is not finite.
pub fn confidence(scores: &[f64], shape: &[usize], kind: ScoreKind) -> Option<f64> {
    let classes = shape.last().copied().unwrap_or(1);
    if scores.is_empty() || classes == 0 || !scores.len().is_multiple_of(classes) {
        return None;
    }
    if scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    scores
        .chunks(classes)
        .map(|row| row_confidence(row, kind))
        .reduce(f64::min)
}

fn row_confidence(row: &[f64], kind: ScoreKind) -> f64 {
    match (row, kind) {
        ([p], ScoreKind::Probabilities) => p.max(1.0 - p),
        ([logit], ScoreKind::Logits) => {
            let p = 1.0 / (1.0 + (-logit).exp());
            p.max(1.0 - p)
        }
        (_, ScoreKind::Probabilities) => row.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        (_, ScoreKind::Logits) => {
            // max softmax = exp(max - max) / sum(exp(x - max))
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            1.0 / row.iter().map(|x| (x - max).exp()).sum::<f64>()
        }
    }
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

/// A token bucket: `rate` tokens a second up to `capacity`; one token per offload.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: &OffloadRateLimit, now: Instant) -> TokenBucket {
        let capacity = f64::from(limit.burst.max(1));
        TokenBucket {
            rate: limit.requests_per_second.max(0.0),
            capacity,
            tokens: capacity,
            refilled: now,
        }
    }

    fn limits(&self, limit: &OffloadRateLimit) -> bool {
        self.rate == limit.requests_per_second.max(0.0)
            && self.capacity == f64::from(limit.burst.max(1))
    }

    /// Takes a token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.refilled = self.refilled.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How an answer is marked: its source, and the trigger that fired (if one did).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub source: Source,
    pub trigger: Option<Trigger>,
    /// A trigger fired but the rate limit kept the request local.
    pub rate_limited: bool,
}

impl Marker {
    fn local() -> Marker {
        Marker {
            source: Source::Local,
            trigger: None,
            rate_limited: false,
        }
    }

    /// Adds the marker to a response's `parameters` (keeping any the server set).
    pub fn annotate(&self, response: &mut Value) {
        let Some(object) = response.as_object_mut() else {
            return;
        };
        let parameters = object.entry("parameters").or_insert_with(|| json!({}));
        if !parameters.is_object() {
            *parameters = json!({});
        }
        if let Some(parameters) = parameters.as_object_mut() {
            parameters.insert(SOURCE_PARAMETER.into(), json!(self.source.as_str()));
            if let Some(trigger) = self.trigger {
                parameters.insert(TRIGGER_PARAMETER.into(), json!(trigger.as_str()));
            }
            if self.rate_limited {
                parameters.insert(RATE_LIMITED_PARAMETER.into(), json!(true));
            }
        }
    }

    pub fn set_header(&self, headers: &mut HeaderMap) {
        headers.insert(
            SOURCE_HEADER,
            HeaderValue::from_static(self.source.as_str()),
        );
    }
}

/// Attached to a response (as an extension) when the cloud was tried, for telemetry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OffloadOutcome {
    pub cloud_seconds: f64,
    pub fallback: bool,
}

/// The request as the client sent it, forwarded unchanged.
pub struct CloudRequest {
    pub json: Bytes,
    pub binary: Bytes,
}

/// A cloud endpoint's successful answer: its JSON header and binary tensor bytes.
#[derive(Debug)]
pub struct CloudAnswer {
    pub header: Value,
    pub binary: Bytes,
}

struct DeploymentState {
    bucket: TokenBucket,
    recent_run_seconds: Option<f64>,
}

/// The device-wide side of offloading: the local queue, per-deployment rate limits and run
/// times, and the HTTP client for cloud endpoints.
pub struct OffloadRuntime {
    http: reqwest::Client,
    slots: usize,
    queued: Arc<AtomicUsize>,
    deployments: Mutex<HashMap<String, DeploymentState>>,
}

/// Counts a request in the local queue while it lives.
pub struct QueueGuard(Arc<AtomicUsize>);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OffloadRuntime {
    /// `slots`: how many local inferences run at once.
    pub fn new(slots: usize) -> anyhow::Result<OffloadRuntime> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()?;
        Ok(OffloadRuntime {
            http,
            slots: slots.max(1),
            queued: Arc::default(),
            deployments: Mutex::default(),
        })
    }

    pub fn enter_queue(&self) -> QueueGuard {
        self.queued.fetch_add(1, Ordering::AcqRel);
        QueueGuard(self.queued.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DeploymentState>> {
        self.deployments.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state<'a>(
        map: &'a mut HashMap<String, DeploymentState>,
        deployment: &str,
        limit: &OffloadRateLimit,
        now: Instant,
    ) -> &'a mut DeploymentState {
        let state = map
            .entry(deployment.to_string())
            .or_insert_with(|| DeploymentState {
                bucket: TokenBucket::new(limit, now),
                recent_run_seconds: None,
            });
        if !state.bucket.limits(limit) {
            state.bucket = TokenBucket::new(limit, now);
        }
        state
    }

    pub fn load(&self, deployment: &str) -> LocalLoad {
        LocalLoad {
            ahead: self.queued.load(Ordering::Acquire),
            slots: self.slots,
            recent_run_seconds: self
                .lock()
                .get(deployment)
                .and_then(|s| s.recent_run_seconds),
        }
    }

    pub fn observe_run(&self, deployment: &str, seconds: f64) {
        let mut map = self.lock();
        let state = map
            .entry(deployment.to_string())
            .or_insert_with(|| DeploymentState {
                bucket: TokenBucket::new(&OffloadRateLimit::default(), Instant::now()),
                recent_run_seconds: None,
            });
        state.recent_run_seconds = Some(match state.recent_run_seconds {
            Some(recent) => recent + RUN_TIME_WEIGHT * (seconds - recent),
            None => seconds,
        });
    }

    /// Takes a token from the deployment's bucket.
    pub fn allow(&self, deployment: &str, limit: &OffloadRateLimit) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        Self::state(&mut map, deployment, limit, now)
            .bucket
            .try_take(now)
    }

    /// Sends the request to the policy's endpoint within its timeout.
    pub async fn forward(
        &self,
        policy: &OffloadPolicy,
        request: &CloudRequest,
    ) -> Result<CloudAnswer, String> {
        let url = format!(
            "{}/v2/models/{}/infer",
            policy.endpoint.url.trim_end_matches('/'),
            policy.endpoint.model
        );
        let builder = self
            .http
            .post(&url)
            .header(FORWARDED_HEADER, "1")
            .timeout(Duration::from_millis(u64::from(policy.timeout_ms)));
        let builder = if request.binary.is_empty() {
            builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(request.json.clone())
        } else {
            let mut body = Vec::with_capacity(request.json.len() + request.binary.len());
            body.extend_from_slice(&request.json);
            body.extend_from_slice(&request.binary);
            builder
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(BINARY_HEADER, request.json.len())
                .body(body)
        };
        let response = builder.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let header_len = response
            .headers()
            .get(BINARY_HEADER)
            .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()));
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{url}: reading the answer: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("{url} answered {status}: {text}"));
        }
        let (json_part, binary) = match header_len {
            None => (body, Bytes::new()),
            Some(Some(len)) if len <= body.len() => (body.slice(..len), body.slice(len..)),
            Some(_) => return Err(format!("{url}: bad {BINARY_HEADER} in the answer")),
        };
        let header: Value = serde_json::from_slice(&json_part)
            .map_err(|e| format!("{url}: the answer is not JSON: {e}"))?;
        if !header.get("outputs").is_some_and(Value::is_array) {
            return Err(format!("{url}: the answer has no outputs"));
        }
        Ok(CloudAnswer { header, binary })
    }
}

/// Serves one request of a deployment with an offload policy (see the module docs).
pub(crate) async fn infer(
    s: &ApiState,
    served: &Arc<Served>,
    policy: &OffloadPolicy,
    request: &InferRequest,
    used_binary: bool,
    inputs: Vec<Tensor>,
    cloud: CloudRequest,
) -> Result<Response, ApiError> {
    let deployment = &served.assignment.deployment;
    let load = s.offload.load(deployment);
    let mut skipped = None;
    if let Some(trigger) = trigger_before_local(&policy.triggers, &load) {
        if s.offload.allow(deployment, &policy.rate_limit) {
            let (answer, outcome) = try_cloud(s, served, policy, &cloud, trigger).await;
            if let Some(answer) = answer {
                return cloud_response(answer, trigger, outcome);
            }
            let outputs = api::run_local(s, served, inputs).await?;
            let marker = Marker {
                source: Source::LocalFallback,
                trigger: Some(trigger),
                rate_limited: false,
            };
            return local_response(
                request,
                served,
                &outputs,
                used_binary,
                marker,
                Some(outcome),
            );
        }
        skipped = Some(trigger);
        count(s, served, trigger, "rate_limited");
    }

    let outputs = api::run_local(s, served, inputs).await?;
    let confidence = policy
        .triggers
        .confidence_below
        .as_ref()
        .and_then(|trigger| output_confidence(served, &outputs, trigger));
    if let Some(trigger) = trigger_after_local(&policy.triggers, confidence) {
        if s.offload.allow(deployment, &policy.rate_limit) {
            let (answer, outcome) = try_cloud(s, served, policy, &cloud, trigger).await;
            if let Some(answer) = answer {
                return cloud_response(answer, trigger, outcome);
            }
            let marker = Marker {
                source: Source::LocalFallback,
                trigger: Some(trigger),
                rate_limited: false,
            };
            return local_response(
                request,
                served,
                &outputs,
                used_binary,
                marker,
                Some(outcome),
            );
        }
        skipped = Some(trigger);
        count(s, served, trigger, "rate_limited");
    }
    let marker = Marker {
        trigger: skipped,
        rate_limited: skipped.is_some(),
        ..Marker::local()
    };
    local_response(request, served, &outputs, used_binary, marker, None)
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

fn count(s: &ApiState, served: &Served, trigger: Trigger, result: &str) {
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
    request: &InferRequest,
    served: &Served,
    outputs: &[Tensor],
    used_binary: bool,
    marker: Marker,
    outcome: Option<OffloadOutcome>,
) -> Result<Response, ApiError> {
    let mut response = api::render(request, served, outputs, used_binary, Some(marker))?;
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
    let mut response = api::assemble(&answer.header, blobs).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("re-encoding the cloud answer: {}", e.1),
        )
    })?;
    marker.set_header(response.headers_mut());
    response.extensions_mut().insert(outcome);
    Ok(response)
}

#[cfg(test)]
mod tests;
