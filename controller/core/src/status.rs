//! `ModelDeployment.status` from the plan, the devices' reports and the rollout state. Pure:
//! the same inputs give the same status, so the adapters patch only when something changed.

use std::collections::{BTreeMap, HashMap};

use crate::assignment::AssignmentRecord;
use crate::plan::{RolloutPlan, Source, Stage};
use crate::rollout::RolloutState;
use crate::{CohortKey, CohortVerdict};
use edgefleet_crds::validate::FieldError;
use edgefleet_crds::{
    CohortStatus, Condition, DeviceCounts, ModelDeploymentStatus, Phase, VariantStatus,
};

pub struct StatusInput<'a> {
    pub generation: Option<i64>,
    pub state: &'a RolloutState,
    pub plan: &'a RolloutPlan,
    pub rows: &'a [AssignmentRecord],
    /// Verdicts reached in this reconcile (numbers for the cohorts' status).
    pub verdicts: &'a BTreeMap<CohortKey, CohortVerdict>,
    /// p95 per target variant from telemetry, in ms.
    pub variant_p95_ms: &'a BTreeMap<String, f64>,
    pub previous: Option<&'a ModelDeploymentStatus>,
    pub now_rfc3339: &'a str,
}

pub fn build_status(input: &StatusInput<'_>) -> ModelDeploymentStatus {
    let target_version = &input.state.target.model.version;
    let rows = RowTally::of(input.rows, target_version);
    let counts = &input.plan.counts;
    let devices = DeviceCounts {
        matched: counts.matched,
        assigned: counts.assigned,
        updated: rows.updated,
        ready: rows.ready,
        failed: rows.failed,
        offline: counts.offline,
        no_fit: counts.no_fit,
        demoted: counts.demoted,
        kept_previous: counts.kept_previous,
    };
    // settled: every device online is ready (only the rows not ready need a look at the plan)
    let settled = input
        .rows
        .iter()
        .filter(|r| !r.is_ready())
        .all(|r| !input.plan.is_online(&r.device_id));
    let (phase, current_step) = match input.state.stage {
        Stage::Canary { step } => (Phase::Progressing, step as u32 + 1),
        Stage::Promoted if settled => (
            Phase::Succeeded,
            input.state.target.rollout.steps.len() as u32 + 1,
        ),
        Stage::Promoted => (
            Phase::Progressing,
            input.state.target.rollout.steps.len() as u32 + 1,
        ),
        Stage::RolledBack => (Phase::RolledBack, 0),
    };

    let variants = input
        .state
        .target
        .variants
        .iter()
        .map(|v| {
            let (devices, ready) = rows
                .by_variant
                .get(v.name.as_str())
                .copied()
                .unwrap_or_default();
            VariantStatus {
                name: v.name.clone(),
                devices,
                ready,
                p95_latency_ms: input.variant_p95_ms.get(&v.name).map(|p| round2(*p)),
            }
        })
        .filter(|v| v.devices > 0)
        .collect();

    // The step's canary cohorts, plus any judged earlier (after a rollback they explain why).
    let canary_cohorts = input.plan.canary_cohorts();
    let keys: std::collections::BTreeSet<&CohortKey> = canary_cohorts
        .keys()
        .copied()
        .chain(input.state.cohorts.keys())
        .collect();
    let cohorts = keys
        .into_iter()
        .map(|key| {
            let record = input.state.cohorts.get(key).copied().unwrap_or_default();
            let verdict = input.verdicts.get(key);
            let previous = input
                .previous
                .and_then(|p| p.cohorts.iter().find(|c| c.name == key.to_string()));
            CohortStatus {
                name: key.to_string(),
                device_class: key.device_class.clone(),
                variant: key.variant.clone(),
                devices: canary_cohorts.get(key).map_or(0, |m| m.len() as u32),
                verdict: record.verdict,
                samples: verdict
                    .map(|v| v.samples)
                    .or(previous.map(|p| p.samples))
                    .unwrap_or(0),
                p95_latency_ms: verdict
                    .map(|v| v.p95_ms.map(round2))
                    .unwrap_or_else(|| previous.and_then(|p| p.p95_latency_ms)),
                error_rate: verdict
                    .map(|v| v.error_rate)
                    .unwrap_or_else(|| previous.and_then(|p| p.error_rate)),
                offload_ratio: verdict
                    .map(|v| v.offload_ratio.map(round4))
                    .unwrap_or_else(|| previous.and_then(|p| p.offload_ratio)),
                p95_ttft_ms: verdict
                    .map(|v| v.p95_ttft_ms.map(round2))
                    .unwrap_or_else(|| previous.and_then(|p| p.p95_ttft_ms)),
                decode_tokens_per_second: verdict
                    .map(|v| v.decode_tokens_per_second.map(round2))
                    .unwrap_or_else(|| previous.and_then(|p| p.decode_tokens_per_second)),
                consecutive_failures: record.consecutive_failures,
                message: verdict
                    .map(|v| v.message.clone())
                    .or_else(|| previous.and_then(|p| p.message.clone())),
            }
        })
        .collect();

    let progressing = phase == Phase::Progressing;
    let conditions = vec![
        condition(
            input,
            "SpecValid",
            true,
            "Valid",
            "spec passed validation".into(),
        ),
        condition(
            input,
            "Ready",
            phase == Phase::Succeeded,
            phase.as_str(),
            input.state.last_decision.clone(),
        ),
        condition(
            input,
            "Progressing",
            progressing,
            phase.as_str(),
            input.state.last_decision.clone(),
        ),
        condition(
            input,
            "Degraded",
            devices.failed > 0,
            if devices.failed > 0 {
                "DevicesFailed"
            } else {
                "NoFailures"
            },
            failed_devices(input.rows),
        ),
        condition(
            input,
            "Demoted",
            !input.state.demotions.is_empty(),
            if input.state.demotions.is_empty() {
                "NoDemotions"
            } else {
                "CohortsDemoted"
            },
            demoted_cohorts(input),
        ),
    ];

    ModelDeploymentStatus {
        observed_generation: input.generation,
        phase,
        target_version: Some(target_version.clone()),
        current_step,
        devices,
        variants,
        cohorts,
        conditions,
    }
}

