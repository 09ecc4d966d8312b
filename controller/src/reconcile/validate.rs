//! Step 1: a spec that breaks a rule the schema cannot express gets an invalid status and an
//! Event, and nothing else happens: no store read, no device touched.

use std::time::Duration;

use edgefleet_core::rollout::RolloutEvent;
use edgefleet_core::status::invalid_status;
use edgefleet_crds::validate::validate_spec;

use super::{DeploymentInput, ReconcileOutput};
use crate::clock::rfc3339;

/// The output for an invalid spec; `None` when the spec is valid.
pub(super) fn invalid_spec(input: &DeploymentInput<'_>, now_ms: i64) -> Option<ReconcileOutput> {
    let errors = validate_spec(input.spec);
    if errors.is_empty() {
        return None;
    }
    let status = invalid_status(input.generation, &errors, input.status, &rfc3339(now_ms));
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Some(ReconcileOutput {
        status,
        requeue_after: Duration::from_secs(300),
        events: vec![RolloutEvent {
            reason: "InvalidSpec",
            message,
            warning: true,
        }],
    })
}
