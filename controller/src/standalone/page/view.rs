//! What the fleet page shows, built from plain data (stored deployments, their assignments and
//! history, the inventory, downloads, the latency history): a pure function, tested without a
//! server. The page renders this JSON as it is.

use std::collections::BTreeMap;

use edgefleet_core::variant::{Choice, choose_variant};
use edgefleet_core::{AssignmentRecord, DeviceFacts};
use edgefleet_crds::{ModelDeploymentSpec, ModelDeploymentStatus};
use serde::{Deserialize, Serialize};

use crate::clock::rfc3339;
use crate::inventory::Progress;
use crate::store::StoredDeployment;

use super::history::Series;

/// The page lists this many devices (sorted by id) and says how many it left out: a page is
/// for looking at, and one machine's fleet is small.
pub const MAX_DEVICES: usize = 500;
/// The newest events across all deployments.
pub const MAX_EVENTS: usize = 30;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    pub generated_at: String,
    pub deployments: Vec<DeploymentView>,
    pub devices: Vec<DeviceView>,
    /// All devices known, of which `devices` lists at most [`MAX_DEVICES`].
    pub devices_total: usize,
    pub devices_online: usize,
    pub events: Vec<EventView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentView {
    /// `namespace/name`.
    pub name: String,
    pub model: String,
    pub target_version: Option<String>,
    pub phase: String,
    /// 1-based; `steps + 1` means fully promoted.
    pub step: u32,
    pub steps: u32,
    pub matched: u32,
    pub ready: u32,
    pub failed: u32,
    pub no_fit: u32,
    pub conditions: Vec<ConditionView>,
    pub cohorts: Vec<CohortView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CohortView {
    /// `<deviceClass>/<variant>`.
    pub name: String,
    pub devices: u32,
    pub verdict: String,
    pub samples: u64,
    pub p95_latency_ms: Option<f64>,
    pub error_rate: Option<f64>,
    pub p95_ttft_ms: Option<f64>,
    pub message: Option<String>,
    /// p95 latency over time: `[unix ms, p95 ms]`, oldest first.
    pub p95_history: Vec<(i64, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    pub id: String,
    pub device_class: String,
    pub arch: String,
    pub memory_mib: u64,
    pub online: bool,
    pub runs: Vec<RunView>,
}

/// One deployment on one device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub deployment: String,
    pub version: Option<String>,
    pub variant: Option<String>,
    pub role: Option<String>,
    /// The device's last report (`Downloading`, `Ready`, …), `Assigned` before it reports,
    /// `NoFit` when no variant fits it.
    pub state: String,
    /// `45% of 98.4 MB` while downloading.
    pub progress: Option<String>,
    /// Why the device runs this variant (or why none fits); the device's error when it failed.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub at: String,
    pub deployment: String,
    pub event: String,
    pub detail: String,
}

/// One stored deployment with what the store knows about it.
pub struct DeploymentInput {
    pub stored: StoredDeployment,
    pub assignments: Vec<AssignmentRecord>,
    /// `(at ms, event, detail)`, oldest first.
    pub history: Vec<(i64, String, String)>,
}

/// One device with its downloads in progress (by `namespace/name`).
pub struct DeviceInput {
    pub facts: DeviceFacts,
    pub downloads: BTreeMap<String, Progress>,
}

pub fn build(
    deployments: &[DeploymentInput],
    devices: &[DeviceInput],
    latency: &BTreeMap<(String, String), Series>,
    now_ms: i64,
) -> FleetView {
    let specs: Vec<Option<ModelDeploymentSpec>> = deployments
        .iter()
        .map(|d| serde_json::from_str(&d.stored.spec_json).ok())
        .collect();
    let mut sorted: Vec<&DeviceInput> = devices.iter().collect();
    sorted.sort_by(|a, b| a.facts.id.as_str().cmp(b.facts.id.as_str()));
    let device_views = sorted
        .iter()
        .take(MAX_DEVICES)
        .map(|device| device_view(device, deployments, &specs))
        .collect();
    let mut events: Vec<(i64, EventView)> = deployments
        .iter()
        .flat_map(|d| {
            let name = key(&d.stored);
            d.history.iter().map(move |(at, event, detail)| {
                (
                    *at,
                    EventView {
                        at: rfc3339(*at),
                        deployment: name.clone(),
                        event: event.clone(),
                        detail: detail.clone(),
                    },
                )
            })
        })
        .collect();
    // Newest first; the sort is stable, so one deployment's same-millisecond events keep
    // their recorded order (reversed with the rest).
    events.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    FleetView {
        generated_at: rfc3339(now_ms),
        deployments: deployments
            .iter()
            .zip(&specs)
            .map(|(d, spec)| deployment_view(d, spec.as_ref(), latency))
            .collect(),
        devices: device_views,
        devices_total: devices.len(),
        devices_online: devices.iter().filter(|d| d.facts.online).count(),
        events: events
            .into_iter()
            .take(MAX_EVENTS)
            .map(|(_, event)| event)
            .collect(),
    }
}

fn key(stored: &StoredDeployment) -> String {
    format!("{}/{}", stored.namespace, stored.name)
}

fn deployment_view(
    input: &DeploymentInput,
    spec: Option<&ModelDeploymentSpec>,
    latency: &BTreeMap<(String, String), Series>,
) -> DeploymentView {
    let name = key(&input.stored);
    let status: ModelDeploymentStatus = input
        .stored
        .status_json
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let phase = if input.stored.deleting {
        "Terminating".to_string()
    } else {
        status.phase.as_str().to_string()
    };
    let cohorts = status
        .cohorts
        .iter()
        .map(|c| CohortView {
            name: c.name.clone(),
            devices: c.devices,
            verdict: c.verdict.as_str().to_string(),
            samples: c.samples,
            p95_latency_ms: c.p95_latency_ms,
            error_rate: c.error_rate,
            p95_ttft_ms: c.p95_ttft_ms,
            message: c.message.clone(),
            p95_history: latency
                .get(&(name.clone(), c.name.clone()))
                .map(Series::points)
                .unwrap_or_default(),
        })
        .collect();
    DeploymentView {
        model: spec.map(|s| s.model.name.clone()).unwrap_or_default(),
        target_version: status.target_version.clone(),
        phase,
        step: status.current_step,
        steps: spec.map_or(0, |s| {
            u32::try_from(s.rollout.steps.len()).unwrap_or(u32::MAX)
        }),
        matched: status.devices.matched,
        ready: status.devices.ready,
        failed: status.devices.failed,
        no_fit: status.devices.no_fit,
        conditions: status
            .conditions
            .iter()
            .map(|c| ConditionView {
                kind: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect(),
        cohorts,
        name,
    }
}

fn device_view(
    device: &DeviceInput,
    deployments: &[DeploymentInput],
    specs: &[Option<ModelDeploymentSpec>],
) -> DeviceView {
    let facts = &device.facts;
    let mut runs = Vec::new();
    for (input, spec) in deployments.iter().zip(specs) {
        let name = key(&input.stored);
        let record = input
            .assignments
            .iter()
            .find(|r| r.device_id == facts.id.as_str());
        if let Some(record) = record {
            let state = record.phase.map_or("Assigned", |p| p.as_str()).to_string();
            let reason = match (&record.phase_reason, record.is_ready()) {
                (Some(why), false) if !why.is_empty() => format!("{why} ({})", record.reason),
                _ => record.reason.to_string(),
            };
            runs.push(RunView {
                version: Some(record.version().to_string()),
                variant: Some(record.variant().to_string()),
                role: Some(record.role().as_str().to_string()),
                progress: device.downloads.get(&name).map(Progress::describe),
                state,
                reason,
                deployment: name,
            });
        } else if let Some(spec) = spec.as_ref().filter(|s| facts.is_selected_by(&s.selector))
            && let choice @ Choice::NoFit { .. } = choose_variant(facts, spec)
        {
            runs.push(RunView {
                deployment: name,
                version: None,
                variant: None,
                role: None,
                state: "NoFit".into(),
                progress: None,
                // "no variant fits: …", as `describe` says it.
                reason: choice.to_string(),
            });
        }
    }
    DeviceView {
        id: facts.id.to_string(),
        device_class: edgefleet_core::device_class(facts),
        arch: facts.arch.clone(),
        memory_mib: facts.memory_total_mib,
        online: facts.online,
        runs,
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
