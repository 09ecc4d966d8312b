//! Rollout state of one deployment: which spec is the target, which was last promoted, the
//! stage, and the analysis history. The controller persists it so a restarted controller
//! resumes exactly where it was; the transitions here are pure.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_crds::ModelDeploymentSpec;

use crate::cohort::CohortKey;
use crate::plan::{Stage, needs_rollout};
use crate::progression::CohortRecord;

/// Something worth a Kubernetes Event (or a line in `describe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutEvent {
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutState {
    pub target: ModelDeploymentSpec,
    /// The spec last promoted (what non-canary devices run), if any.
    pub previous: Option<ModelDeploymentSpec>,
    pub stage: Stage,
    pub step_started_ms: i64,
    pub last_analysis_ms: i64,
    pub ready_since_ms: Option<i64>,
    pub cohorts: BTreeMap<CohortKey, CohortRecord>,
    pub demotions: BTreeSet<CohortKey>,
    /// The last decision, for status and `describe`.
    pub last_decision: String,
}

impl RolloutState {
    /// The first time a deployment is seen: every device gets the target directly.
    pub fn first(spec: &ModelDeploymentSpec, now_ms: i64) -> Self {
        Self {
            target: spec.clone(),
            previous: None,
            stage: Stage::Promoted,
            step_started_ms: now_ms,
            last_analysis_ms: 0,
            ready_since_ms: None,
            cohorts: BTreeMap::new(),
            demotions: BTreeSet::new(),
            last_decision: format!("first deployment of {}", spec.model.version),
        }
    }

    /// Where the rollout goes when the spec is (perhaps) edited. Model, variant or selection
    /// changes start a canary rollout from step 1; other edits apply in place.
    pub fn with_spec(self, spec: &ModelDeploymentSpec, now_ms: i64) -> Self {
        if &self.target == spec {
            return self;
        }
        if !needs_rollout(spec, Some(&self.target)) {
            return Self {
                target: spec.clone(),
                ..self
            };
        }
        // What devices run now becomes the baseline: the promoted target, or — if this
        // rollout never finished — the version it was replacing.
        let previous = match self.stage {
            Stage::Promoted => Some(self.target),
            Stage::Canary { .. } | Stage::RolledBack => self.previous,
        };
        let stage = if previous.is_some() {
            Stage::Canary { step: 0 }
        } else {
            Stage::Promoted
        };
        Self {
            target: spec.clone(),
            previous,
            stage,
            step_started_ms: now_ms,
            last_analysis_ms: 0,
            ready_since_ms: None,
            cohorts: BTreeMap::new(),
            demotions: BTreeSet::new(),
            last_decision: format!("new version {}: rollout started", spec.model.version),
        }
    }

    /// The variant names of the target and previous specs: the only values the `variant`
    /// label of this deployment's series may take.
    pub fn variant_names(&self) -> BTreeSet<String> {
        let previous = self.previous.iter().flat_map(|p| &p.variants);
        self.target
            .variants
            .iter()
            .chain(previous)
            .map(|v| v.name.clone())
            .collect()
    }

    pub fn stage_name(&self) -> &'static str {
        match self.stage {
            Stage::Canary { .. } => "Canary",
            Stage::Promoted => "Promoted",
            Stage::RolledBack => "RolledBack",
        }
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_crds::Precision;

    use super::*;
    use crate::testutil::variant;

    fn spec(version: &str) -> ModelDeploymentSpec {
        crate::testutil::spec(version, vec![variant("fp32", Precision::Fp32, None)])
    }

    #[test]
    fn new_versions_start_a_canary_from_the_promoted_one() {
        let first = RolloutState::first(&spec("1"), 0);
        assert_eq!(first.stage, Stage::Promoted);
        let second = first.clone().with_spec(&spec("2"), 10);
        assert_eq!(second.stage, Stage::Canary { step: 0 });
        assert_eq!(
            second.previous.as_ref().map(|p| p.model.version.as_str()),
            Some("1")
        );
        assert_eq!(second.step_started_ms, 10);
        // a third version mid-rollout keeps the baseline that devices actually run
        let third = second.with_spec(&spec("3"), 20);
        assert_eq!(
            third.previous.as_ref().map(|p| p.model.version.as_str()),
            Some("1")
        );
    }

    #[test]
    fn edits_that_do_not_change_the_model_apply_in_place() {
        let state = RolloutState::first(&spec("1"), 0).with_spec(&spec("2"), 10);
        let mut edited = spec("2");
        edited.rollout.analysis.min_samples = 7;
        let after = state.clone().with_spec(&edited, 50);
        assert_eq!(after.stage, state.stage);
        assert_eq!(after.step_started_ms, 10);
        assert_eq!(after.target.rollout.analysis.min_samples, 7);
    }
}
