//! The ingest loop: device messages from the broker into the inventory, the fleet store and
//! the telemetry aggregates. It runs apart from reconcile; a bad message costs one log line
//! and a counter, never the loop.

use edgefleet_protocol::wire::{StateReport, Telemetry as TelemetryWindow};
use tokio::sync::{mpsc, watch};

use crate::clock::now_ms;
use crate::inventory::{Change, Presence};
use crate::mqtt::DeviceMessage;
use crate::reconcile::FleetState;
use crate::store::{RollupCohort, RollupWrite};
use crate::telemetry::{CohortLabels, Deltas, add_model_window};
use edgefleet_core::analysis::CohortWindow;
use edgefleet_core::replay::Refusal;
use edgefleet_protocol::wire::Role;
use std::collections::HashMap;

/// Messages taken from the channel per round. Their hellos and statuses, their state reports,
/// and their telemetry claims and roll-ups are each written in one transaction, so a busy
/// fleet costs a few statements' worth of waiting for the database per round instead of one
/// wait per message. Large, because a transaction of window claims rewrites every page of
/// `telemetry_seqs` it touches (at 100k devices, hundreds of pages for 512 windows): pages
/// per window fall as the round grows.
const BATCH: usize = 2048;

/// Consumes device messages until the channel closes. `kick` is bumped whenever deployments
/// should be reconciled again (fleet changed or devices made progress).
pub async fn run(
    fleet: FleetState,
    mut messages: mpsc::Receiver<DeviceMessage>,
    kick: watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut next_prune_ms = 0;
    while messages.recv_many(&mut batch, BATCH).await > 0 {
        let now = now_ms();
        if now >= next_prune_ms {
            next_prune_ms = now + PRUNE_EVERY_MS;
            prune_rollups(&fleet, now).await;
        }
        let mut presence = Vec::new();
        let mut states = Vec::new();
        let mut windows = Vec::new();
        for message in &batch {
            match message {
                DeviceMessage::Hello(hello) => presence.push(Presence::Hello(hello)),
                DeviceMessage::Status(status) => presence.push(Presence::Status(status)),
                DeviceMessage::State(report) => states.push(report),
                DeviceMessage::Telemetry(window) => windows.push(window),
            }
        }
        // presence first: state reports and telemetry need to know the device
        let presence = fleet.inventory.apply_presence(&presence, now_ms()).await;
        let mut changed = noted(&fleet, presence);
        changed |= noted(&fleet, record_states(&fleet, &states).await);
        if let Err(err) = record_telemetry(&fleet, &windows).await {
            fleet.metrics.store_errors.inc();
            tracing::warn!(%err, windows = windows.len(), "telemetry windows not recorded");
        }
        if changed {
            kick.send_modify(|n| *n = n.wrapping_add(1));
        }
        batch.clear();
    }
}

/// How often roll-ups older than the telemetry retention are deleted (by every replica: the
/// statement is idempotent and cheap).
const PRUNE_EVERY_MS: i64 = 60_000;

async fn prune_rollups(fleet: &FleetState, now_ms: i64) {
    let before = now_ms - fleet.telemetry.retention_ms();
    if let Err(err) = fleet.store.prune_rollups(before).await {
        fleet.metrics.store_errors.inc();
        tracing::warn!(%err, "old telemetry roll-ups not pruned");
    }
}

/// Whether a handled message changed something; a store error costs a counter and a log line.
fn noted(fleet: &FleetState, result: Result<Change, crate::store::StoreError>) -> bool {
    match result {
        Ok(change) => change != Change::Nothing,
        Err(err) => {
            fleet.metrics.store_errors.inc();
            tracing::warn!(%err, "device message not recorded");
            false
        }
    }
}

async fn record_states(
    fleet: &FleetState,
    reports: &[&StateReport],
) -> Result<Change, crate::store::StoreError> {
    for report in reports {
        for model in &report.models {
            fleet.attribution.serving(
                &model.deployment,
                report.device_id.as_str(),
                model.serving_sha256.as_deref(),
            );
        }
    }
    fleet.inventory.apply_states(reports, now_ms()).await
}

pub async fn handle(
    fleet: &FleetState,
    message: &DeviceMessage,
) -> Result<Change, crate::store::StoreError> {
    let now = now_ms();
    match message {
        DeviceMessage::Hello(hello) => fleet.inventory.apply_hello(hello, now).await,
        DeviceMessage::Status(status) => fleet.inventory.apply_status(status, now).await,
        DeviceMessage::State(report) => record_states(fleet, &[report]).await,
        DeviceMessage::Telemetry(window) => {
            record_telemetry(fleet, &[window]).await?;
            Ok(Change::Nothing)
        }
    }
}

