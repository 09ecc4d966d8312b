//! `ModelDeployment` (edgefleet.io/v1alpha1): which model runs on which devices, in which
//! compression variants, and how a new version rolls out.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use edgefleet_protocol::offload::OffloadPolicy;
pub use edgefleet_protocol::spec::{
    Artifact, ModelRef, Precision, Runtime, SelfTest, SelfTestInput, TensorDatatype,
};

/// Desired state: a model, the devices it targets, its variants and the rollout policy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "edgefleet.io",
    version = "v1alpha1",
    kind = "ModelDeployment",
    plural = "modeldeployments",
    shortname = "md",
    namespaced,
    status = "ModelDeploymentStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.currentStep"}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","jsonPath":".status.devices.matched"}"#,
    printcolumn = r#"{"name":"Updated","type":"integer","jsonPath":".status.devices.updated"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.devices.ready"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.devices.failed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelDeploymentSpec {
    pub model: ModelRef,
    /// Devices whose labels match; an empty selector matches every device.
    #[serde(default)]
    pub selector: DeviceSelector,
    /// Compression variants of the same model; each device gets the best one it can run.
    #[schemars(length(min = 1, max = 32))]
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub selection: SelectionPolicy,
    #[serde(default)]
    pub rollout: RolloutSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
    /// Input the agent runs through a new model before it reports Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_test: Option<SelfTest>,
    /// Send hard or overflow requests to a cloud model (off unless given, see `OffloadPolicy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<OffloadPolicy>,
    /// How devices serve a language model (variants with `format: gguf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmServing>,
}

/// Serving settings of a language model; they decide how much memory each variant needs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LlmServing {
    /// Context length (prompt + completion) every device must hold per sequence.
    #[serde(default = "default_context_tokens")]
    #[schemars(range(min = 64, max = 131072))]
    pub context_tokens: u32,
    /// Sequences generated at once; each holds a KV cache of `contextTokens`.
    #[serde(default = "default_llm_slots")]
    #[schemars(range(min = 1, max = 16))]
    pub slots: u32,
}

impl Default for LlmServing {
    fn default() -> Self {
        Self {
            context_tokens: default_context_tokens(),
            slots: default_llm_slots(),
        }
    }
}

fn default_context_tokens() -> u32 {
    2048
}

fn default_llm_slots() -> u32 {
    1
}

/// A GGUF variant's quantization and the shape its memory need is computed from (what
/// `edgefleet compress` or `gguf-dump` reads from the file's header).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GgufVariant {
    /// llama.cpp's name for it: `Q8_0`, `Q4_K_M`, `Q4_0`, `F16`, …
    #[schemars(length(min = 1, max = 32))]
    pub quantization: String,
    #[schemars(range(min = 1))]
    pub layers: u64,
    #[schemars(range(min = 1))]
    pub embedding_length: u64,
    #[schemars(range(min = 1))]
    pub heads: u64,
    #[schemars(range(min = 1))]
    pub kv_heads: u64,
}

/// A Kubernetes-style label selector over the labels devices announce.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    #[schemars(length(min = 1))]
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Variant {
    /// Unique within the deployment, e.g. `fp32`, `int8`.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    pub artifact: Artifact,
    #[serde(default)]
    pub format: ModelFormat,
    pub precision: Precision,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub requires: Requirements,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// Required for `format: gguf`: the quantization and the model's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf: Option<GgufVariant>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    #[default]
    Onnx,
    /// A llama.cpp language model; needs `runtime: llamacpp` and a `gguf` block.
    Gguf,
}

/// What a device must have to run a variant. Empty lists mean "no constraint".
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirements {
    /// CPU architectures as Rust names them: `x86_64`, `aarch64`, `arm`, `riscv64`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch: Vec<String>,
    #[serde(default)]
    pub min_memory_mib: u64,
    #[serde(default)]
    pub min_free_disk_mib: u64,
    /// All of these must be present, e.g. `avx2`, `fma`, `neon`, `dotprod`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_features: Vec<String>,
    /// All of these must be present, e.g. `nvidia`, `dri`, `coral`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accelerators: Vec<String>,
}

/// Measured quality of a variant relative to the reference (usually fp32) variant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quality {
    /// Fraction of accuracy lost against the reference, 0 = identical (e.g. 1 - top-1 agreement).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub accuracy_drift: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_hint_ms: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preference {
    /// Least drift first: the largest variant that fits.
    #[default]
    Accuracy,
    /// Fastest measured (or expected) latency first.
    Latency,
    /// Smallest artifact first.
    Size,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectionPolicy {
    #[serde(default)]
    pub prefer: Preference,
    /// Variants whose accuracy (1 - accuracyDrift) is below this are never chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_accuracy: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// Canary steps as cumulative percentages of matched devices; 100 is implied at the end.
    #[serde(default = "default_steps")]
    #[schemars(length(max = 20))]
    pub steps: Vec<CanaryStep>,
    #[serde(default)]
    pub analysis: Analysis,
    /// Percentage of matched devices that may be switching models at once.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1, max = 100))]
    pub max_unavailable_percent: u32,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            analysis: Analysis::default(),
            max_unavailable_percent: default_max_unavailable(),
        }
    }
}

