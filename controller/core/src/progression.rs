//! Step progression: given where a rollout stands, hold, advance, promote, roll back or demote.
//!
//! Order of the rules:
//! 1. a cohort with `failureThreshold` consecutive failed analyses triggers `onFailure` at once:
//!    `Rollback` (everything back to the previous version) or `Demote` (only the failing
//!    cohorts move to their next-best variant; the rest go on);
//! 2. a step *passes* when all its online canaries are updated and ready and every cohort's
//!    latest verdict is a `Pass` analysed after they became ready. A passing step waits out its
//!    `pauseSeconds` (counted from readiness), then advances, or promotes after the last step.
//!    A *vacant* cohort (every canary offline, no failure on record) cannot be analysed and
//!    does not hold a step that other cohorts passed: one unplugged device must not roll back
//!    a fleet. Its devices get the target when they return, behind the agent's self-test;
//! 3. a step that has not passed by its deadline — `stepTimeoutSeconds` plus its pause after it
//!    started — triggers `onFailure` for the cohorts that are not passing, whatever the reason
//!    (offline, no traffic, stuck downloads). Offline devices therefore never hold a rollout
//!    forever: they cost at most one timeout, and the outcome is the action the user chose;
//! 4. otherwise hold, saying what the step waits for.
//!
//! Offline canaries do not count against readiness (they cannot report it); their cohorts
//! analyse as `Inconclusive` when none of their devices is online. Canaries are picked among
//! online devices first (`canary`), so a cohort is vacant only when it has no device online;
//! a step whose cohorts are all vacant has no evidence at all and falls to rule 3.

use std::collections::BTreeMap;

use edgefleet_crds::{FailureAction, RolloutSpec, Verdict};
use serde::{Deserialize, Serialize};

use crate::cohort::CohortKey;

/// A cohort's analysis history; persist it with the rollout (`CohortStatus` carries the
/// verdict and the failure count) and keep it across steps, so a step change does not erase
/// failures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CohortRecord {
    /// The latest verdict.
    pub verdict: Verdict,
    pub consecutive_failures: u32,
    /// When the latest verdict was reached; `None` before any analysis.
    pub analyzed_at_ms: Option<i64>,
}

impl CohortRecord {
    /// Records one analysis. `Fail` counts up and `Pass` resets; `Pending` and `Inconclusive`
    /// are absence of evidence, so they neither break nor extend a run of failures.
    pub fn record(self, verdict: Verdict, now_ms: i64) -> Self {
        let consecutive_failures = match verdict {
            Verdict::Fail => self.consecutive_failures.saturating_add(1),
            Verdict::Pass => 0,
            Verdict::Pending | Verdict::Inconclusive => self.consecutive_failures,
        };
        Self {
            verdict,
            consecutive_failures,
            analyzed_at_ms: Some(now_ms),
        }
    }
}

/// The canaries of one cohort in the current step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CanaryReadiness {
    pub canaries: u32,
    pub online: u32,
    /// Online canaries that run the target and report it `Ready`.
    pub ready: u32,
}

impl CanaryReadiness {
    pub fn all_online_ready(&self) -> bool {
        self.ready >= self.online
    }
}

/// One canary cohort of the current step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepCohort {
    pub record: CohortRecord,
    pub readiness: CanaryReadiness,
}

