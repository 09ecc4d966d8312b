//! One `ModelDeployment` this controller cannot read (a field of a newer CRD, a wrong type)
//! must not stop the others. The watcher lists and watches [`GuardedDeployment`]s, which
//! always deserialize as long as the metadata does, the same idea as kube's
//! `DeserializeGuard`, but this one keeps the path of the field at fault and the readable part
//! of the status, so the object gets a condition and an Event that name the field.

use std::borrow::Cow;

use edgefleet_crds::{Condition, ModelDeployment, ModelDeploymentStatus, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::Store;
use serde::{Deserialize, Deserializer, Serialize};

/// A `ModelDeployment` as read from the API server: typed, or the reason it is not.
#[derive(Clone, Debug)]
pub struct GuardedDeployment(pub Result<ModelDeployment, Unreadable>);

/// An object whose spec (or status) does not deserialize into this controller's types.
#[derive(Clone, Debug, PartialEq)]
pub struct Unreadable {
    pub metadata: ObjectMeta,
    /// Path of the field at fault, e.g. `spec.rollout.steps[0].percent`.
    pub field: String,
    /// What serde said about it (`unknown field ...`, `invalid type ...`).
    pub error: String,
    /// The object's status when that part is readable, so a patch keeps what it had.
    pub status: Option<ModelDeploymentStatus>,
}

impl GuardedDeployment {
    /// Reads a typed deployment out of `value`, or records which field made that fail. Only
    /// unreadable metadata is an error: without a name the object cannot be tracked at all.
    pub fn from_value(value: serde_json::Value) -> Result<Self, String> {
        match serde_path_to_error::deserialize::<_, ModelDeployment>(&value) {
            Ok(md) => Ok(Self(Ok(md))),
            Err(err) => {
                let field = err.path().to_string();
                let error = err.into_inner().to_string();
                let metadata = value
                    .get("metadata")
                    .map(ObjectMeta::deserialize)
                    .transpose()
                    .map_err(|e| format!("metadata: {e}"))?
                    .unwrap_or_default();
                if metadata.name.is_none() {
                    return Err(format!(
                        "an object without metadata.name ({field}: {error})"
                    ));
                }
                let status = value
                    .get("status")
                    .and_then(|s| ModelDeploymentStatus::deserialize(s).ok());
                Ok(Self(Err(Unreadable {
                    metadata,
                    field,
                    error,
                    status,
                })))
            }
        }
    }
}

impl<'de> Deserialize<'de> for GuardedDeployment {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::from_value(value).map_err(serde::de::Error::custom)
    }
}

/// Only what the API needs back from the object (kube's `Api` patch helpers never send it).
impl Serialize for GuardedDeployment {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Ok(md) => md.serialize(serializer),
            Err(bad) => serde_json::json!({
                "apiVersion": ModelDeployment::api_version(&()),
                "kind": ModelDeployment::kind(&()),
                "metadata": bad.metadata,
            })
            .serialize(serializer),
        }
    }
}

impl Resource for GuardedDeployment {
    type DynamicType = ();
    type Scope = <ModelDeployment as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ModelDeployment::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        ModelDeployment::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        ModelDeployment::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        ModelDeployment::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match &self.0 {
            Ok(md) => md.meta(),
            Err(bad) => &bad.metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match &mut self.0 {
            Ok(md) => md.meta_mut(),
            Err(bad) => &mut bad.metadata,
        }
    }
}

pub const UNREADABLE_REASON: &str = "UnreadableSpec";

/// One line naming the field and what is wrong with it, for the condition, Event and log.
pub fn unreadable_message(bad: &Unreadable) -> String {
    format!(
        "this controller cannot read field {}: {} (a CRD newer than the controller?); \
         the deployment is not reconciled and its devices keep what they run",
        bad.field, bad.error
    )
}

/// Status of an unreadable deployment: `Failed`, `SpecValid=False` naming the field; the
/// rest of a readable previous status is kept. Same shape as an invalid spec's status.
pub fn unreadable_status(bad: &Unreadable, now_rfc3339: &str) -> ModelDeploymentStatus {
    let previous = bad.status.as_ref();
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == "SpecValid"))
        .filter(|c| c.status == "False")
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now_rfc3339.to_string());
    let mut status = previous.cloned().unwrap_or_default();
    status.phase = Phase::Failed;
    status.conditions = vec![Condition {
        type_: "SpecValid".into(),
        status: "False".into(),
        reason: UNREADABLE_REASON.into(),
        message: unreadable_message(bad),
        last_transition_time: Some(since),
        observed_generation: bad.metadata.generation,
    }];
    status
}

/// `edgefleet_deployments_unreadable`: counted from the watcher's store when scraped, so it
/// falls back to 0 as soon as an object is fixed or deleted.
pub struct UnreadableGauge {
    gauge: prometheus::IntGauge,
    store: Store<GuardedDeployment>,
}

