//! Semantic checks the OpenAPI schema cannot express (uniqueness, ordering, consistency).
//! The controller reports these in a status condition; the standalone API refuses the object.

use std::collections::BTreeSet;
use std::fmt;

use crate::deployment::{
    ModelDeploymentSpec, ModelFormat, Precision, Runtime, SelectorOperator, SelfTestInput,
};
use edgefleet_protocol::Artifact;
use edgefleet_protocol::oci::OciReference;
use edgefleet_protocol::offload::{OffloadPolicy, OffloadProtocol};
use edgefleet_protocol::spec::KNOWN_ARCHES;

/// One problem, with the path of the offending field as `kubectl` would print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

pub fn validate_spec(spec: &ModelDeploymentSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut push = |path: String, message: String| errors.push(FieldError { path, message });

    if spec.variants.is_empty() {
        push(
            "spec.variants".into(),
            "at least one variant is required".into(),
        );
    }
    let mut names = BTreeSet::new();
    for (i, variant) in spec.variants.iter().enumerate() {
        if !names.insert(variant.name.as_str()) {
            push(
                format!("spec.variants[{i}].name"),
                format!("duplicate variant name {:?}", variant.name),
            );
        }
        let gguf = variant.format == ModelFormat::Gguf;
        if gguf != (variant.runtime == Runtime::Llamacpp) {
            push(
                format!("spec.variants[{i}].runtime"),
                "format gguf runs on runtime llamacpp, and llamacpp runs only gguf".into(),
            );
        }
        if gguf != variant.gguf.is_some() {
            push(
                format!("spec.variants[{i}].gguf"),
                if gguf {
                    "format gguf needs a gguf block (quantization and shape) for the memory check"
                } else {
                    "a gguf block belongs to format gguf variants only"
                }
                .into(),
            );
        }
        if let Err(message) = artifact_problem(&variant.artifact) {
            push(format!("spec.variants[{i}].artifact"), message);
        }
        for (j, arch) in variant.requires.arch.iter().enumerate() {
            if !KNOWN_ARCHES.contains(&arch.as_str()) {
                push(
                    format!("spec.variants[{i}].requires.arch[{j}]"),
                    format!(
                        "unknown architecture {arch:?}; expected one of {}",
                        KNOWN_ARCHES.join(", ")
                    ),
                );
            }
        }
    }

    let mut previous = 0;
    for (i, step) in spec.rollout.steps.iter().enumerate() {
        if step.percent <= previous {
            push(
                format!("spec.rollout.steps[{i}].percent"),
                format!("steps must increase: {} follows {previous}", step.percent),
            );
        }
        previous = step.percent;
    }

    for (i, req) in spec.selector.match_expressions.iter().enumerate() {
        let needs_values = matches!(req.operator, SelectorOperator::In | SelectorOperator::NotIn);
        if needs_values == req.values.is_empty() {
            let message = if needs_values {
                "In and NotIn need at least one value"
            } else {
                "Exists and DoesNotExist take no values"
            };
            push(
                format!("spec.selector.matchExpressions[{i}].values"),
                message.into(),
            );
        }
    }

    if let Some(self_test) = &spec.self_test {
        for (i, input) in self_test.inputs.iter().enumerate() {
            let path = format!("spec.selfTest.inputs[{i}]");
            let elements: u64 = input.shape.iter().product();
            match (&input.data, input.fill) {
                (Some(_), Some(_)) => {
                    push(path.clone(), "give either data or fill, not both".into())
                }
                (None, None) => push(path.clone(), "give data or fill".into()),
                (Some(data), None) if data.len() as u64 != elements => push(
                    format!("{path}.data"),
                    format!(
                        "{} values do not fill shape {:?} ({elements} elements)",
                        data.len(),
                        input.shape
                    ),
                ),
                _ if elements > 16 * 1024 * 1024 => {
                    push(format!("{path}.shape"), "more than 16M elements".into())
                }
                _ => {}
            }
            if let Some((field, message)) = unrepresentable_value(input) {
                push(format!("{path}.{field}"), message);
            }
        }
    }

    if let Some(min) = spec.selection.min_accuracy {
        // As variant choice counts it: unmeasured variants qualify only as the fp32 reference.
        let any_acceptable = spec.variants.iter().any(|v| match &v.quality {
            Some(q) => 1.0 - q.accuracy_drift >= min,
            None => v.precision == Precision::Fp32,
        });
        if !any_acceptable {
            push(
                "spec.selection.minAccuracy".into(),
                format!("no variant reaches accuracy {min}; every device would be no-fit"),
            );
        }
    }
    if let Some(offload) = &spec.offload {
        validate_offload(offload, &mut push);
        let language_model = spec.variants.iter().any(|v| v.format == ModelFormat::Gguf);
        validate_offload_kind(offload, language_model, &mut push);
    }
    errors
}