/// Counts each window once across every replica: the window's number is claimed in the fleet
/// store in the same transaction that writes this replica's roll-ups, so a replay
/// (store-and-forward), a QoS 1 duplicate, or a copy another replica already counted is refused.
/// When the store is unreachable the batch is not counted anywhere (`not_stored`).
async fn record_telemetry(
    fleet: &FleetState,
    windows: &[&TelemetryWindow],
) -> Result<(), crate::store::StoreError> {
    let known: Vec<(&TelemetryWindow, String)> = windows
        .iter()
        .filter_map(|window| {
            let class = fleet.inventory.device_class_of(&window.device_id);
            if class.is_none() {
                count(fleet, "unknown_device", 1);
            }
            Some((*window, class?))
        })
        .collect();
    if known.is_empty() {
        return Ok(());
    }
    let claims: Vec<(&str, u64)> = known
        .iter()
        .map(|(window, _)| (window.device_id.as_str(), window.seq))
        .collect();
    let mut deltas = Deltas::default();
    let mut unknown_models = 0;
    let outcome = fleet
        .store
        .count_windows(&claims, fleet.telemetry.writer(), |outcomes| {
            let mut sums = BatchSums::new();
            for ((window, device_class), outcome) in known.iter().zip(outcomes) {
                if outcome.is_ok() {
                    stage_window(fleet, &mut sums, &mut unknown_models, window, device_class);
                }
            }
            deltas = deltas_of(sums);
            fleet
                .telemetry
                .rows_with(&deltas)
                .into_iter()
                .map(|(labels, interval_start_ms, window)| RollupWrite {
                    cohort: RollupCohort {
                        variant: labels.variant,
                        device_class: labels.device_class,
                        role: labels.role,
                    },
                    namespace: labels.namespace,
                    name: labels.deployment,
                    interval_start_ms,
                    window,
                })
                .collect()
        })
        .await;
    let outcomes = match outcome {
        Ok(outcomes) => outcomes,
        Err(err) => {
            count(fleet, "not_stored", known.len() as u64);
            return Err(err);
        }
    };
    fleet.telemetry.apply(deltas);
    let (mut counted, mut duplicate, mut stale) = (0, 0, 0);
    for outcome in outcomes {
        match outcome {
            Ok(()) => counted += 1,
            Err(Refusal::Duplicate) => duplicate += 1,
            Err(Refusal::Stale) => stale += 1,
        }
    }
    for (result, windows) in [
        ("counted", counted),
        ("duplicate", duplicate),
        ("stale", stale),
        ("unknown_model", unknown_models),
    ] {
        if windows > 0 {
            count(fleet, result, windows);
        }
    }
    Ok(())
}

fn count(fleet: &FleetState, result: &str, windows: u64) {
    fleet
        .metrics
        .telemetry_windows
        .with_label_values(&[result])
        .inc_by(windows);
}

/// A batch's counted windows summed per cohort and slice, keyed by borrowed names: a flood
/// of windows costs one allocation per cohort, not five per window.
type BatchSums<'a> = HashMap<(&'a str, &'a str, &'a str, Role, i64), CohortWindow>;

/// Adds a counted window's models to the batch's sums, under the cohort each counts for.
fn stage_window<'a>(
    fleet: &FleetState,
    sums: &mut BatchSums<'a>,
    unknown_models: &mut u64,
    window: &'a TelemetryWindow,
    device_class: &'a str,
) {
    let slice = fleet.telemetry.slice_start(window.window_start_ms);
    for model in &window.models {
        let known = fleet
            .attribution
            .is_known(&model.deployment, &model.variant);
        if !known || !model.deployment.contains('/') {
            *unknown_models += 1;
            continue;
        }
        let role = fleet
            .attribution
            .role_of(&model.deployment, window.device_id.as_str());
        let key = (
            model.deployment.as_str(),
            model.variant.as_str(),
            device_class,
            role,
            slice,
        );
        add_model_window(sums.entry(key).or_default(), model);
    }
}

/// The batch's sums as deltas with owned cohort labels.
fn deltas_of(sums: BatchSums<'_>) -> Deltas {
    let mut deltas = Deltas::default();
    for ((deployment, variant, device_class, role, slice), sum) in sums {
        let Some((namespace, name)) = deployment.split_once('/') else {
            continue; // refused by stage_window
        };
        let labels = CohortLabels {
            namespace: namespace.to_string(),
            deployment: name.to_string(),
            variant: variant.to_string(),
            device_class: device_class.to_string(),
            role: role.as_str().to_string(),
        };
        deltas.merge(slice, labels, &sum);
    }
    deltas
}