impl UnreadableGauge {
    pub fn new(store: Store<GuardedDeployment>) -> Self {
        let gauge = prometheus::IntGauge::new(
            "edgefleet_deployments_unreadable",
            "ModelDeployments this controller version cannot read (not reconciled)",
        )
        .unwrap_or_else(|_| unreachable!("static gauge options are valid"));
        Self { gauge, store }
    }
}

impl prometheus::core::Collector for UnreadableGauge {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let unreadable = self.store.state().iter().filter(|o| o.0.is_err()).count();
        self.gauge
            .set(i64::try_from(unreadable).unwrap_or(i64::MAX));
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(spec: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "edgefleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "bad", "namespace": "default", "generation": 2},
            "spec": spec,
            "status": {"phase": "Succeeded", "currentStep": 2,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        })
    }

    fn valid_spec() -> serde_json::Value {
        serde_json::json!({
            "model": {"name": "vad", "version": "1"},
            "variants": [{"name": "fp32", "precision": "fp32",
                          "artifact": {"uri": "http://a/m", "sha256": "ab".repeat(32), "sizeBytes": 1}}]
        })
    }

    fn unreadable(value: serde_json::Value) -> Unreadable {
        match GuardedDeployment::from_value(value)
            .expect("metadata readable")
            .0
        {
            Ok(md) => panic!("read as valid: {md:?}"),
            Err(bad) => bad,
        }
    }

    #[test]
    fn a_valid_object_reads_typed() {
        let guarded = GuardedDeployment::from_value(object(valid_spec())).expect("readable");
        assert!(guarded.0.is_ok(), "{guarded:?}");
    }

    #[test]
    fn an_unknown_field_is_named_with_its_path() {
        let mut spec = valid_spec();
        spec["priority"] = 5.into();
        let bad = unreadable(object(spec));
        assert_eq!(bad.field, "spec.priority");
        assert!(
            bad.error.contains("unknown field `priority`"),
            "{}",
            bad.error
        );
        assert_eq!(bad.metadata.name.as_deref(), Some("bad"));
        assert_eq!(bad.metadata.generation, Some(2));
        assert_eq!(
            bad.status.as_ref().map(|s| s.phase),
            Some(Phase::Succeeded),
            "the readable status is kept"
        );
    }

    #[test]
    fn a_wrong_type_deep_in_the_spec_is_named_with_its_path() {
        let mut spec = valid_spec();
        spec["rollout"] = serde_json::json!({"steps": [{"percent": "half"}]});
        let bad = unreadable(object(spec));
        assert_eq!(bad.field, "spec.rollout.steps[0].percent");
        assert!(bad.error.contains("invalid type"), "{}", bad.error);
    }

    #[test]
    fn without_a_name_the_object_is_an_error_not_a_guard() {
        let mut value = object(serde_json::json!({}));
        value["metadata"] = serde_json::json!({"namespace": "default"});
        let err = GuardedDeployment::from_value(value).expect_err("no name");
        assert!(err.contains("metadata.name"), "{err}");
    }

    #[test]
    fn a_list_with_one_unreadable_item_still_reads_the_others() {
        let mut spec = valid_spec();
        spec["priority"] = 5.into();
        let mut good = object(valid_spec());
        good["metadata"]["name"] = "good".into();
        let list = serde_json::json!({"items": [object(spec), good]});
        let items: Vec<GuardedDeployment> =
            serde_json::from_value(list["items"].clone()).expect("the list reads");
        let readable: Vec<bool> = items.iter().map(|i| i.0.is_ok()).collect();
        assert_eq!(readable, [false, true]);
    }

    #[test]
    fn the_status_of_an_unreadable_object_names_the_field_and_keeps_its_transition_time() {
        let mut spec = valid_spec();
        spec["priority"] = 5.into();
        let bad = unreadable(object(spec));
        let status = unreadable_status(&bad, "2026-02-02T00:00:00Z");
        assert_eq!(status.phase, Phase::Failed);
        assert_eq!(status.current_step, 2, "the rest of the status is kept");
        let [condition] = status.conditions.as_slice() else {
            panic!("{:?}", status.conditions)
        };
        assert_eq!(
            (condition.type_.as_str(), condition.status.as_str()),
            ("SpecValid", "False")
        );
        assert_eq!(condition.reason, UNREADABLE_REASON);
        assert!(condition.message.contains("spec.priority"), "{condition:?}");
        assert_eq!(condition.observed_generation, Some(2));
        // written once, the next status computed from it is identical (no patch loop)
        let again = Unreadable {
            status: Some(status.clone()),
            ..bad
        };
        assert_eq!(unreadable_status(&again, "2026-03-03T00:00:00Z"), status);
    }
}
