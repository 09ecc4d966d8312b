//! The ingest loop: device messages from the broker into the inventory, the fleet store and
//! the telemetry aggregates. It runs apart from reconcile; a bad message costs one log line
//! and a counter, never the loop.

use edgefleet_protocol::wire::{StateReport, Telemetry as TelemetryWindow};
use tokio::sync::{mpsc, watch};

use crate::clock::now_ms;
use crate::inventory::{Change, Presence};
use crate::mqtt::DeviceMessage;
use crate::reconcile::FleetState;
use crate::telemetry::CohortLabels;

/// Messages taken from the channel per round. Their hellos and statuses, and their state
/// reports, are each written in one transaction, so a busy fleet costs a few statements' worth of waiting
/// for the database per round instead of one wait per message.
const BATCH: usize = 512;

/// Consumes device messages until the channel closes. `kick` is bumped whenever deployments
/// should be reconciled again (fleet changed or devices made progress).
pub async fn run(
    fleet: FleetState,
    mut messages: mpsc::Receiver<DeviceMessage>,
    kick: watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while messages.recv_many(&mut batch, BATCH).await > 0 {
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

/// Counts each window once: a replay (store-and-forward) or a QoS 1 duplicate carries a
/// sequence number already claimed.
async fn record_telemetry(
    fleet: &FleetState,
    windows: &[&TelemetryWindow],
) -> Result<(), crate::store::StoreError> {
    let known: Vec<(&TelemetryWindow, String)> = windows
        .iter()
        .filter_map(|window| {
            let class = fleet.inventory.device_class_of(&window.device_id);
            if class.is_none() {
                fleet
                    .metrics
                    .telemetry_windows
                    .with_label_values(&["unknown_device"])
                    .inc();
            }
            Some((*window, class?))
        })
        .collect();
    for (window, device_class) in &known {
        if fleet
            .telemetry
            .claim_seq(window.device_id.as_str(), window.seq)
        {
            count_window(fleet, window, device_class);
        } else {
            fleet
                .metrics
                .telemetry_windows
                .with_label_values(&["duplicate"])
                .inc();
        }
    }
    Ok(())
}

fn count_window(fleet: &FleetState, window: &TelemetryWindow, device_class: &str) {
    fleet
        .metrics
        .telemetry_windows
        .with_label_values(&["counted"])
        .inc();
    for model in &window.models {
        let known = fleet
            .attribution
            .is_known(&model.deployment, &model.variant);
        let Some((namespace, deployment)) = model.deployment.split_once('/').filter(|_| known)
        else {
            fleet
                .metrics
                .telemetry_windows
                .with_label_values(&["unknown_model"])
                .inc();
            continue;
        };
        let role = fleet
            .attribution
            .role_of(&model.deployment, window.device_id.as_str());
        let labels = CohortLabels {
            namespace: namespace.to_string(),
            deployment: deployment.to_string(),
            variant: model.variant.clone(),
            device_class: device_class.to_string(),
            role: role.as_str().to_string(),
        };
        fleet
            .telemetry
            .record(labels, window.window_start_ms, model);
    }
}