/// What the rows say, counted in one pass.
struct RowTally<'a> {
    /// Rows on the target version, and those of them ready.
    updated: u32,
    ready: u32,
    failed: u32,
    /// Per variant of the target version: (rows, ready).
    by_variant: HashMap<&'a str, (u32, u32)>,
}

impl<'a> RowTally<'a> {
    fn of(rows: &'a [AssignmentRecord], target_version: &str) -> Self {
        let mut tally = Self {
            updated: 0,
            ready: 0,
            failed: 0,
            by_variant: HashMap::new(),
        };
        for row in rows {
            tally.failed += u32::from(row.is_failed());
            if row.version() != target_version {
                continue;
            }
            let ready = u32::from(row.is_ready());
            tally.updated += 1;
            tally.ready += ready;
            let variant = tally.by_variant.entry(row.variant()).or_default();
            variant.0 += 1;
            variant.1 += ready;
        }
        tally
    }
}

/// Status of a spec that failed validation: nothing is sent to devices.
pub fn invalid_status(
    generation: Option<i64>,
    errors: &[FieldError],
    previous: Option<&ModelDeploymentStatus>,
    now_rfc3339: &str,
) -> ModelDeploymentStatus {
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.phase = Phase::Failed;
    let keep = |type_: &str, truthy: bool| {
        previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| (c.status == "True") == truthy)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now_rfc3339.to_string())
    };
    status.conditions = vec![Condition {
        type_: "SpecValid".into(),
        status: "False".into(),
        reason: "InvalidSpec".into(),
        message,
        last_transition_time: Some(keep("SpecValid", false)),
        observed_generation: generation,
    }];
    status
}

/// The status while an `oci://` artifact cannot be resolved (registry down, credentials
/// refused, tag missing): the rollout stays where it was and devices keep what they run, with
/// a false `ArtifactsResolved` condition saying why.
pub fn unresolved_status(
    generation: Option<i64>,
    message: &str,
    previous: Option<&ModelDeploymentStatus>,
    now_rfc3339: &str,
) -> ModelDeploymentStatus {
    const TYPE: &str = "ArtifactsResolved";
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let since = previous
        .and_then(|p| {
            p.conditions
                .iter()
                .find(|c| c.type_ == TYPE && c.status == "False")
        })
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now_rfc3339.to_string());
    status.conditions.retain(|c| c.type_ != TYPE);
    status.conditions.push(Condition {
        type_: TYPE.into(),
        status: "False".into(),
        reason: "ArtifactUnresolved".into(),
        message: message.to_string(),
        last_transition_time: Some(since),
        observed_generation: generation,
    });
    status
}

/// Which cohorts were demoted and what their devices run instead, for the Demoted condition.
fn demoted_cohorts(input: &StatusInput<'_>) -> String {
    if input.state.demotions.is_empty() {
        return "no cohort was demoted".into();
    }
    let previous_version = input.state.previous.as_ref().map(|p| &p.model.version);
    let lines: Vec<String> = input
        .state
        .demotions
        .iter()
        .map(|key| {
            let members = input.plan.devices.iter().filter(|d| {
                *d.device_class == *key.device_class
                    && d.demoted_from.as_deref() == Some(key.variant.as_str())
            });
            let (mut next_best, mut kept, mut nothing) = (BTreeMap::new(), 0, 0);
            for d in members {
                match &d.assignment {
                    Some(a) if a.source == Source::Previous => kept += 1,
                    Some(a) => *next_best.entry(a.variant.name.as_str()).or_insert(0) += 1,
                    None => nothing += 1,
                }
            }
            let mut parts: Vec<String> = next_best
                .iter()
                .map(|(variant, n)| format!("{n} run {variant}"))
                .collect();
            if kept > 0 {
                let version = previous_version.map_or("the previous version", |v| v.as_str());
                parts.push(format!("{kept} keep {version}"));
            }
            if nothing > 0 {
                parts.push(format!("{nothing} run nothing"));
            }
            if parts.is_empty() {
                parts.push("no device now".into());
            }
            format!("{key} demoted: {}", parts.join(", "))
        })
        .collect();
    lines.join("; ")
}