/// Where the rollout stands.
#[derive(Clone, Copy, Debug)]
pub struct StepState<'a> {
    /// 0-based index into `rollout.steps` (`status.currentStep` is this plus one).
    pub step: usize,
    pub rollout: &'a RolloutSpec,
    /// When the controller moved to this step (or last demoted in it).
    pub started_ms: i64,
    /// Since when every online canary has been ready, as tracked with [`ready_since`].
    pub ready_since_ms: Option<i64>,
    /// The step's canary cohorts.
    pub cohorts: &'a BTreeMap<CohortKey, StepCohort>,
    pub now_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepDecision {
    Hold {
        reason: String,
    },
    /// Go to step `to` (0-based) and restart the step clock.
    Advance {
        to: usize,
        reason: String,
    },
    /// Every step passed: all devices get the target version as stable.
    Promote {
        reason: String,
    },
    /// Every device returns to the previous version; the rollout ends.
    Rollback {
        reason: String,
    },
    /// Only these cohorts move to their next-best variant (add them to the demotions given to
    /// `plan_rollout`); the rest go on. The controller restarts the step clock, so the demoted
    /// devices get a full timeout to download and prove the new variant.
    Demote {
        cohorts: Vec<CohortKey>,
        reason: String,
    },
}

/// The canary percentage of step `step`; 100 past the last step.
pub fn step_percent(rollout: &RolloutSpec, step: usize) -> u32 {
    rollout.steps.get(step).map_or(100, |s| s.percent)
}

/// Updates the "ready since" mark: kept while every online canary stays ready, set to now when
/// they all become ready, cleared as soon as one is not.
pub fn ready_since(
    previous: Option<i64>,
    cohorts: &BTreeMap<CohortKey, StepCohort>,
    now_ms: i64,
) -> Option<i64> {
    all_ready(cohorts).then(|| previous.unwrap_or(now_ms))
}

fn all_ready(cohorts: &BTreeMap<CohortKey, StepCohort>) -> bool {
    cohorts.values().all(|c| c.readiness.all_online_ready())
}

pub fn decide_step(state: &StepState<'_>) -> StepDecision {
    let steps = &state.rollout.steps;
    let analysis = &state.rollout.analysis;
    let Some(step) = steps.get(state.step) else {
        return StepDecision::Promote {
            reason: "no canary steps left".into(),
        };
    };
    let name = format!(
        "step {} of {} ({}%)",
        state.step + 1,
        steps.len(),
        step.percent
    );

    // 1. Enough consecutive failures settle it, whatever else is going on.
    let failed: Vec<CohortKey> = state
        .cohorts
        .iter()
        .filter(|(_, c)| c.record.consecutive_failures >= analysis.failure_threshold)
        .map(|(key, _)| key.clone())
        .collect();
    if !failed.is_empty() {
        let reason = format!(
            "{name}: {} failed {} consecutive analyses",
            list(&failed),
            analysis.failure_threshold
        );
        return failure_action(analysis.on_failure, failed, reason);
    }

    // 2. A passing step waits out its pause, then moves on.
    let fresh_pass =
        |c: &StepCohort| c.record.verdict == Verdict::Pass && is_fresh(state, &c.record);
    let vacant: Vec<CohortKey> = state
        .cohorts
        .iter()
        .filter(|(_, c)| is_vacant(c))
        .map(|(key, _)| key.clone())
        .collect();
    let not_passing: Vec<CohortKey> = state
        .cohorts
        .iter()
        .filter(|(_, c)| !is_vacant(c) && (!c.readiness.all_online_ready() || !fresh_pass(c)))
        .map(|(key, _)| key.clone())
        .collect();
    let only_vacant = !vacant.is_empty() && vacant.len() == state.cohorts.len();
    let pause_ms = i64::from(step.pause_seconds) * 1000;
    if not_passing.is_empty() && !only_vacant {
        let ready_at = state.ready_since_ms.unwrap_or(state.now_ms);
        let pause_left = ready_at.saturating_add(pause_ms) - state.now_ms;
        if pause_left > 0 {
            return StepDecision::Hold {
                reason: format!("{name} passed; pausing {} more", duration(pause_left)),
            };
        }
        let mut passed = if state.cohorts.is_empty() {
            "has no canaries".to_string()
        } else {
            let analysed = state.cohorts.keys().filter(|k| !vacant.contains(k));
            format!("passed in {}", list_keys(analysed))
        };
        if !vacant.is_empty() {
            passed.push_str(&format!(
                "; {} skipped, every canary offline",
                list(&vacant)
            ));
        }
        return if state.step + 1 < steps.len() {
            StepDecision::Advance {
                to: state.step + 1,
                reason: format!("{name} {passed}"),
            }
        } else {
            StepDecision::Promote {
                reason: format!("{name}, the last, {passed}"),
            }
        };
    }

    // 3. Not passed by the deadline: the failure action, for the cohorts holding it up.
    let waiting = waiting_for(state);
    let timeout_ms = i64::from(analysis.step_timeout_seconds) * 1000;
    let deadline = state.started_ms.saturating_add(timeout_ms + pause_ms);
    if state.now_ms >= deadline {
        let reason = format!(
            "{name} did not pass within {}: {waiting}",
            duration(deadline - state.started_ms)
        );
        let holding = if not_passing.is_empty() {
            vacant
        } else {
            not_passing
        };
        return failure_action(analysis.on_failure, holding, reason);
    }

    // 4. Otherwise wait.
    StepDecision::Hold {
        reason: format!(
            "{name} waiting for {waiting}; times out in {}",
            duration(deadline - state.now_ms)
        ),
    }
}

