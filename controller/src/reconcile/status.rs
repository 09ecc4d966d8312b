//! Step 5: the status (`edgefleet_core::status`, pure) from the state, the plan, the records
//! and per-variant latency, and the deployment's gauges set to match it.

use std::collections::BTreeMap;

use edgefleet_core::plan::RolloutPlan;
use edgefleet_core::rollout::RolloutState;
use edgefleet_core::status::{StatusInput, build_status};
use edgefleet_core::{AssignmentRecord, CohortKey, CohortVerdict};
use edgefleet_crds::{ModelDeploymentStatus, Phase};

use super::progress::{STATUS_LOOKBACK_MS, merged_since};
use super::{DeploymentInput, FleetState};
use crate::clock::rfc3339;
use crate::store::{DeploymentRollups, RollupCohort};

/// The `state` label values of `edgefleet_deployment_devices`.
pub(super) const DEVICE_STATES: [&str; 9] = [
    "matched",
    "assigned",
    "updated",
    "ready",
    "failed",
    "offline",
    "no_fit",
    "demoted",
    "kept_previous",
];

/// What the devices reported, as status shows it: this pass's verdicts and every replica's
/// telemetry roll-ups.
pub(super) struct Observed<'a> {
    pub verdicts: &'a BTreeMap<CohortKey, CohortVerdict>,
    pub rollups: &'a DeploymentRollups,
}

pub(super) fn build(
    fleet: &FleetState,
    input: &DeploymentInput<'_>,
    state: &RolloutState,
    plan: &RolloutPlan,
    records: &[AssignmentRecord],
    observed: Observed<'_>,
    now_ms: i64,
) -> ModelDeploymentStatus {
    let verdicts = observed.verdicts;
    let variant_p95_ms = variant_p95(fleet, observed.rollups, state, now_ms);
    let status = build_status(&StatusInput {
        generation: input.generation,
        state,
        plan,
        rows: records,
        verdicts,
        variant_p95_ms: &variant_p95_ms,
        previous: input.status,
        now_rfc3339: &rfc3339(now_ms),
    });
    export_metrics(fleet, input, &status);
    status
}

/// p95 per target variant over the last 5 minutes, leaving out demoted cohorts: their canary
/// data is why they were demoted and says nothing of the classes that run it now.
fn variant_p95(
    fleet: &FleetState,
    rollups: &DeploymentRollups,
    state: &RolloutState,
    now_ms: i64,
) -> BTreeMap<String, f64> {
    let since = fleet.telemetry.slice_start(now_ms - STATUS_LOOKBACK_MS);
    let demoted = |labels: &RollupCohort| {
        state
            .demotions
            .iter()
            .any(|k| k.device_class == labels.device_class && k.variant == labels.variant)
    };
    state
        .target
        .variants
        .iter()
        .filter_map(|v| {
            let window = merged_since(rollups, since, |c| c.variant == v.name && !demoted(c));
            Some((v.name.clone(), window.p95_ms()?))
        })
        .collect()
}

fn export_metrics(fleet: &FleetState, input: &DeploymentInput<'_>, status: &ModelDeploymentStatus) {
    let d = &status.devices;
    let values = [
        d.matched,
        d.assigned,
        d.updated,
        d.ready,
        d.failed,
        d.offline,
        d.no_fit,
        d.demoted,
        d.kept_previous,
    ];
    let metrics = &fleet.metrics;
    for (state, value) in DEVICE_STATES.into_iter().zip(values) {
        metrics
            .deployment_devices
            .with_label_values(&[input.namespace, input.name, state])
            .set(i64::from(value));
    }
    let labels = [input.namespace, input.name];
    metrics
        .rollout_step
        .with_label_values(&labels)
        .set(i64::from(status.current_step));
    metrics
        .rollout_progressing
        .with_label_values(&labels)
        .set(i64::from(status.phase == Phase::Progressing));
}
