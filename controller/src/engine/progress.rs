//! One turn of a canary step: measure the canary cohorts, analyse them when an interval has
//! passed, and carry out the step decision. The judging is `edgefleet-core`'s; this file only
//! gathers its inputs from the plan, the devices' reports and telemetry.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_core::plan::{RolloutPlan, Stage};
use edgefleet_core::progression::{
    CanaryReadiness, StepCohort, StepDecision, StepState, decide_step, ready_since,
};
use edgefleet_core::{CohortKey, CohortVerdict, Liveness, analyze_cohort};
use edgefleet_crds::Verdict;

use super::rollout::RolloutState;
use super::{DeploymentInput, Engine, RolloutEvent};
use crate::store::AssignmentRow;
use crate::telemetry::CohortLabels;

pub(super) fn step(
    engine: &Engine,
    input: &DeploymentInput<'_>,
    state: &mut RolloutState,
    plan: &RolloutPlan,
    rows: &[AssignmentRow],
    now_ms: i64,
    verdicts: &mut BTreeMap<CohortKey, CohortVerdict>,
) -> Option<RolloutEvent> {
    let Stage::Canary { step } = state.stage else {
        return None;
    };
    let target_version = state.target.model.version.clone();
    let ready: BTreeSet<&str> = rows
        .iter()
        .filter(|r| {
            r.version == target_version && r.role == "canary" && r.phase.as_deref() == Some("Ready")
        })
        .map(|r| r.device_id.as_str())
        .collect();
    let mut cohorts: BTreeMap<CohortKey, StepCohort> = plan
        .canary_cohorts()
        .into_iter()
        .map(|(key, members)| {
            let online: Vec<_> = members
                .iter()
                .filter(|id| plan.device(id).is_some_and(|d| d.online))
                .collect();
            let readiness = CanaryReadiness {
                canaries: members.len() as u32,
                online: online.len() as u32,
                ready: online
                    .iter()
                    .filter(|id| ready.contains(id.as_str()))
                    .count() as u32,
            };
            let record = state.cohorts.get(&key).copied().unwrap_or_default();
            (key, StepCohort { record, readiness })
        })
        .collect();
    state.ready_since_ms = ready_since(state.ready_since_ms, &cohorts, now_ms);

    let analysis = &state.target.rollout.analysis;
    let interval_ms = i64::from(analysis.interval_seconds) * 1000;
    if now_ms - state.last_analysis_ms >= interval_ms {
        // Evidence counts from when the step's canaries all served the new model.
        let since = state.ready_since_ms.unwrap_or(state.step_started_ms);
        for (key, cohort) in cohorts.iter_mut() {
            let labels = CohortLabels {
                namespace: input.namespace.to_string(),
                deployment: input.name.to_string(),
                variant: key.variant.clone(),
                device_class: key.device_class.clone(),
                role: "canary".into(),
            };
            let canary = engine.telemetry.since(&labels, since);
            let stable = engine
                .telemetry
                .since_where(input.namespace, input.name, since, |l| {
                    l.role == "stable" && l.device_class == key.device_class
                });
            let baseline = (stable.samples() > 0).then_some(&stable);
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
            engine
                .metrics
                .canary_verdicts
                .with_label_values(&[input.namespace, input.name, verdict_name(verdict.verdict)])
                .inc();
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
    event.map(|(reason, message, warning)| RolloutEvent {
        reason,
        message,
        warning,
    })
}

fn restart_step(state: &mut RolloutState, now_ms: i64) {
    state.step_started_ms = now_ms;
    state.ready_since_ms = None;
    state.last_analysis_ms = 0;
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pending => "Pending",
        Verdict::Pass => "Pass",
        Verdict::Fail => "Fail",
        Verdict::Inconclusive => "Inconclusive",
    }
}
