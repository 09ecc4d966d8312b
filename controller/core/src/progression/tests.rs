use std::collections::BTreeMap;

use edgefleet_crds::{CanaryStep, FailureAction, RolloutSpec, Verdict};
use proptest::prelude::*;

use super::*;
use crate::cohort::CohortKey;

const MIN: i64 = 60_000;

/// Steps 10% and 50% (pause 60 s on the second), threshold 2, timeout 15 min.
fn rollout(on_failure: FailureAction) -> RolloutSpec {
    let mut r = RolloutSpec {
        steps: vec![
            CanaryStep {
                percent: 10,
                pause_seconds: 0,
            },
            CanaryStep {
                percent: 50,
                pause_seconds: 60,
            },
        ],
        ..RolloutSpec::default()
    };
    r.analysis.failure_threshold = 2;
    r.analysis.step_timeout_seconds = 900;
    r.analysis.on_failure = on_failure;
    r
}

fn key(name: &str) -> CohortKey {
    CohortKey::new(name, "int8")
}

fn cohort(verdict: Verdict, failures: u32, analyzed_at: i64, ready: u32) -> StepCohort {
    StepCohort {
        record: CohortRecord {
            verdict,
            consecutive_failures: failures,
            analyzed_at_ms: Some(analyzed_at),
        },
        readiness: CanaryReadiness {
            canaries: 3,
            online: 3,
            ready,
        },
    }
}

fn passing(at: i64) -> StepCohort {
    cohort(Verdict::Pass, 0, at, 3)
}

/// Decides at `now` for a step started at 0 whose canaries were ready at `ready_since`.
fn decide(
    r: &RolloutSpec,
    step: usize,
    cohorts: &BTreeMap<CohortKey, StepCohort>,
    ready_since: Option<i64>,
    now: i64,
) -> StepDecision {
    decide_step(&StepState {
        step,
        rollout: r,
        started_ms: 0,
        ready_since_ms: ready_since,
        cohorts,
        now_ms: now,
    })
}

fn hold_reason(decision: StepDecision) -> String {
    match decision {
        StepDecision::Hold { reason } => reason,
        other => panic!("expected Hold, got {other:?}"),
    }
}

#[test]
fn records_count_failures_reset_on_pass_and_ignore_missing_evidence() {
    let r = CohortRecord::default();
    let r = r.record(Verdict::Fail, 1);
    assert_eq!(r.consecutive_failures, 1);
    let r = r
        .record(Verdict::Pending, 2)
        .record(Verdict::Inconclusive, 3);
    assert_eq!(r.consecutive_failures, 1);
    assert_eq!(r.verdict, Verdict::Inconclusive);
    assert_eq!(r.analyzed_at_ms, Some(3));
    let r = r.record(Verdict::Fail, 4);
    assert_eq!(r.consecutive_failures, 2);
    assert_eq!(r.record(Verdict::Pass, 5).consecutive_failures, 0);
}

#[test]
fn percent_per_step_and_one_hundred_past_the_end() {
    let r = rollout(FailureAction::Rollback);
    assert_eq!(step_percent(&r, 0), 10);
    assert_eq!(step_percent(&r, 1), 50);
    assert_eq!(step_percent(&r, 2), 100);
}

#[test]
fn ready_since_is_kept_set_and_cleared() {
    let mut cohorts = BTreeMap::from([(key("a"), passing(0))]);
    assert_eq!(ready_since(None, &cohorts, 10), Some(10));
    assert_eq!(ready_since(Some(5), &cohorts, 10), Some(5));
    cohorts.insert(key("b"), cohort(Verdict::Pending, 0, 0, 2));
    assert_eq!(ready_since(Some(5), &cohorts, 10), None);
}

#[test]
fn offline_canaries_do_not_hold_readiness() {
    let mut c = passing(0);
    c.readiness = CanaryReadiness {
        canaries: 5,
        online: 3,
        ready: 3,
    };
    let cohorts = BTreeMap::from([(key("a"), c)]);
    assert_eq!(ready_since(None, &cohorts, 7), Some(7));
}

#[test]
fn no_steps_left_promotes() {
    let mut r = rollout(FailureAction::Rollback);
    let none = BTreeMap::new();
    assert!(matches!(
        decide(&r, 2, &none, None, 0),
        StepDecision::Promote { .. }
    ));
    r.steps.clear();
    assert!(matches!(
        decide(&r, 0, &none, None, 0),
        StepDecision::Promote { .. }
    ));
}