fn default_steps() -> Vec<CanaryStep> {
    vec![
        CanaryStep {
            percent: 10,
            pause_seconds: 0,
        },
        CanaryStep {
            percent: 50,
            pause_seconds: 0,
        },
    ]
}

fn default_max_unavailable() -> u32 {
    25
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryStep {
    #[schemars(range(min = 1, max = 100))]
    pub percent: u32,
    /// Minimum time the step is held after its devices are ready, before analysis may advance it.
    #[serde(default)]
    #[schemars(range(max = 86400))]
    pub pause_seconds: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailureAction {
    /// Return every device of the deployment to the previous version.
    #[default]
    Rollback,
    /// Move only the failing cohort to its next-best variant (or, when none is left, keep it
    /// on the previous version, after promotion too); the rest go on.
    Demote,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Analysis {
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: u32,
    /// Inferences a cohort must report before its verdict counts. A canary cohort also waits
    /// (Pending, up to the step timeout) until the online stable devices of its class have
    /// reported as many, so that it is compared with them and not passed on thresholds alone.
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1))]
    pub min_samples: u64,
    /// Consecutive failed analyses that trigger the failure action.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_p95_latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: Option<f64>,
    /// Largest share of requests a cohort may send to the cloud (`spec.offload`): a variant
    /// that cannot answer most requests itself is not a good edge variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_offload_ratio: Option<f64>,
    /// Language models: the cohort's p95 time to first token must stay at or below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_p95_ttft_ms: Option<f64>,
    /// Language models: the cohort's median decode speed must reach this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub min_decode_tokens_per_second: Option<f64>,
    /// A step that has not passed within this time is Inconclusive and handled by `onFailure`.
    #[serde(default = "default_step_timeout")]
    #[schemars(range(min = 1))]
    pub step_timeout_seconds: u32,
    #[serde(default)]
    pub on_failure: FailureAction,
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            interval_seconds: default_interval(),
            min_samples: default_min_samples(),
            failure_threshold: default_failure_threshold(),
            max_p95_latency_ms: None,
            max_error_rate: None,
            max_offload_ratio: None,
            max_p95_ttft_ms: None,
            min_decode_tokens_per_second: None,
            step_timeout_seconds: default_step_timeout(),
            on_failure: FailureAction::default(),
        }
    }
}

fn default_interval() -> u32 {
    30
}
fn default_min_samples() -> u64 {
    50
}
fn default_failure_threshold() -> u32 {
    2
}
fn default_step_timeout() -> u32 {
    900
}

/// Service level objective, used for alerting and as analysis defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Slo {
    #[schemars(range(min = 0.0))]
    pub p95_latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: Option<f64>,
}

// ---------------------------------------------------------------- status

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: Phase,
    /// Model version being rolled out (or settled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// 1-based canary step; `steps.len() + 1` means fully promoted.
    #[serde(default)]
    pub current_step: u32,
    #[serde(default)]
    pub devices: DeviceCounts,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cohorts: Vec<CohortStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Progressing,
    Paused,
    Succeeded,
    RolledBack,
    Failed,
}

impl Phase {
    /// The name in the CRD (and in `kubectl get`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Succeeded => "Succeeded",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCounts {
    pub matched: u32,
    pub assigned: u32,
    pub updated: u32,
    pub ready: u32,
    pub failed: u32,
    pub offline: u32,
    /// Selected devices that no variant of the target fits, demotions aside.
    pub no_fit: u32,
    /// Devices whose first-choice target variant was demoted for their device class: they run
    /// the next-best target variant or, when none is left, keep the previous version.
    #[serde(default)]
    pub demoted: u32,
    /// Of the demoted devices, those running the previous version because every target
    /// variant that fits them was demoted.
    #[serde(default)]
    pub kept_previous: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantStatus {
    pub name: String,
    pub devices: u32,
    pub ready: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_latency_ms: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    #[default]
    Pending,
    Pass,
    Fail,
    Inconclusive,
}

impl Verdict {
    /// The name in the CRD's status and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pending => "Pending",
            Verdict::Pass => "Pass",
            Verdict::Fail => "Fail",
            Verdict::Inconclusive => "Inconclusive",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CohortStatus {
    /// `<deviceClass>/<variant>`.
    pub name: String,
    pub device_class: String,
    pub variant: String,
    pub devices: u32,
    pub verdict: Verdict,
    #[serde(default)]
    pub samples: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Share of the cohort's requests sent to the cloud (only with `spec.offload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_ratio: Option<f64>,
    /// Language models: time to first token, p95 over the cohort's interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ttft_ms: Option<f64>,
    /// Language models: decode speed, median over the cohort's interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_tokens_per_second: Option<f64>,
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Standard Kubernetes condition (kept here so the schema is generated with the rest).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339; changes only when `status` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
