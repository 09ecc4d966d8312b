//! One turn of a canary step: measure the canary cohorts, analyse them when an interval has
//! passed, and carry out the step decision on the rollout state. Telemetry comes in through
//! [`Evidence`], so the whole turn is pure and replayable.

use std::collections::BTreeMap;

use edgefleet_protocol::wire::Role;

use crate::analysis::{Baseline, CohortVerdict, CohortWindow, Liveness, analyze_cohort};
use crate::assignment::AssignmentRecord;
use crate::cohort::CohortKey;
use crate::plan::{RolloutPlan, Stage};
use crate::progression::{
    CanaryReadiness, StepCohort, StepDecision, StepState, decide_step, ready_since,
};
use crate::rollout::{RolloutEvent, RolloutState};

/// What devices reported since a time, as the canary analysis reads it.
pub trait Evidence {
    /// The windows of a canary cohort's devices.
    fn canary(&self, cohort: &CohortKey, since_ms: i64) -> CohortWindow;
    /// The windows of the stable devices of a device class: the baseline.
    fn stable(&self, device_class: &str, since_ms: i64) -> CohortWindow;
}

/// What one turn did: the event worth reporting, if any, and the verdicts it reached.
#[derive(Debug, Default)]
pub struct StepOutcome {
    pub event: Option<RolloutEvent>,
    pub verdicts: BTreeMap<CohortKey, CohortVerdict>,
}

/// Moves a canary rollout on by one turn at `now_ms`; a no-op outside a canary stage.
pub fn step(
    state: &mut RolloutState,
    plan: &RolloutPlan,
    records: &[AssignmentRecord],
    evidence: &dyn Evidence,
    now_ms: i64,
) -> StepOutcome {
    let mut verdicts = BTreeMap::new();
    let Stage::Canary { step } = state.stage else {
        return StepOutcome::default();
    };
    let mut cohorts: BTreeMap<CohortKey, StepCohort> =
        canary_readiness(plan, records, &state.target.model.version)
            .into_iter()
            .map(|(key, readiness)| {
                let record = state.cohorts.get(key).copied().unwrap_or_default();
                (key.clone(), StepCohort { record, readiness })
            })
            .collect();
    state.ready_since_ms = ready_since(state.ready_since_ms, &cohorts, now_ms);

    let analysis = &state.target.rollout.analysis;
    let interval_ms = i64::from(analysis.interval_seconds) * 1000;
    if now_ms - state.last_analysis_ms >= interval_ms {
        // Evidence counts from when the step's canaries all served the new model.
        let since = state.ready_since_ms.unwrap_or(state.step_started_ms);
        let stable_liveness = plan.stable_liveness();
        for (key, cohort) in cohorts.iter_mut() {
            let canary = evidence.canary(key, since);
            let stable = evidence.stable(&key.device_class, since);
            let stable_devices = stable_liveness
                .get(key.device_class.as_str())
                .copied()
                .unwrap_or_default();
            let baseline = (stable_devices.total > 0).then_some(Baseline {
                window: &stable,
                devices: stable_devices,
            });
            let liveness = Liveness {
                online: cohort.readiness.online,
                total: cohort.readiness.canaries,
            };
            let verdict = analyze_cohort(
                &canary,
                baseline,
                analysis,
                state.target.slo.as_ref(),
                liveness,
            );
            cohort.record = cohort.record.record(verdict.verdict, now_ms);
            state.cohorts.insert(key.clone(), cohort.record);
            verdicts.insert(key.clone(), verdict);
        }
        state.last_analysis_ms = now_ms;
    }

    let decision = decide_step(&StepState {
        step,
        rollout: &state.target.rollout,
        started_ms: state.step_started_ms,
        ready_since_ms: state.ready_since_ms,
        cohorts: &cohorts,
        now_ms,
    });
    let (reason, event) = match decision {
        StepDecision::Hold { reason } => (reason, None),
        StepDecision::Advance { to, reason } => {
            state.stage = Stage::Canary { step: to };
            restart_step(state, now_ms);
            (reason.clone(), Some(("StepAdvanced", reason, false)))
        }
        StepDecision::Promote { reason } => {
            state.stage = Stage::Promoted;
            (reason.clone(), Some(("Promoted", reason, false)))
        }
        StepDecision::Rollback { reason } => {
            state.stage = Stage::RolledBack;
            (reason.clone(), Some(("RolledBack", reason, true)))
        }
        StepDecision::Demote { cohorts, reason } => {
            state.demotions.extend(cohorts);
            // A full timeout for the demoted devices to download and prove their new variant.
            restart_step(state, now_ms);
            (reason.clone(), Some(("Demoted", reason, true)))
        }
    };
    state.last_decision = reason;
    let event = event.map(|(reason, message, warning)| RolloutEvent {
        reason,
        message,
        warning,
    });
    StepOutcome { event, verdicts }
}

/// Per canary cohort of the plan, its canaries, those online, and those online that report
/// the target `Ready`: one walk over the plan beside the records (both in device order), where
/// looking every canary up by id cost more than the rest of the turn.
fn canary_readiness<'p>(
    plan: &'p RolloutPlan,
    records: &[AssignmentRecord],
    target_version: &str,
) -> BTreeMap<&'p CohortKey, CanaryReadiness> {
    let mut by_cohort: BTreeMap<(&str, &str), (&CohortKey, CanaryReadiness)> = plan
        .canary_cohorts()
        .into_iter()
        .map(|(key, members)| {
            let readiness = CanaryReadiness {
                canaries: members.len() as u32,
                online: 0,
                ready: 0,
            };
            (
                (key.device_class.as_str(), key.variant.as_str()),
                (key, readiness),
            )
        })
        .collect();
    // records come sorted from the store; a copy in order only for callers that did not
    let sorted_copy;
    let records: &[AssignmentRecord] = if records.is_sorted_by(|a, b| a.device_id <= b.device_id) {
        records
    } else {
        let mut copy = records.to_vec();
        copy.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        sorted_copy = copy;
        &sorted_copy
    };
    let mut rows = records.iter().peekable();
    for device in plan.devices.iter().filter(|d| d.online) {
        let Some(assignment) = device.assignment.as_ref() else {
            continue;
        };
        if assignment.role != Role::Canary {
            continue;
        }
        let cohort = (&*device.device_class, assignment.variant.name.as_str());
        let Some((_, readiness)) = by_cohort.get_mut(&cohort) else {
            continue;
        };
        readiness.online += 1;
        let id = device.device.as_str();
        while rows.next_if(|r| r.device_id.as_str() < id).is_some() {}
        let ready = rows.peek().is_some_and(|r| {
            r.device_id == id
                && r.version() == target_version
                && r.role() == Role::Canary
                && r.is_ready()
        });
        readiness.ready += u32::from(ready);
    }
    by_cohort.into_values().collect()
}

fn restart_step(state: &mut RolloutState, now_ms: i64) {
    state.step_started_ms = now_ms;
    state.ready_since_ms = None;
    state.last_analysis_ms = 0;
}