#[test]
fn holds_until_online_canaries_are_ready() {
    let r = rollout(FailureAction::Rollback);
    let mut c = cohort(Verdict::Pending, 0, 0, 1);
    c.readiness.canaries = 4;
    let cohorts = BTreeMap::from([(key("a"), c)]);
    assert_eq!(
        hold_reason(decide(&r, 0, &cohorts, None, MIN)),
        "step 1 of 2 (10%) waiting for a/int8 1 of 3 online canaries ready, 1 offline; \
         times out in 14m"
    );
}

#[test]
fn all_passing_advances_to_the_next_step() {
    let r = rollout(FailureAction::Rollback);
    let cohorts = BTreeMap::from([(key("a"), passing(2 * MIN)), (key("b"), passing(2 * MIN))]);
    assert_eq!(
        decide(&r, 0, &cohorts, Some(MIN), 2 * MIN),
        StepDecision::Advance {
            to: 1,
            reason: "step 1 of 2 (10%) passed in a/int8, b/int8".into()
        }
    );
}

#[test]
fn a_pass_from_before_the_canaries_were_ready_does_not_count() {
    let r = rollout(FailureAction::Rollback);
    let cohorts = BTreeMap::from([(key("a"), passing(MIN - 1))]);
    assert_eq!(
        hold_reason(decide(&r, 0, &cohorts, Some(MIN), 2 * MIN)),
        "step 1 of 2 (10%) waiting for a/int8 awaiting an analysis since ready; times out in 13m"
    );
}

#[test]
fn a_passing_step_waits_out_its_pause_counted_from_readiness() {
    let r = rollout(FailureAction::Rollback);
    let cohorts = BTreeMap::from([(key("a"), passing(5 * MIN))]);
    assert_eq!(
        hold_reason(decide(&r, 1, &cohorts, Some(5 * MIN), 5 * MIN + 15_000)),
        "step 2 of 2 (50%) passed; pausing 45s more"
    );
    assert!(matches!(
        decide(&r, 1, &cohorts, Some(5 * MIN), 6 * MIN),
        StepDecision::Promote { .. }
    ));
}

#[test]
fn the_last_step_passing_promotes() {
    let r = rollout(FailureAction::Rollback);
    let cohorts = BTreeMap::from([(key("a"), passing(MIN))]);
    assert_eq!(
        decide(&r, 1, &cohorts, Some(0), 2 * MIN),
        StepDecision::Promote {
            reason: "step 2 of 2 (50%), the last, passed in a/int8".into()
        }
    );
}

#[test]
fn a_step_without_canaries_passes_after_its_pause() {
    let r = rollout(FailureAction::Rollback);
    let none = BTreeMap::new();
    assert_eq!(
        decide(&r, 0, &none, None, 0),
        StepDecision::Advance {
            to: 1,
            reason: "step 1 of 2 (10%) has no canaries".into()
        }
    );
}

#[test]
fn one_failure_below_the_threshold_holds() {
    let r = rollout(FailureAction::Rollback);
    let cohorts = BTreeMap::from([
        (key("a"), passing(MIN)),
        (key("b"), cohort(Verdict::Fail, 1, MIN, 3)),
    ]);
    assert_eq!(
        hold_reason(decide(&r, 0, &cohorts, Some(0), MIN)),
        "step 1 of 2 (10%) waiting for b/int8 failed (1 of 2); times out in 14m"
    );
}

#[test]
fn consecutive_failures_roll_back_at_once() {
    let r = rollout(FailureAction::Rollback);
    // Even while another cohort is still downloading and the step is young.
    let cohorts = BTreeMap::from([
        (key("a"), cohort(Verdict::Pending, 0, MIN, 0)),
        (key("b"), cohort(Verdict::Fail, 2, MIN, 3)),
    ]);
    assert_eq!(
        decide(&r, 0, &cohorts, None, MIN),
        StepDecision::Rollback {
            reason: "step 1 of 2 (10%): b/int8 failed 2 consecutive analyses".into()
        }
    );
}

