//! `rollouts` and `history`: where each deployment's rollout stands and what it decided.

use std::collections::BTreeMap;

use edgefleet_core::CohortKey;
use edgefleet_core::plan::Stage;
use edgefleet_core::progression::CohortRecord;
use edgefleet_core::rollout::RolloutState;
use edgefleet_crds::{ModelDeploymentSpec, Verdict};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::*;

impl Store {
    /// `(namespace, name)` of every deployment with a rollout.
    pub async fn rollout_keys(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT namespace, name FROM rollouts ORDER BY namespace, name")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn rollout(&self, namespace: &str, name: &str) -> Result<Option<RolloutRow>> {
        let row = sqlx::query(
            "SELECT uid, target_version, stable_version, stable_spec_json, step, phase, step_started_ms,
                    last_analysis_ms, cohort_state_json
             FROM rollouts WHERE namespace = $1 AND name = $2",
        )
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(RolloutRow {
                uid: r.try_get(0)?,
                target_version: r.try_get(1)?,
                stable_version: r.try_get(2)?,
                stable_spec_json: r.try_get(3)?,
                step: r.try_get(4)?,
                phase: r.try_get(5)?,
                step_started_ms: r.try_get(6)?,
                last_analysis_ms: r.try_get(7)?,
                cohort_state_json: r.try_get(8)?,
            })
        })
        .transpose()
    }

    pub async fn put_rollout(
        &self,
        namespace: &str,
        name: &str,
        row: &RolloutRow,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO rollouts (namespace, name, uid, target_version, stable_version, stable_spec_json, step,
               phase, step_started_ms, last_analysis_ms, cohort_state_json, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (namespace, name) DO UPDATE SET uid = excluded.uid,
               target_version = excluded.target_version, stable_version = excluded.stable_version,
               stable_spec_json = excluded.stable_spec_json, step = excluded.step, phase = excluded.phase,
               step_started_ms = excluded.step_started_ms, last_analysis_ms = excluded.last_analysis_ms,
               cohort_state_json = excluded.cohort_state_json, updated_ms = excluded.updated_ms",
        )
        .bind(namespace)
        .bind(name)
        .bind(&row.uid)
        .bind(&row.target_version)
        .bind(&row.stable_version)
        .bind(&row.stable_spec_json)
        .bind(row.step)
        .bind(&row.phase)
        .bind(row.step_started_ms)
        .bind(row.last_analysis_ms)
        .bind(&row.cohort_state_json)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn append_history(
        &self,
        namespace: &str,
        name: &str,
        event: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO rollout_history (namespace, name, seq, at_ms, event, detail)
             SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3, $4, $5 FROM rollout_history
             WHERE namespace = $6 AND name = $7",
        )
        .bind(namespace)
        .bind(name)
        .bind(now_ms)
        .bind(event)
        .bind(detail)
        .bind(namespace)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn history(&self, namespace: &str, name: &str) -> Result<Vec<(i64, String, String)>> {
        let rows = sqlx::query(
            "SELECT at_ms, event, detail FROM rollout_history WHERE namespace = $1 AND name = $2 ORDER BY seq",
        )
        .bind(namespace)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }
}

// ------------------------------------------------------------ rows <-> rollout state

/// The row that persists `state` for the deployment object `uid`.
pub fn rollout_row(state: &RolloutState, uid: &str) -> Result<RolloutRow> {
    let memory = Memory {
        target: state.target.clone(),
        previous: state.previous.clone(),
        ready_since_ms: state.ready_since_ms,
        cohorts: state
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
        demotions: state.demotions.iter().map(ToString::to_string).collect(),
        last_decision: state.last_decision.clone(),
    };
    let step = match state.stage {
        Stage::Canary { step } => step as i64,
        Stage::Promoted => state.target.rollout.steps.len() as i64,
        Stage::RolledBack => -1,
    };
    Ok(RolloutRow {
        uid: uid.to_string(),
        target_version: state.target.model.version.clone(),
        stable_version: state.previous.as_ref().map(|p| p.model.version.clone()),
        stable_spec_json: None,
        step,
        phase: state.stage_name().to_string(),
        step_started_ms: state.step_started_ms,
        last_analysis_ms: state.last_analysis_ms,
        cohort_state_json: serde_json::to_string(&memory)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}

/// The state a stored row holds.
pub fn rollout_state(row: &RolloutRow) -> Result<RolloutState> {
    let memory: Memory = serde_json::from_str(&row.cohort_state_json)
        .map_err(|e| StoreError::Corrupt(format!("rollouts.cohort_state_json: {e}")))?;
    let stage = match row.phase.as_str() {
        "Canary" => Stage::Canary {
            step: usize::try_from(row.step).unwrap_or(0),
        },
        "RolledBack" => Stage::RolledBack,
        _ => Stage::Promoted,
    };
    Ok(RolloutState {
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
    use edgefleet_crds::Precision;

    use super::*;

    fn spec(version: &str) -> ModelDeploymentSpec {
        let yaml = format!(
            "model: {{name: m, version: '{version}'}}\nvariants:\n- name: fp32\n  precision: fp32\n  artifact: {{uri: 'http://a/{version}', sha256: '{}', sizeBytes: 1}}\n",
            "ab".repeat(32)
        );
        let spec: ModelDeploymentSpec = serde_yaml::from_str(&yaml).expect("spec");
        assert_eq!(spec.variants[0].precision, Precision::Fp32);
        spec
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
        let row = rollout_row(&state, "uid").expect("row");
        assert_eq!(rollout_state(&row).expect("state"), state);
        let rolled_back = RolloutState {
            stage: Stage::RolledBack,
            ..state
        };
        let row = rollout_row(&rolled_back, "uid").expect("row");
        assert_eq!(rollout_state(&row).expect("state").stage, Stage::RolledBack);
    }
}
