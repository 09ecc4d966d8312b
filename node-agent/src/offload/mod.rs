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
//! `local-fallback`) and the `edgefleet-source` header. The decisions are pure functions here;
//! [`client`] holds the device-wide state and the cloud client, and the local API's
//! `serve::offloaded` applies both to a request.

pub mod client;
pub mod openai;

pub use client::{OffloadRuntime, QueueGuard};

use std::time::Instant;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use edgefleet_protocol::{OffloadRateLimit, OffloadTriggers, ScoreKind};

pub const SOURCE_HEADER: &str = "edgefleet-source";
/// Set on forwarded requests; an agent receiving one never offloads it again.
pub const FORWARDED_HEADER: &str = "edgefleet-offloaded";
pub const SOURCE_PARAMETER: &str = "edgefleet.source";
pub const TRIGGER_PARAMETER: &str = "edgefleet.offload_trigger";
pub const RATE_LIMITED_PARAMETER: &str = "edgefleet.offload_rate_limited";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Confidence,
    QueueDepth,
    LatencyBudget,
    TtftBudget,
    ContextExceeded,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Confidence => "confidence",
            Trigger::QueueDepth => "queue_depth",
            Trigger::LatencyBudget => "latency_budget",
            Trigger::TtftBudget => "ttft_budget",
            Trigger::ContextExceeded => "context_exceeded",
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

/// What the device knows about a language model's load when a request arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LlmLoad {
    /// Sequences generating or queued for this model, not counting this request.
    pub ahead: usize,
    /// Sequences the model generates at once.
    pub slots: usize,
    /// Recent time a request holds a slot (prompt processing and decoding).
    pub recent_generation_seconds: Option<f64>,
    /// Recent time from a slot taking a request to its first token.
    pub recent_prefill_seconds: Option<f64>,
}

impl LlmLoad {
    /// Time to this request's first token: a full generation for each wave of sequences that
    /// hold every slot ahead of it, then its own prompt processing. `None` until the model
    /// has answered once.
    pub fn expected_ttft_seconds(&self) -> Option<f64> {
        let prefill = self.recent_prefill_seconds?;
        let waves = self.ahead / self.slots.max(1);
        if waves == 0 {
            return Some(prefill);
        }
        Some(waves as f64 * self.recent_generation_seconds? + prefill)
    }
}

/// Language models, before the local run: a prompt the device's context cannot hold
/// (`fits_context` false, known only once the prompt is tokenized), a queue too deep, or a
/// first token expected later than the budget.
pub fn llm_trigger_before_local(
    triggers: &OffloadTriggers,
    load: &LlmLoad,
    fits_context: bool,
) -> Option<Trigger> {
    if !fits_context {
        return triggers
            .context_exceeded
            .then_some(Trigger::ContextExceeded);
    }
    if let Some(depth) = triggers.queue_depth_above
        && load.ahead > depth as usize
    {
        return Some(Trigger::QueueDepth);
    }
    if let (Some(budget_ms), Some(expected)) =
        (triggers.ttft_budget_ms, load.expected_ttft_seconds())
        && expected * 1000.0 > f64::from(budget_ms)
    {
        return Some(Trigger::TtftBudget);
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
    pub fn local() -> Marker {
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

#[cfg(test)]
pub(crate) mod tests;