#[test]
fn consecutive_failures_demote_only_the_failing_cohorts() {
    let r = rollout(FailureAction::Demote);
    let cohorts = BTreeMap::from([
        (key("a"), passing(MIN)),
        (key("b"), cohort(Verdict::Fail, 3, MIN, 3)),
        (key("c"), cohort(Verdict::Fail, 2, MIN, 3)),
        (key("d"), cohort(Verdict::Fail, 1, MIN, 3)),
    ]);
    match decide(&r, 0, &cohorts, Some(0), MIN) {
        StepDecision::Demote { cohorts, reason } => {
            assert_eq!(cohorts, [key("b"), key("c")]);
            assert_eq!(
                reason,
                "step 1 of 2 (10%): b/int8, c/int8 failed 2 consecutive analyses"
            );
        }
        other => panic!("expected Demote, got {other:?}"),
    }
}

fn vacant() -> StepCohort {
    let mut offline = cohort(Verdict::Inconclusive, 0, 14 * MIN, 0);
    offline.readiness.online = 0;
    offline
}

#[test]
fn a_cohort_with_every_canary_offline_does_not_hold_a_step_others_passed() {
    let r = rollout(FailureAction::Rollback);
    let cohorts = BTreeMap::from([(key("a"), passing(14 * MIN)), (key("b"), vacant())]);
    assert_eq!(
        decide(&r, 0, &cohorts, Some(MIN), 14 * MIN),
        StepDecision::Advance {
            to: 1,
            reason: "step 1 of 2 (10%) passed in a/int8; b/int8 skipped, every canary offline"
                .into()
        }
    );
    // While another cohort is still pending, the vacant one is not what the step waits for.
    let cohorts = BTreeMap::from([
        (key("a"), cohort(Verdict::Pending, 0, 14 * MIN, 3)),
        (key("b"), vacant()),
    ]);
    assert_eq!(
        hold_reason(decide(&r, 0, &cohorts, Some(MIN), 14 * MIN)),
        "step 1 of 2 (10%) waiting for a/int8 pending; times out in 1m"
    );
    // A failure on record is not forgotten by going offline.
    let mut failed_then_offline = vacant();
    failed_then_offline.record.verdict = Verdict::Fail;
    failed_then_offline.record.consecutive_failures = 1;
    let cohorts = BTreeMap::from([
        (key("a"), passing(14 * MIN)),
        (key("b"), failed_then_offline),
    ]);
    assert!(matches!(
        decide(&r, 0, &cohorts, Some(MIN), 14 * MIN),
        StepDecision::Hold { .. }
    ));
}

#[test]
fn a_step_whose_cohorts_are_all_vacant_rolls_back_at_the_timeout_not_before() {
    let r = rollout(FailureAction::Rollback);
    let cohorts = BTreeMap::from([(key("a"), vacant()), (key("b"), vacant())]);
    assert_eq!(
        hold_reason(decide(&r, 0, &cohorts, Some(MIN), 15 * MIN - 1)),
        "step 1 of 2 (10%) waiting for a/int8 inconclusive, b/int8 inconclusive; times out in 1s"
    );
    assert_eq!(
        decide(&r, 0, &cohorts, Some(MIN), 15 * MIN),
        StepDecision::Rollback {
            reason: "step 1 of 2 (10%) did not pass within 15m: a/int8 inconclusive, \
                     b/int8 inconclusive"
                .into()
        }
    );
}

#[test]
fn with_demote_a_timeout_demotes_only_the_cohorts_holding_the_step() {
    let r = rollout(FailureAction::Demote);
    let cohorts = BTreeMap::from([
        (key("a"), passing(14 * MIN)),
        (key("b"), cohort(Verdict::Pending, 0, 14 * MIN, 3)),
        (key("c"), cohort(Verdict::Pass, 0, 14 * MIN, 1)),
    ]);
    match decide(&r, 0, &cohorts, None, 16 * MIN) {
        StepDecision::Demote { cohorts, reason } => {
            assert_eq!(cohorts, [key("b"), key("c")]);
            assert_eq!(
                reason,
                "step 1 of 2 (10%) did not pass within 15m: b/int8 pending, \
                 c/int8 1 of 3 online canaries ready"
            );
        }
        other => panic!("expected Demote, got {other:?}"),
    }
}

#[test]
fn the_pause_extends_the_deadline() {
    let r = rollout(FailureAction::Rollback);
    let cohorts = BTreeMap::from([(key("a"), cohort(Verdict::Pending, 0, MIN, 3))]);
    // Step 2 pauses 60 s, so it times out at 16 min, not 15.
    assert!(matches!(
        decide(&r, 1, &cohorts, Some(0), 15 * MIN),
        StepDecision::Hold { .. }
    ));
    assert!(matches!(
        decide(&r, 1, &cohorts, Some(0), 16 * MIN),
        StepDecision::Rollback { .. }
    ));
}