/// Language models offload over OpenAI's API on time-to-first-token and context triggers;
/// tensor models over KServe v2 on confidence, queue and latency triggers.
/// http(s) artifacts carry their digest and size; OCI ones may (a pin the registry must
/// match), and otherwise get them from the manifest.
fn artifact_problem(artifact: &Artifact) -> Result<(), String> {
    if OciReference::is_oci(&artifact.uri) {
        OciReference::parse(&artifact.uri)?;
        return Ok(());
    }
    if artifact.sha256.is_empty() {
        return Err("sha256 is required for an http(s) artifact".into());
    }
    if artifact.size_bytes == 0 {
        return Err("sizeBytes is required for an http(s) artifact".into());
    }
    Ok(())
}

fn validate_offload_kind(
    offload: &OffloadPolicy,
    language_model: bool,
    push: &mut impl FnMut(String, String),
) {
    let t = &offload.triggers;
    let (expected, wrong_triggers) = if language_model {
        let wrong = [
            ("confidenceBelow", t.confidence_below.is_some()),
            ("latencyBudgetMs", t.latency_budget_ms.is_some()),
        ];
        (OffloadProtocol::OpenAi, wrong)
    } else {
        let wrong = [
            ("ttftBudgetMs", t.ttft_budget_ms.is_some()),
            ("contextExceeded", t.context_exceeded),
        ];
        (OffloadProtocol::KserveV2, wrong)
    };
    let kind = if language_model {
        "a language model (format gguf)"
    } else {
        "a tensor model"
    };
    if offload.endpoint.protocol != expected {
        push(
            "spec.offload.endpoint.protocol".into(),
            format!(
                "{} cannot serve {kind}; use {}",
                offload.endpoint.protocol.as_str(),
                expected.as_str()
            ),
        );
    }
    for (trigger, _) in wrong_triggers.iter().filter(|(_, set)| *set) {
        push(
            format!("spec.offload.triggers.{trigger}"),
            format!("does not apply to {kind}"),
        );
    }
}

/// The first self-test value its datatype cannot hold (`1.5` or `-1` as a token id, `2` as a
/// BOOL): the agent could never build that tensor, so the self-test could never pass.
fn unrepresentable_value(input: &SelfTestInput) -> Option<(String, String)> {
    let dt = input.datatype;
    let describe =
        |value: f64, why: String| format!("{value} is not a valid {}: {why}", dt.as_str());
    if let Some(fill) = input.fill
        && let Err(why) = dt.check_value(fill)
    {
        return Some(("fill".into(), describe(fill, why)));
    }
    input
        .data
        .iter()
        .flatten()
        .enumerate()
        .find_map(|(i, value)| {
            dt.check_value(*value)
                .err()
                .map(|why| (format!("data[{i}]"), describe(*value, why)))
        })
}

