//! Variant choice: which of a deployment's compression variants a device gets, and why.
//!
//! A variant is a candidate when the device meets all of its `requires` and it is not below
//! `selection.minAccuracy`; candidates are ranked by `selection.prefer`. Every choice carries a
//! sentence naming what ruled each other variant out, because "why did my Pi get int8?" is the
//! first question an operator asks.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use edgefleet_crds::{ModelDeploymentSpec, Precision, Preference, Variant};

use edgefleet_protocol::llm::{GgufShape, LlmMemory, llm_memory};

use crate::device::DeviceFacts;
use crate::fmt_num;

/// The outcome of variant choice for one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Fits {
        /// Index into `spec.variants`.
        index: usize,
        name: Arc<str>,
        /// What ruled out the others and why this one ranked first. Shared: devices alike get
        /// the same sentence, and a plan keeps one copy of it (`plan::shared`).
        reason: Arc<str>,
    },
    /// No variant is a candidate; one entry per variant, in spec order.
    NoFit { reasons: Vec<Rejection> },
}

/// Why one variant is not a candidate for a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub variant: String,
    /// Each unmet requirement, e.g. `needs 1024 MiB memory, device has 512`.
    pub unmet: Vec<String>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.variant, self.unmet.join(", "))
    }
}

impl Choice {
    pub fn variant_index(&self) -> Option<usize> {
        match self {
            Choice::Fits { index, .. } => Some(*index),
            Choice::NoFit { .. } => None,
        }
    }

    pub fn variant_name(&self) -> Option<&str> {
        match self {
            Choice::Fits { name, .. } => Some(name.as_ref()),
            Choice::NoFit { .. } => None,
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Fits { name, reason, .. } => write!(f, "{name}: {reason}"),
            Choice::NoFit { reasons } => {
                f.write_str("no variant fits: ")?;
                f.write_str(&join(reasons, "; "))
            }
        }
    }
}

fn join<T: fmt::Display>(items: &[T], separator: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}

/// Accuracy relative to the reference model: `1 - accuracyDrift` when measured. An fp32 variant
/// without a quality block is taken to be the reference itself (1.0). Any other unmeasured
/// variant has unknown accuracy: it may be chosen when no `minAccuracy` is set, but a
/// `minAccuracy` excludes it, since a floor the user asked for cannot be shown to hold, and it
/// ranks after every measured variant when preferring accuracy.
pub fn accuracy(variant: &Variant) -> Option<f64> {
    match (&variant.quality, variant.precision) {
        (Some(quality), _) => Some(1.0 - quality.accuracy_drift),
        (None, Precision::Fp32) => Some(1.0),
        (None, _) => None,
    }
}

/// Numeric width, for "tie → larger precision". Mixed (typically int8 with fp16 islands) sits
/// between fp16 and int8.
fn precision_bits(precision: Precision) -> u32 {
    match precision {
        Precision::Fp32 => 32,
        Precision::Fp16 => 16,
        Precision::Mixed => 12,
        Precision::Int8 => 8,
        Precision::Int4 => 4,
    }
}

const MIB: u64 = 1024 * 1024;

/// Guards `minAccuracy` against `1.0 - 0.02` not being exactly `0.98`.
const ACCURACY_EPSILON: f64 = 1e-9;

