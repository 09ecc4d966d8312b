//! Step 2b: `oci://` artifacts pinned. Each reference of the target and previous specs is
//! resolved once per deployment and model version (the registry is asked only for references
//! not yet in `artifact_pins`), and the plan works on pinned copies of the specs; the rollout
//! state keeps the specs as written. A registry that cannot answer leaves the rollout where it
//! is, with the reason in a status condition.

use std::time::Duration;

use edgefleet_core::artifacts::{Pin, pin_spec, unresolved};
use edgefleet_core::rollout::{RolloutEvent, RolloutState};
use edgefleet_core::status::unresolved_status;
use edgefleet_crds::ModelDeploymentSpec;
use edgefleet_protocol::oci::OciReference;

use super::{DeploymentInput, ReconcileError, ReconcileOutput, Reconciler};
use crate::clock::rfc3339;

/// Why the specs could not be pinned: an answer for the user, not a controller failure.
pub(super) struct Unresolved(pub String);

impl Reconciler {
    /// `state` with the artifacts of its target and previous specs pinned.
    pub(super) async fn pinned(
        &self,
        input: &DeploymentInput<'_>,
        state: &RolloutState,
        now_ms: i64,
    ) -> Result<Result<RolloutState, Unresolved>, ReconcileError> {
        let mut pinned = state.clone();
        let target = match self.pin(input, &state.target, now_ms).await? {
            Ok(spec) => spec,
            Err(why) => return Ok(Err(why)),
        };
        pinned.target = target;
        if let Some(previous) = &state.previous {
            pinned.previous = match self.pin(input, previous, now_ms).await? {
                Ok(spec) => Some(spec),
                Err(why) => return Ok(Err(why)),
            };
        }
        Ok(Ok(pinned))
    }

    async fn pin(
        &self,
        input: &DeploymentInput<'_>,
        spec: &ModelDeploymentSpec,
        now_ms: i64,
    ) -> Result<Result<ModelDeploymentSpec, Unresolved>, ReconcileError> {
        let has_oci = spec
            .variants
            .iter()
            .any(|v| OciReference::is_oci(&v.artifact.uri));
        if !has_oci {
            return Ok(Ok(spec.clone()));
        }
        let version = spec.model.version.as_str();
        let store = &self.fleet.store;
        let mut pins = store
            .pins(input.namespace, input.name, input.uid, version)
            .await?;
        let missing: Vec<String> = unresolved(spec, &pins)
            .into_iter()
            .map(String::from)
            .collect();
        for reference in &missing {
            let pin = match self.resolve(reference).await {
                Ok(pin) => pin,
                Err(why) => return Ok(Err(Unresolved(why))),
            };
            tracing::info!(deployment = %input.key(), %reference, pinned = %pin.pinned_uri,
                sha256 = %pin.sha256, "resolved an OCI artifact");
            store
                .put_pin(
                    (input.namespace, input.name, input.uid, version),
                    reference,
                    &pin,
                    now_ms,
                )
                .await?;
        }
        if !missing.is_empty() {
            // another replica may have pinned first: its pin is the one every device gets
            pins = store
                .pins(input.namespace, input.name, input.uid, version)
                .await?;
        }
        Ok(pin_spec(spec, &pins).map_err(Unresolved))
    }

    async fn resolve(&self, reference: &str) -> Result<Pin, String> {
        let parsed = OciReference::parse(reference)?;
        let metrics = &self.fleet.metrics;
        match self.distribution.registry.resolve(&parsed).await {
            Ok(resolved) => {
                metrics
                    .artifact_resolutions
                    .with_label_values(&["ok"])
                    .inc();
                Ok(Pin {
                    pinned_uri: resolved.pinned.to_string(),
                    sha256: resolved.layer_sha256,
                    size_bytes: resolved.size_bytes,
                })
            }
            Err(e) => {
                metrics
                    .artifact_resolutions
                    .with_label_values(&[e.kind()])
                    .inc();
                Err(e.to_string())
            }
        }
    }
}

/// The output while artifacts cannot be resolved: status as it was plus the reason, a
/// Warning event, another try in 30 s.
pub(super) fn unresolved_output(
    input: &DeploymentInput<'_>,
    Unresolved(message): Unresolved,
    now_ms: i64,
) -> ReconcileOutput {
    let already_said = input.status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.reason == "ArtifactUnresolved" && c.message == message)
    });
    let status = unresolved_status(input.generation, &message, input.status, &rfc3339(now_ms));
    let events = if already_said {
        Vec::new()
    } else {
        vec![RolloutEvent {
            reason: "ArtifactUnresolved",
            message,
            warning: true,
        }]
    };
    ReconcileOutput {
        status,
        requeue_after: Duration::from_secs(30),
        events,
    }
}
