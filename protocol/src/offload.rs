//! Edge–cloud collaboration: requests a device cannot answer well (low confidence), in time
//! (queue full, latency or time-to-first-token budget) or at all (a prompt over the language
//! model's context) go to a larger model behind a KServe v2 / Open Inference Protocol endpoint
//! or, for language models, an OpenAI-compatible one; when the cloud does not answer, the
//! device answers with its own result.

use serde::{Deserialize, Serialize};

/// `spec.offload`: where hard or overflow requests go, when, and how often.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OffloadPolicy {
    /// Offloading sends a request's inputs off the device, so it must be consented to
    /// explicitly: only `true` is accepted, and without this block nothing leaves the device.
    #[cfg_attr(feature = "schemars", schemars(extend("enum" = [true])))]
    pub inputs_may_leave_device: bool,
    pub endpoint: OffloadEndpoint,
    pub triggers: OffloadTriggers,
    #[serde(default)]
    pub rate_limit: OffloadRateLimit,
    /// A cloud answer slower than this is abandoned for the local result.
    #[serde(default = "default_timeout_ms")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1, max = 60000)))]
    pub timeout_ms: u32,
}

fn default_timeout_ms() -> u32 {
    1000
}

/// The cloud server. `kserve-v2` (tensor models): requests go to
/// `{url}/v2/models/{model}/infer` with the device's request body unchanged. `openai`
/// (language models, `format: gguf`): chat and text completions go to
/// `{url}/v1/chat/completions` and `{url}/v1/completions` with `model` set to `model`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OffloadEndpoint {
    /// Base URL, e.g. `http://cloud-inference.example:8080`.
    #[cfg_attr(
        feature = "schemars",
        schemars(length(min = 1, max = 2048), pattern(r"^https?://[^\s]+$"))
    )]
    pub url: String,
    /// The model's name on that server.
    #[cfg_attr(
        feature = "schemars",
        schemars(
            length(min = 1, max = 253),
            pattern(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
        )
    )]
    pub model: String,
    #[serde(default)]
    pub protocol: OffloadProtocol,
}

/// The API the cloud endpoint speaks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum OffloadProtocol {
    /// KServe v2 / Open Inference Protocol `infer`, for tensor models.
    #[default]
    #[serde(rename = "kserve-v2")]
    KserveV2,
    /// OpenAI's chat and text completions (streamed), for language models.
    #[serde(rename = "openai")]
    OpenAi,
}

impl OffloadProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OffloadProtocol::KserveV2 => "kserve-v2",
            OffloadProtocol::OpenAi => "openai",
        }
    }
}

/// When a request goes to the cloud; any one trigger suffices.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OffloadTriggers {
    /// After the local run: the top class score of a classifier output is below a threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence_below: Option<ConfidenceTrigger>,
    /// Before the local run: more than this many requests already run or wait locally, so
    /// this one goes to the cloud instead of joining the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schemars", schemars(range(max = 100000)))]
    pub queue_depth_above: Option<u32>,
    /// Before the local run: the expected local latency (the queue ahead of this request and
    /// the model's recent run time) exceeds this budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1, max = 600000)))]
    pub latency_budget_ms: Option<u32>,
    /// Language models, before the local run: the expected time to the first token (the
    /// sequences ahead of this request and the model's recent prompt processing) exceeds
    /// this budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1, max = 600000)))]
    pub ttft_budget_ms: Option<u32>,
    /// Language models: a prompt (plus `max_tokens`) longer than the device's context goes
    /// to the cloud instead of being refused. The device cannot answer it itself, so when
    /// the cloud fails too the answer is the device's `context_length_exceeded` error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub context_exceeded: bool,
}

impl OffloadTriggers {
    pub fn is_empty(&self) -> bool {
        self.confidence_below.is_none()
            && self.queue_depth_above.is_none()
            && self.latency_budget_ms.is_none()
            && self.ttft_budget_ms.is_none()
            && !self.context_exceeded
    }
}

/// Confidence is the largest class probability of `output` (per batch row; the least
/// confident row counts).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfidenceTrigger {
    #[cfg_attr(feature = "schemars", schemars(range(min = 0.0, max = 1.0)))]
    pub threshold: f64,
    /// Name of the classifier output, as the model declares it.
    #[cfg_attr(feature = "schemars", schemars(length(min = 1, max = 256)))]
    pub output: String,
    /// Whether `output` holds probabilities or logits (softmax is applied to the latter).
    #[serde(default)]
    pub scores: ScoreKind,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ScoreKind {
    #[default]
    Probabilities,
    Logits,
}

/// A token bucket per device: over the limit, requests are answered locally.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OffloadRateLimit {
    /// Sustained offloads per second.
    #[cfg_attr(feature = "schemars", schemars(range(min = 0.0, max = 100000.0)))]
    pub requests_per_second: f64,
    /// Offloads allowed at once after a quiet period (the bucket's size).
    #[serde(default = "default_burst")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1, max = 100000)))]
    pub burst: u32,
}

impl Default for OffloadRateLimit {
    fn default() -> Self {
        Self {
            requests_per_second: 10.0,
            burst: default_burst(),
        }
    }
}

fn default_burst() -> u32 {
    10
}