/// Everything the device lacks to run `variant`, in a fixed order; empty means it can.
pub fn unmet_requirements(device: &DeviceFacts, variant: &Variant) -> Vec<String> {
    let req = &variant.requires;
    let mut unmet = Vec::new();
    if !req.arch.is_empty() && !req.arch.contains(&device.arch) {
        unmet.push(format!(
            "needs arch {}, device is {}",
            req.arch.join(" or "),
            device.arch
        ));
    }
    if device.memory_total_mib < req.min_memory_mib {
        unmet.push(format!(
            "needs {} MiB memory, device has {}",
            req.min_memory_mib, device.memory_total_mib
        ));
    }
    // The artifact must fit on top of the reserve the variant asks to keep free, unless it is
    // already on the device.
    let artifact_mib = if device.installed_sha256.contains(&variant.artifact.sha256) {
        0
    } else {
        variant.artifact.size_bytes.div_ceil(MIB)
    };
    let disk_needed = req.min_free_disk_mib.saturating_add(artifact_mib);
    if device.disk_free_mib < disk_needed {
        unmet.push(format!(
            "needs {disk_needed} MiB free disk ({} reserve + {artifact_mib} artifact), device has {}",
            req.min_free_disk_mib, device.disk_free_mib
        ));
    }
    let missing = |wanted: &[String], have: &std::collections::BTreeSet<String>| {
        wanted
            .iter()
            .filter(|w| !have.contains(&w.to_ascii_lowercase()))
            .cloned()
            .collect::<Vec<_>>()
    };
    let cpu = missing(&req.cpu_features, &device.cpu_features);
    if !cpu.is_empty() {
        unmet.push(format!("lacks cpu feature {}", cpu.join(", ")));
    }
    let accelerators = missing(&req.accelerators, &device.accelerators);
    if !accelerators.is_empty() {
        unmet.push(format!("lacks accelerator {}", accelerators.join(", ")));
    }
    if !device.runtimes.contains(&variant.runtime) {
        let have = if device.runtimes.is_empty() {
            "announces none".to_string()
        } else {
            let names: Vec<_> = device.runtimes.iter().map(|r| r.as_str()).collect();
            format!("has {}", names.join(", "))
        };
        unmet.push(format!(
            "needs runtime {}, device {have}",
            variant.runtime.as_str()
        ));
    }
    unmet
}

/// The memory a GGUF variant needs at the deployment's context length and slots: weights (the
/// artifact) + KV cache + compute buffer + runtime, the same estimate the agent checks before
/// loading (`edgefleet_protocol::llm::llm_memory`). `None` for other formats.
pub fn llm_memory_need(spec: &ModelDeploymentSpec, variant: &Variant) -> Option<LlmMemory> {
    let gguf = variant.gguf.as_ref()?;
    let serving = spec.llm.clone().unwrap_or_default();
    let shape = GgufShape {
        architecture: String::new(),
        weights_bytes: variant.artifact.size_bytes,
        layers: gguf.layers,
        embedding_length: gguf.embedding_length,
        heads: gguf.heads,
        kv_heads: gguf.kv_heads,
        vocab_size: 0,
        trained_context: 0,
    };
    Some(llm_memory(
        &shape,
        u64::from(serving.context_tokens),
        u64::from(serving.slots),
        LLM_BATCH_TOKENS,
    ))
}

/// The prompt batch agents evaluate at once (their `--llm-batch-tokens` default).
const LLM_BATCH_TOKENS: u64 = 512;

fn describe_need(spec: &ModelDeploymentSpec, variant: &Variant, need: &LlmMemory) -> String {
    let serving = spec.llm.clone().unwrap_or_default();
    let quantization = variant
        .gguf
        .as_ref()
        .map_or("", |g| g.quantization.as_str());
    format!(
        "{} MiB as {quantization} at {} tokens x {} slot{} ({} weights + {} KV cache + {} \
         compute and runtime)",
        need.total_mib(),
        serving.context_tokens,
        serving.slots,
        if serving.slots == 1 { "" } else { "s" },
        need.weights_bytes.div_ceil(MIB),
        need.kv_cache_bytes.div_ceil(MIB),
        (need.compute_bytes + need.runtime_bytes).div_ceil(MIB),
    )
}

/// Why a language model does not fit the memory the device announced available, if it does not.
fn short_of_memory(
    device: &DeviceFacts,
    spec: &ModelDeploymentSpec,
    variant: &Variant,
) -> Option<String> {
    let need = llm_memory_need(spec, variant)?;
    (need.total_mib() > device.memory_available_mib).then(|| {
        format!(
            "needs {}, device has {} MiB available",
            describe_need(spec, variant, &need),
            device.memory_available_mib
        )
    })
}

/// Why `variant` falls short of the deployment's `minAccuracy`, if it does.
fn below_min_accuracy(variant: &Variant, min_accuracy: Option<f64>) -> Option<String> {
    let min = min_accuracy?;
    match accuracy(variant) {
        Some(acc) if acc + ACCURACY_EPSILON >= min => None,
        Some(acc) => Some(format!(
            "has accuracy {} below minAccuracy {}",
            fmt_num(acc),
            fmt_num(min)
        )),
        None => Some(format!(
            "has no measured quality, which minAccuracy {} requires of non-fp32 variants",
            fmt_num(min)
        )),
    }
}

/// The best variant for `device`, as if the deployment had only its first choice.
pub fn choose_variant(device: &DeviceFacts, spec: &ModelDeploymentSpec) -> Choice {
    next_best(device, spec, &[])
}