/// Which devices failed and why (the first few), for the Degraded condition.
fn failed_devices(rows: &[AssignmentRecord]) -> String {
    let mut failed = rows.iter().filter(|r| r.is_failed());
    let named: Vec<String> = failed
        .by_ref()
        .take(3)
        .map(|r| {
            format!(
                "{}: {}",
                r.device_id,
                r.phase_reason.as_deref().unwrap_or("no reason given")
            )
        })
        .collect();
    match (named.len(), failed.count()) {
        (0, _) => "no device reports a failure".into(),
        (_, 0) => named.join("; "),
        (_, more) => format!("{} and {more} more", named.join("; ")),
    }
}

/// A condition whose transition time only moves when its status flips, so re-reconciling an
/// unchanged deployment produces an identical status (and no patch).
fn condition(
    input: &StatusInput<'_>,
    type_: &str,
    truthy: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if truthy { "True" } else { "False" };
    let since = input
        .previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| input.now_rfc3339.to_string());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: Some(since),
        observed_generation: input.generation,
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn round4(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use edgefleet_crds::Precision;
    use edgefleet_protocol::wire::{ModelPhase, Role};

    use super::*;
    use crate::plan::plan_rollout;
    use crate::testutil::{device, record, spec, variant};

    fn status_of(
        devices: &[crate::DeviceFacts],
        rows: &[AssignmentRecord],
    ) -> ModelDeploymentStatus {
        let spec = spec("2", vec![variant("int8", Precision::Int8, None)]);
        let state = RolloutState::first(&spec, 0);
        let plan = plan_rollout("u", &spec, None, Stage::Promoted, devices, &BTreeSet::new());
        build_status(&StatusInput {
            generation: Some(1),
            state: &state,
            plan: &plan,
            rows,
            verdicts: &BTreeMap::new(),
            variant_p95_ms: &BTreeMap::new(),
            previous: None,
            now_rfc3339: "2026-12-07T00:00:00Z",
        })
    }

    #[test]
    fn counts_come_from_the_rows_and_only_online_devices_hold_up_success() {
        let mut offline = device("e");
        offline.online = false;
        let devices = [device("a"), device("b"), device("c"), offline];
        let ready = Some(ModelPhase::Ready);
        let mut rows = vec![
            record("a", "2", Role::Stable, ready),
            record("b", "2", Role::Stable, ready),
            record("c", "1", Role::Stable, ready),
            record("e", "2", Role::Stable, Some(ModelPhase::Downloading)),
        ];
        let status = status_of(&devices, &rows);
        assert_eq!(
            (status.devices.updated, status.devices.ready),
            (3, 2),
            "c is still on 1"
        );
        assert_eq!(status.variants.len(), 1);
        assert_eq!(
            (status.variants[0].devices, status.variants[0].ready),
            (3, 2)
        );
        assert_eq!(status.phase, Phase::Succeeded, "e is offline");

        rows[1].phase = Some(ModelPhase::Downloading);
        assert_eq!(
            status_of(&devices, &rows).phase,
            Phase::Progressing,
            "b is online"
        );
    }

    #[test]
    fn the_degraded_condition_names_three_failed_devices_and_counts_the_rest() {
        let names = ["a", "b", "c", "d", "e"];
        let devices: Vec<_> = names.iter().map(|n| device(n)).collect();
        let mut rows: Vec<_> = names
            .iter()
            .map(|n| record(n, "2", Role::Stable, Some(ModelPhase::Failed)))
            .collect();
        rows[0].phase_reason = Some("disk full".into());
        let message = |rows: &[AssignmentRecord]| {
            let status = status_of(&devices, rows);
            let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
            (
                status.devices.failed,
                degraded.expect("Degraded").message.clone(),
            )
        };
        assert_eq!(
            message(&rows),
            (
                5,
                "a: disk full; b: no reason given; c: no reason given and 2 more".into()
            )
        );
        assert_eq!(
            message(&rows[..2]),
            (2, "a: disk full; b: no reason given".into())
        );
        assert_eq!(message(&[]), (0, "no device reports a failure".into()));
    }
}