fn validate_offload(offload: &OffloadPolicy, push: &mut impl FnMut(String, String)) {
    if !offload.inputs_may_leave_device {
        push(
            "spec.offload.inputsMayLeaveDevice".into(),
            "must be true to offload: requests' inputs are sent to the cloud endpoint; \
             remove spec.offload to keep every input on the device"
                .into(),
        );
    }
    let url = &offload.endpoint.url;
    let valid_url = (url.starts_with("http://") || url.starts_with("https://"))
        && !url.chars().any(char::is_whitespace)
        && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
    if !valid_url {
        push(
            "spec.offload.endpoint.url".into(),
            format!("{url:?} is not an http(s) URL"),
        );
    }
    if offload.triggers.is_empty() {
        push(
            "spec.offload.triggers".into(),
            "give at least one of confidenceBelow, queueDepthAbove, latencyBudgetMs \
             (tensor models) or queueDepthAbove, ttftBudgetMs, contextExceeded (language models)"
                .into(),
        );
    }
    if let Some(confidence) = &offload.triggers.confidence_below
        && !(confidence.threshold > 0.0 && confidence.threshold <= 1.0)
    {
        push(
            "spec.offload.triggers.confidenceBelow.threshold".into(),
            format!(
                "{} must be in (0, 1]: no confidence is below 0",
                confidence.threshold
            ),
        );
    }
    let rate = offload.rate_limit.requests_per_second;
    if !(rate.is_finite() && rate > 0.0) {
        push(
            "spec.offload.rateLimit.requestsPerSecond".into(),
            format!("{rate} must be above 0; remove spec.offload to never offload"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::TensorDatatype;

    fn offload(protocol: OffloadProtocol, triggers: &str) -> OffloadPolicy {
        let json = format!(
            r#"{{"inputsMayLeaveDevice": true, "endpoint": {{"url": "http://cloud:8000",
                "model": "m", "protocol": "{}"}}, "triggers": {triggers}}}"#,
            protocol.as_str()
        );
        serde_json::from_str(&json).expect("a policy")
    }

    fn offload_errors(policy: &OffloadPolicy, language_model: bool) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        validate_offload_kind(policy, language_model, &mut |path, message| {
            errors.push((path, message))
        });
        errors
    }

    #[test]
    fn language_models_offload_over_openai_on_their_own_triggers() {
        let chat = offload(
            OffloadProtocol::OpenAi,
            r#"{"contextExceeded": true, "ttftBudgetMs": 400, "queueDepthAbove": 2}"#,
        );
        assert_eq!(offload_errors(&chat, true), vec![]);
        let errors = offload_errors(&chat, false);
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.offload.endpoint.protocol",
                "spec.offload.triggers.ttftBudgetMs",
                "spec.offload.triggers.contextExceeded"
            ],
            "{errors:?}"
        );
        assert_eq!(
            errors[0].1,
            "openai cannot serve a tensor model; use kserve-v2"
        );

        let tensor = offload(
            OffloadProtocol::KserveV2,
            r#"{"confidenceBelow": {"output": "p", "threshold": 0.5}, "latencyBudgetMs": 50}"#,
        );
        assert_eq!(offload_errors(&tensor, false), vec![]);
        let errors = offload_errors(&tensor, true);
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.offload.endpoint.protocol",
                "spec.offload.triggers.confidenceBelow",
                "spec.offload.triggers.latencyBudgetMs"
            ],
            "{errors:?}"
        );
        assert!(errors[2].1.contains("does not apply to a language model"));
    }

    #[test]
    fn integer_datatypes_take_whole_numbers_in_range() {
        use TensorDatatype::*;
        let ok = [
            (Int64, 101.0),
            (Int64, -1.0),
            (Int64, i64::MIN as f64),
            (Int64, 9_007_199_254_740_992.0),
            (Int32, f64::from(i32::MAX)),
            (Int32, f64::from(i32::MIN)),
            (Uint8, 0.0),
            (Uint8, 255.0),
            (Bool, 0.0),
            (Bool, 1.0),
            (Fp32, 0.1),
            (Fp64, 1e300),
        ];
        for (dt, v) in ok {
            assert_eq!(dt.check_value(v), Ok(()), "{v} as {}", dt.as_str());
        }
        let refused = [
            (Int64, 1.5, "whole numbers"),
            (Int64, 9_223_372_036_854_775_808.0, "out of the INT64 range"),
            (Int32, 2_147_483_648.0, "out of the INT32 range"),
            (Int32, -2_147_483_649.0, "out of the INT32 range"),
            (Uint8, 256.0, "out of the UINT8 range (0 to 255)"),
            (Uint8, -1.0, "out of the UINT8 range"),
            (Bool, 2.0, "BOOL takes 0 or 1"),
            (Bool, 0.5, "BOOL takes 0 or 1"),
            (Fp32, 1e39, "out of the FP32 range"),
            (Fp64, f64::NAN, "not a finite number"),
            (Int64, f64::INFINITY, "not a finite number"),
        ];
        for (dt, v, needle) in refused {
            let why = dt.check_value(v).expect_err("refused");
            assert!(why.contains(needle), "{v} as {}: {why:?}", dt.as_str());
        }
    }

    #[test]
    fn artifacts_need_a_digest_unless_the_registry_gives_one() {
        let artifact = |uri: &str, sha256: &str, size_bytes: u64| Artifact {
            uri: uri.into(),
            sha256: sha256.into(),
            size_bytes,
            signature: None,
        };
        let sha = "a".repeat(64);
        assert_eq!(
            artifact_problem(&artifact("https://h/m.onnx", &sha, 10)),
            Ok(())
        );
        assert!(
            artifact_problem(&artifact("https://h/m.onnx", "", 10))
                .expect_err("refused")
                .contains("sha256 is required")
        );
        assert!(
            artifact_problem(&artifact("https://h/m.onnx", &sha, 0))
                .expect_err("refused")
                .contains("sizeBytes is required")
        );
        assert_eq!(
            artifact_problem(&artifact("oci://reg:5000/models/m:v1", "", 0)),
            Ok(())
        );
        assert!(
            artifact_problem(&artifact("oci://reg:5000/models/m", "", 0))
                .expect_err("refused")
                .contains("neither a :tag")
        );
    }

    #[test]
    fn the_first_unrepresentable_self_test_value_is_named() {
        let input = |datatype, fill: Option<f64>, data: Option<Vec<f64>>| SelfTestInput {
            name: "input_ids".into(),
            shape: vec![1, 3],
            datatype,
            fill,
            data,
        };
        let ids = input(
            TensorDatatype::Int64,
            None,
            Some(vec![101.0, 7592.0, 102.0]),
        );
        assert_eq!(unrepresentable_value(&ids), None);
        let ids = input(TensorDatatype::Int64, None, Some(vec![101.0, 1.5, 0.25]));
        assert_eq!(
            unrepresentable_value(&ids),
            Some((
                "data[1]".into(),
                "1.5 is not a valid INT64: INT64 takes whole numbers".into()
            ))
        );
        let mask = input(TensorDatatype::Bool, Some(2.0), None);
        assert_eq!(
            unrepresentable_value(&mask),
            Some((
                "fill".into(),
                "2 is not a valid BOOL: BOOL takes 0 or 1".into()
            ))
        );
        assert_eq!(
            unrepresentable_value(&input(TensorDatatype::Fp32, Some(0.1), None)),
            None
        );
    }
}