/// The best variant for `device` that is not in `excluded` (variants already demoted for its
/// cohort). With nothing excluded this is the first choice.
pub fn next_best(device: &DeviceFacts, spec: &ModelDeploymentSpec, excluded: &[&str]) -> Choice {
    let mut rejections = Vec::new();
    let mut candidates = Vec::new();
    for (index, variant) in spec.variants.iter().enumerate() {
        let mut unmet = Vec::new();
        if excluded.contains(&variant.name.as_str()) {
            unmet.push("was demoted after failing canary analysis".to_string());
        }
        unmet.extend(unmet_requirements(device, variant));
        unmet.extend(short_of_memory(device, spec, variant));
        unmet.extend(below_min_accuracy(variant, spec.selection.min_accuracy));
        if unmet.is_empty() {
            candidates.push(index);
        } else {
            rejections.push(Rejection {
                variant: variant.name.clone(),
                unmet,
            });
        }
    }
    let prefer = spec.selection.prefer;
    candidates.sort_by(|a, b| rank(prefer, *a, &spec.variants[*a], *b, &spec.variants[*b]));
    let Some(&best) = candidates.first() else {
        return Choice::NoFit {
            reasons: rejections,
        };
    };
    let winner = &spec.variants[best];
    let names: Vec<&str> = candidates
        .iter()
        .map(|i| spec.variants[*i].name.as_str())
        .collect();
    let ranking = format!(
        "{} fits, ranked first by {} ({}) among {} candidate{}: {}",
        winner.name,
        preference_name(prefer),
        rank_value(prefer, winner),
        candidates.len(),
        if candidates.len() == 1 { "" } else { "s" },
        names.join(", ")
    );
    let ranking = match llm_memory_need(spec, winner) {
        Some(need) => format!(
            "{ranking}; {} needs {} of the {} MiB available",
            winner.name,
            describe_need(spec, winner, &need),
            device.memory_available_mib
        ),
        None => ranking,
    };
    let reason = if rejections.is_empty() {
        ranking
    } else {
        format!("{}; {ranking}", join(&rejections, "; "))
    };
    Choice::Fits {
        index: best,
        name: winner.name.as_str().into(),
        reason: reason.into(),
    }
}

fn preference_name(prefer: Preference) -> &'static str {
    match prefer {
        Preference::Accuracy => "accuracy",
        Preference::Latency => "latency",
        Preference::Size => "size",
    }
}

/// The value the winner was ranked on, for the explanation.
fn rank_value(prefer: Preference, variant: &Variant) -> String {
    match prefer {
        Preference::Accuracy => accuracy(variant).map_or("unmeasured".into(), fmt_num),
        // Both numbers it was ranked on: `edgefleet compress` measures them per runtime.
        Preference::Latency => {
            let latency = latency_hint(variant).map_or("no latency hint".into(), |ms| {
                format!("{} ms latency hint", fmt_num(ms))
            });
            match accuracy(variant) {
                Some(a) => format!("{latency}, accuracy {}", fmt_num(a)),
                None => latency,
            }
        }
        Preference::Size => format!("{} bytes", variant.artifact.size_bytes),
    }
}

fn latency_hint(variant: &Variant) -> Option<f64> {
    variant.quality.as_ref().and_then(|q| q.latency_hint_ms)
}

/// Orders `Some` values by `cmp` and puts `None` (unknown) last.
fn known_first(a: Option<f64>, b: Option<f64>, cmp: impl Fn(f64, f64) -> Ordering) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => cmp(a, b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Best first. Every preference falls back to spec order, so ties are deterministic and the
/// author of the spec breaks them.
fn rank(prefer: Preference, ia: usize, a: &Variant, ib: usize, b: &Variant) -> Ordering {
    let more_accurate = || known_first(accuracy(a), accuracy(b), |x, y| y.total_cmp(&x));
    let wider = || precision_bits(b.precision).cmp(&precision_bits(a.precision));
    let primary = match prefer {
        Preference::Accuracy => more_accurate().then_with(wider),
        Preference::Latency => {
            known_first(latency_hint(a), latency_hint(b), |x, y| x.total_cmp(&y))
                .then_with(more_accurate)
        }
        Preference::Size => a
            .artifact
            .size_bytes
            .cmp(&b.artifact.size_bytes)
            .then_with(more_accurate),
    };
    primary.then(ia.cmp(&ib))
}

#[cfg(test)]
mod llm_tests;
#[cfg(test)]
mod tests;