/// Every canary offline and no failure on record: nothing can be learned from the cohort now.
pub fn is_vacant(cohort: &StepCohort) -> bool {
    let r = cohort.readiness;
    r.canaries > 0 && r.online == 0 && cohort.record.verdict != Verdict::Fail
}

/// Whether a verdict judges this step's canaries: reached after they all became ready, or,
/// while some are not ready yet, at least after the step started.
fn is_fresh(state: &StepState<'_>, record: &CohortRecord) -> bool {
    let since = state.ready_since_ms.unwrap_or(state.started_ms);
    record.analyzed_at_ms.is_some_and(|t| t >= since)
}

fn failure_action(action: FailureAction, cohorts: Vec<CohortKey>, reason: String) -> StepDecision {
    match action {
        FailureAction::Rollback => StepDecision::Rollback { reason },
        FailureAction::Demote => StepDecision::Demote { cohorts, reason },
    }
}

/// What keeps the step from passing, cohort by cohort.
fn waiting_for(state: &StepState<'_>) -> String {
    let only_vacant = state.cohorts.values().all(is_vacant);
    let parts: Vec<String> = state
        .cohorts
        .iter()
        .filter(|(_, c)| only_vacant || !is_vacant(c))
        .filter_map(|(key, c)| {
            let r = c.readiness;
            if !r.all_online_ready() {
                let offline = r.canaries.saturating_sub(r.online);
                let offline = if offline > 0 {
                    format!(", {offline} offline")
                } else {
                    String::new()
                };
                return Some(format!(
                    "{key} {} of {} online canaries ready{offline}",
                    r.ready, r.online
                ));
            }
            match (c.record.verdict, is_fresh(state, &c.record)) {
                (Verdict::Pass, true) => None,
                (_, false) => Some(format!("{key} awaiting an analysis since ready")),
                (Verdict::Fail, true) => Some(format!(
                    "{key} failed ({} of {})",
                    c.record.consecutive_failures, state.rollout.analysis.failure_threshold
                )),
                (verdict, true) => Some(format!("{key} {}", verdict_name(verdict))),
            }
        })
        .collect();
    parts.join(", ")
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pending => "pending",
        Verdict::Pass => "passed",
        Verdict::Fail => "failed",
        Verdict::Inconclusive => "inconclusive",
    }
}

fn list(keys: &[CohortKey]) -> String {
    list_keys(keys.iter())
}

fn list_keys<'a>(keys: impl Iterator<Item = &'a CohortKey>) -> String {
    keys.map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// `90s`, `15m`, `1h30m`, as an operator reads them.
fn duration(ms: i64) -> String {
    let seconds = (ms.max(0) + 999) / 1000;
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests;
