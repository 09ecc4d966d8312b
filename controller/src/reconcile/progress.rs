//! Step 4: the canary turn (`edgefleet_core::progress`, pure) fed with the telemetry every
//! replica rolled up in the fleet store, and its verdicts counted.

use edgefleet_core::analysis::CohortWindow;
use edgefleet_core::plan::{RolloutPlan, Stage};
use edgefleet_core::progress::{Evidence, StepOutcome, step};
use edgefleet_core::rollout::RolloutState;
use edgefleet_core::{AssignmentRecord, CohortKey};
use edgefleet_protocol::wire::Role;

use super::{DeploymentInput, FleetState};
use crate::store::{DeploymentRollups, RollupCohort, StoreError};
use crate::telemetry::Telemetry;

/// How far back status (per-variant p95) looks.
pub(super) const STATUS_LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Every replica's roll-ups of the deployment that this pass reads: the status lookback, and
/// during a canary step everything since the step started (bounded by what the store keeps).
pub(super) async fn load_rollups(
    fleet: &FleetState,
    input: &DeploymentInput<'_>,
    state: &RolloutState,
    now_ms: i64,
) -> Result<DeploymentRollups, StoreError> {
    let mut since = now_ms - STATUS_LOOKBACK_MS;
    if matches!(state.stage, Stage::Canary { .. }) {
        since = since.min(state.step_started_ms);
    }
    let since = since.max(now_ms - fleet.telemetry.retention_ms());
    let since = fleet.telemetry.slice_start(since);
    fleet
        .store
        .rollups_of(input.namespace, input.name, since)
        .await
}

/// Merged roll-ups of the cohorts `filter` keeps, over slices holding `since_ms` or later.
pub(super) fn merged_since(
    rollups: &DeploymentRollups,
    slice_start: i64,
    filter: impl Fn(&RollupCohort) -> bool,
) -> CohortWindow {
    let mut merged = CohortWindow::default();
    for (_, slices) in rollups.iter().filter(|(cohort, _)| filter(cohort)) {
        for (_, window) in slices.range(slice_start..) {
            merged.merge(window);
        }
    }
    merged
}

/// One deployment's telemetry as the canary analysis asks for it.
struct DeploymentTelemetry<'a> {
    rollups: &'a DeploymentRollups,
    telemetry: &'a Telemetry,
}

impl Evidence for DeploymentTelemetry<'_> {
    fn canary(&self, cohort: &CohortKey, since_ms: i64) -> CohortWindow {
        merged_since(self.rollups, self.telemetry.slice_start(since_ms), |c| {
            c.role == Role::Canary.as_str()
                && c.variant == cohort.variant
                && c.device_class == cohort.device_class
        })
    }

    fn stable(&self, device_class: &str, since_ms: i64) -> CohortWindow {
        merged_since(self.rollups, self.telemetry.slice_start(since_ms), |c| {
            c.role == Role::Stable.as_str() && c.device_class == device_class
        })
    }
}

pub(super) fn turn(
    fleet: &FleetState,
    input: &DeploymentInput<'_>,
    state: &mut RolloutState,
    plan: &RolloutPlan,
    records: &[AssignmentRecord],
    rollups: &DeploymentRollups,
    now_ms: i64,
) -> StepOutcome {
    let evidence = DeploymentTelemetry {
        rollups,
        telemetry: &fleet.telemetry,
    };
    let outcome = step(state, plan, records, &evidence, now_ms);
    for verdict in outcome.verdicts.values() {
        fleet
            .metrics
            .canary_verdicts
            .with_label_values(&[input.namespace, input.name, verdict.verdict.as_str()])
            .inc();
    }
    outcome
}
