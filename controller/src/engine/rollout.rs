//! Rollout state of one deployment: which spec is the target, which was last promoted, the
//! stage, and the analysis history. Persisted in `rollouts` so a restarted controller resumes
//! exactly where it was; the transitions themselves are pure.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_core::CohortKey;
use edgefleet_core::plan::{Stage, needs_rollout};
use edgefleet_core::progression::CohortRecord;
use edgefleet_crds::{ModelDeploymentSpec, Verdict};
use serde::{Deserialize, Serialize};

use crate::store::{RolloutRow, StoreError};

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

    pub fn stage_name(&self) -> &'static str {
        match self.stage {
            Stage::Canary { .. } => "Canary",
            Stage::Promoted => "Promoted",
            Stage::RolledBack => "RolledBack",
        }
    }

    pub fn to_row(&self, uid: &str) -> Result<RolloutRow, StoreError> {
        let memory = Memory {
            target: self.target.clone(),
            previous: self.previous.clone(),
            ready_since_ms: self.ready_since_ms,
            cohorts: self
                .cohorts
                .iter()
                .map(|(key, r)| {
                    let record = RecordMemory {
                        verdict: r.verdict,
                        consecutive_failures: r.consecutive_failures,
                        analyzed_at_ms: r.analyzed_at_ms,
                    };
                    (key.to_string(), record)
                })
                .collect(),
            demotions: self.demotions.iter().map(ToString::to_string).collect(),
            last_decision: self.last_decision.clone(),
        };
        let step = match self.stage {
            Stage::Canary { step } => step as i64,
            Stage::Promoted => self.target.rollout.steps.len() as i64,
            Stage::RolledBack => -1,
        };
        Ok(RolloutRow {
            uid: uid.to_string(),
            target_version: self.target.model.version.clone(),
            stable_version: self.previous.as_ref().map(|p| p.model.version.clone()),
            stable_spec_json: None,
            step,
            phase: self.stage_name().to_string(),
            step_started_ms: self.step_started_ms,
            last_analysis_ms: self.last_analysis_ms,
            cohort_state_json: serde_json::to_string(&memory)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        })
    }

    pub fn from_row(row: &RolloutRow) -> Result<Self, StoreError> {
        let memory: Memory = serde_json::from_str(&row.cohort_state_json)
            .map_err(|e| StoreError::Corrupt(format!("rollouts.cohort_state_json: {e}")))?;
        let stage = match row.phase.as_str() {
            "Canary" => Stage::Canary {
                step: usize::try_from(row.step).unwrap_or(0),
            },
            "RolledBack" => Stage::RolledBack,
            _ => Stage::Promoted,
        };
        Ok(Self {
            target: memory.target,
            previous: memory.previous,
            stage,
            step_started_ms: row.step_started_ms,
            last_analysis_ms: row.last_analysis_ms,
            ready_since_ms: memory.ready_since_ms,
            cohorts: memory
                .cohorts
                .into_iter()
                .filter_map(|(key, r)| {
                    let record = CohortRecord {
                        verdict: r.verdict,
                        consecutive_failures: r.consecutive_failures,
                        analyzed_at_ms: r.analyzed_at_ms,
                    };
                    Some((CohortKey::parse(&key)?, record))
                })
                .collect(),
            demotions: memory
                .demotions
                .iter()
                .filter_map(|k| CohortKey::parse(k))
                .collect(),
            last_decision: memory.last_decision,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Memory {
    target: ModelDeploymentSpec,
    previous: Option<ModelDeploymentSpec>,
    ready_since_ms: Option<i64>,
    cohorts: BTreeMap<String, RecordMemory>,
    demotions: Vec<String>,
    last_decision: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordMemory {
    verdict: Verdict,
    consecutive_failures: u32,
    analyzed_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(version: &str) -> ModelDeploymentSpec {
        let yaml = format!(
            "model: {{name: m, version: '{version}'}}\nvariants:\n- name: fp32\n  precision: fp32\n  artifact: {{uri: 'http://a/{version}', sha256: '{}', sizeBytes: 1}}\n",
            "ab".repeat(32)
        );
        serde_yaml::from_str(&yaml).expect("spec")
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

    #[test]
    fn state_round_trips_through_its_row() {
        let mut state = RolloutState::first(&spec("1"), 0).with_spec(&spec("2"), 10);
        state.cohorts.insert(
            CohortKey::new("x86_64-none-mem4g", "fp32"),
            CohortRecord {
                verdict: Verdict::Fail,
                consecutive_failures: 1,
                analyzed_at_ms: Some(5),
            },
        );
        state
            .demotions
            .insert(CohortKey::new("aarch64-none-mem1g", "fp32"));
        state.ready_since_ms = Some(3);
        let row = state.to_row("uid").expect("row");
        assert_eq!(RolloutState::from_row(&row).expect("state"), state);
        let rolled_back = RolloutState {
            stage: Stage::RolledBack,
            ..state
        };
        let row = rolled_back.to_row("uid").expect("row");
        assert_eq!(
            RolloutState::from_row(&row).expect("state").stage,
            Stage::RolledBack
        );
    }
}
