//! `ModelDeployment.status` from the plan, the devices' reports and the rollout state. Pure:
//! the same inputs give the same status, so the adapters patch only when something changed.

use std::collections::BTreeMap;

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
    let on_target = |r: &&AssignmentRecord| &r.version == target_version;
    let ready = |r: &&AssignmentRecord| r.is_ready();
    let counts = &input.plan.counts;
    let devices = DeviceCounts {
        matched: counts.matched,
        assigned: counts.assigned,
        updated: input.rows.iter().filter(on_target).count() as u32,
        ready: input.rows.iter().filter(on_target).filter(ready).count() as u32,
        failed: input.rows.iter().filter(|r| r.is_failed()).count() as u32,
        offline: counts.offline,
        no_fit: counts.no_fit,
        demoted: counts.demoted,
        kept_previous: counts.kept_previous,
    };

    let online: std::collections::HashSet<&str> = input
        .plan
        .devices
        .iter()
        .filter(|d| d.online)
        .map(|d| d.device.as_str())
        .collect();
    let settled = input
        .rows
        .iter()
        .filter(|r| online.contains(r.device_id.as_str()))
        .all(|r| ready(&r));
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
            let rows = || {
                input
                    .rows
                    .iter()
                    .filter(on_target)
                    .filter(|r| r.variant == v.name)
            };
            VariantStatus {
                name: v.name.clone(),
                devices: rows().count() as u32,
                ready: rows().filter(ready).count() as u32,
                p95_latency_ms: input.variant_p95_ms.get(&v.name).map(|p| round2(*p)),
            }
        })
        .filter(|v| v.devices > 0)
        .collect();

    // The step's canary cohorts, plus any judged earlier (after a rollback they explain why).
    let canary_cohorts = input.plan.canary_cohorts();
    let keys: std::collections::BTreeSet<&CohortKey> = canary_cohorts
        .keys()
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
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.is_failed())
        .map(|r| {
            format!(
                "{}: {}",
                r.device_id,
                r.phase_reason.as_deref().unwrap_or("no reason given")
            )
        })
        .collect();
    match failed.len() {
        0 => "no device reports a failure".into(),
        n if n <= 3 => failed.join("; "),
        n => format!("{} and {} more", failed[..3].join("; "), n - 3),
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
