//! Step 4: the canary turn (`edgefleet_core::progress`, pure) fed with the telemetry the
//! controller aggregated, and its verdicts counted.

use edgefleet_core::analysis::CohortWindow;
use edgefleet_core::plan::RolloutPlan;
use edgefleet_core::progress::{Evidence, StepOutcome, step};
use edgefleet_core::rollout::RolloutState;
use edgefleet_core::{AssignmentRecord, CohortKey};
use edgefleet_protocol::wire::Role;

use super::{DeploymentInput, FleetState};
use crate::telemetry::{CohortLabels, Telemetry};

/// One deployment's telemetry as the canary analysis asks for it.
struct DeploymentTelemetry<'a> {
    telemetry: &'a Telemetry,
    namespace: &'a str,
    name: &'a str,
}

impl Evidence for DeploymentTelemetry<'_> {
    fn canary(&self, cohort: &CohortKey, since_ms: i64) -> CohortWindow {
        let labels = CohortLabels {
            namespace: self.namespace.to_string(),
            deployment: self.name.to_string(),
            variant: cohort.variant.clone(),
            device_class: cohort.device_class.clone(),
            role: Role::Canary.as_str().into(),
        };
        self.telemetry.since(&labels, since_ms)
    }

    fn stable(&self, device_class: &str, since_ms: i64) -> CohortWindow {
        self.telemetry
            .since_where(self.namespace, self.name, since_ms, |l| {
                l.role == Role::Stable.as_str() && l.device_class == device_class
            })
    }
}

pub(super) fn turn(
    fleet: &FleetState,
    input: &DeploymentInput<'_>,
    state: &mut RolloutState,
    plan: &RolloutPlan,
    records: &[AssignmentRecord],
    now_ms: i64,
) -> StepOutcome {
    let evidence = DeploymentTelemetry {
        telemetry: &fleet.telemetry,
        namespace: input.namespace,
        name: input.name,
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
