//! EdgeFleet's decisions, as pure functions over plain data: no I/O, no clock, no Kubernetes
//! client. The controller's adapters feed them inventory and telemetry and carry out the result.
//!
//! Time is always passed in (milliseconds since the Unix epoch), so every decision can be
//! replayed and tested synchronously.
//!
//! - [`device`]: device facts, label selectors, the bounded device class;
//! - [`variant`]: which variant a device gets, with a human-readable reason;
//! - [`cohort`]: (device class, variant) groups that canary analysis compares;
//! - [`canary`]: which devices run the new version at each step;
//! - [`analysis`]: a canary cohort's verdict for one interval;
//! - [`progression`]: hold, advance, promote, roll back or demote a step;
//! - [`plan`]: the glue: every selected device's version, variant and role;
//! - [`rollout`]: a deployment's rollout state and how a spec edit moves it;
//! - [`pacing`]: how many devices may switch models at once;
//! - [`desired`]: a device's full desired document and its generation;
//! - [`progress`]: one canary turn: analyse, decide, move the state;
//! - [`status`]: the `ModelDeployment` status from all of the above;
//! - [`artifacts`]: `oci://` artifacts replaced by what their tags resolved to;
//! - [`site`]: which site cache each device downloads through;
//! - [`replay`]: which telemetry windows count, once each, across replicas.
//! - [`shared`]: one copy of the values many devices hold alike.
//!
//! Assignments as stored ([`assignment::AssignmentRecord`]) carry typed roles and phases.

pub mod analysis;
pub mod artifacts;
pub mod assignment;
pub mod canary;
pub mod cohort;
pub mod desired;
pub mod device;
pub mod pacing;
pub mod plan;
pub mod progress;
pub mod progression;
pub mod replay;
pub mod rollout;
pub mod shared;
pub mod site;
pub mod status;
pub mod variant;

/// Builders for tests of this crate and of the controller (feature `testutil`).
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;

pub use analysis::{Baseline, CohortVerdict, CohortWindow, Liveness, Thresholds, analyze_cohort};
pub use assignment::AssignmentRecord;
pub use canary::{Tier, canary_count, canary_members, canary_members_by_tier, membership_hash};
pub use cohort::{Cohort, CohortKey, group_by_cohort};
pub use device::{DeviceFacts, device_class, selector_matches};
pub use plan::{
    DevicePlan, PlanCounts, PlannedAssignment, RolloutPlan, Source, Stage, needs_rollout,
    plan_rollout,
};
pub use progression::{
    CanaryReadiness, CohortRecord, StepCohort, StepDecision, StepState, decide_step, ready_since,
    step_percent,
};
pub use variant::{Choice, Rejection, accuracy, choose_variant, next_best, unmet_requirements};

/// A number for a human: at most four decimals, without trailing zeros (`0.98`, `12.5`, `3`).
pub(crate) fn fmt_num(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_num;

    #[test]
    fn numbers_print_without_noise() {
        assert_eq!(fmt_num(0.98), "0.98");
        assert_eq!(fmt_num(1.0 - 0.02), "0.98");
        assert_eq!(fmt_num(100.0), "100");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(-0.00001), "0");
        assert_eq!(fmt_num(14.75), "14.75");
        assert_eq!(fmt_num(1.0 / 3.0), "0.3333");
    }
}