#[test]
fn a_step_that_passed_is_not_timed_out_while_it_pauses() {
    let r = rollout(FailureAction::Rollback);
    // Ready late, at 15:30; passing; the pause runs past the 16 min deadline.
    let cohorts = BTreeMap::from([(key("a"), passing(16 * MIN))]);
    let ready = 15 * MIN + 30_000;
    assert_eq!(
        hold_reason(decide(&r, 1, &cohorts, Some(ready), 16 * MIN)),
        "step 2 of 2 (50%) passed; pausing 30s more"
    );
    assert!(matches!(
        decide(&r, 1, &cohorts, Some(ready), 17 * MIN),
        StepDecision::Promote { .. }
    ));
}

#[test]
fn durations_read_naturally() {
    assert_eq!(duration(0), "0s");
    assert_eq!(duration(1), "1s");
    assert_eq!(duration(45_000), "45s");
    assert_eq!(duration(90_000), "1m30s");
    assert_eq!(duration(15 * MIN), "15m");
    assert_eq!(duration(60 * MIN), "1h");
    assert_eq!(duration(95 * MIN), "1h35m");
}

fn arb_cohort() -> impl Strategy<Value = StepCohort> {
    (
        prop::sample::select(vec![
            Verdict::Pending,
            Verdict::Pass,
            Verdict::Fail,
            Verdict::Inconclusive,
        ]),
        0..4u32,
        prop::option::of(0..40 * MIN),
        1..5u32,
        0..5u32,
        0..5u32,
    )
        .prop_map(|(verdict, failures, at, canaries, online, ready)| {
            let online = online.min(canaries);
            StepCohort {
                record: CohortRecord {
                    verdict,
                    consecutive_failures: failures,
                    analyzed_at_ms: at,
                },
                readiness: CanaryReadiness {
                    canaries,
                    online,
                    ready: ready.min(online),
                },
            }
        })
}

proptest! {
    /// Advance and Promote only ever follow a fully passing, ready step whose pause is over;
    /// past the deadline, a step that is not passing never holds.
    #[test]
    fn decisions_respect_the_rules(
        cohorts in prop::collection::btree_map(
            prop::sample::select(vec!["a", "b", "c"]).prop_map(key),
            arb_cohort(),
            0..4,
        ),
        step in 0..2usize,
        ready_since in prop::option::of(0..30 * MIN),
        now in 0..40 * MIN,
        demote in any::<bool>(),
    ) {
        let r = rollout(if demote { FailureAction::Demote } else { FailureAction::Rollback });
        let decision = decide(&r, step, &cohorts, ready_since, now);
        let fresh_since = ready_since.unwrap_or(0);
        let vacant = |c: &StepCohort| {
            c.readiness.online == 0 && c.record.verdict != Verdict::Fail
        };
        let passing = cohorts.values().all(|c| {
            vacant(c)
                || (c.readiness.ready >= c.readiness.online
                    && c.record.verdict == Verdict::Pass
                    && c.record.analyzed_at_ms.is_some_and(|t| t >= fresh_since))
        }) && (cohorts.is_empty() || !cohorts.values().all(vacant));
        let ready_at = ready_since.unwrap_or(now);
        let failed = cohorts.values().any(|c| c.record.consecutive_failures >= 2);
        let pause = i64::from(r.steps[step].pause_seconds) * 1000;
        match &decision {
            StepDecision::Advance { to, .. } => {
                prop_assert!(passing && !failed && now >= ready_at + pause);
                prop_assert_eq!(*to, step + 1);
            }
            StepDecision::Promote { .. } => {
                prop_assert!(passing && !failed && now >= ready_at + pause);
                prop_assert_eq!(step, 1);
            }
            StepDecision::Hold { .. } => {
                prop_assert!(!failed);
                prop_assert!(passing || now < 15 * MIN + pause);
            }
            StepDecision::Rollback { .. } => prop_assert!(!demote),
            StepDecision::Demote { cohorts: demoted, .. } => {
                prop_assert!(demote);
                prop_assert!(!demoted.is_empty());
                prop_assert!(demoted.iter().all(|k| cohorts.contains_key(k)));
            }
        }
    }
}
