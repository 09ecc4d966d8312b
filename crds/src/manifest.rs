//! Admission of `ModelDeployment` manifests outside Kubernetes (the standalone API and CLI):
//! the same checks the API server applies with the generated schema, plus the semantic ones.

use std::sync::OnceLock;

use kube::CustomResourceExt;

use crate::deployment::ModelDeployment;
use crate::validate::{FieldError, validate_spec};

fn schema_validator() -> Result<&'static jsonschema::Validator, String> {
    static VALIDATOR: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            let crd = serde_json::to_value(ModelDeployment::crd()).map_err(|e| e.to_string())?;
            let schema = crd
                .pointer("/spec/versions/0/schema/openAPIV3Schema")
                .ok_or("generated CRD has no openAPIV3Schema")?;
            jsonschema::validator_for(schema).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Parses and fully validates one manifest document. Every error names the field it is about.
pub fn admit_yaml(text: &str) -> Result<ModelDeployment, Vec<FieldError>> {
    let value: serde_json::Value = serde_yaml::from_str(text).map_err(|e| {
        vec![FieldError {
            path: "<document>".into(),
            message: format!("not valid YAML: {e}"),
        }]
    })?;
    admit_value(value)
}

pub fn admit_value(value: serde_json::Value) -> Result<ModelDeployment, Vec<FieldError>> {
    let one = |path: &str, message: String| {
        vec![FieldError {
            path: path.into(),
            message,
        }]
    };
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if api_version != "edgefleet.io/v1alpha1" || kind != "ModelDeployment" {
        return Err(one(
            "apiVersion/kind",
            format!("expected edgefleet.io/v1alpha1 ModelDeployment, got {api_version:?} {kind:?}"),
        ));
    }
    let name_ok = value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .is_some_and(is_dns_subdomain);
    if !name_ok {
        return Err(one(
            "metadata.name",
            "must be a lower-case DNS subdomain (a-z, 0-9, '-', '.')".into(),
        ));
    }

    let validator = schema_validator().map_err(|e| one("<schema>", e))?;
    let schema_errors: Vec<FieldError> = validator
        .iter_errors(&value)
        .map(|e| FieldError {
            path: pointer_to_path(&e.instance_path().to_string()),
            message: e.to_string(),
        })
        .collect();
    if !schema_errors.is_empty() {
        return Err(schema_errors);
    }

    // serde's deny_unknown_fields catches misspelled fields the schema lets through.
    let deployment: ModelDeployment = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        one(&path, e.into_inner().to_string())
    })?;
    let semantic = validate_spec(&deployment.spec);
    if semantic.is_empty() {
        Ok(deployment)
    } else {
        Err(semantic)
    }
}

/// `/spec/rollout/steps/0/percent` → `spec.rollout.steps[0].percent`
fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment.replace("~1", "/").replace("~0", "~"));
        }
    }
    if path.is_empty() {
        "<root>".into()
    } else {
        path
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_becomes_kubectl_style_path() {
        assert_eq!(
            pointer_to_path("/spec/rollout/steps/0/percent"),
            "spec.rollout.steps[0].percent"
        );
        assert_eq!(pointer_to_path(""), "<root>");
    }
}
