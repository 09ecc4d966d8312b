//! The ingest loop: device messages from the broker into the inventory, the fleet store and
//! the telemetry aggregates. It runs apart from reconcile; a bad message costs one log line
//! and a counter, never the loop.

use std::sync::Arc;

use edgefleet_crds::wire::{StateReport, Telemetry as TelemetryWindow};
use tokio::sync::{mpsc, watch};

use crate::engine::{Engine, now_ms};
use crate::inventory::{Change, Presence};
use crate::mqtt::DeviceMessage;
use crate::telemetry::CohortLabels;

/// Messages taken from the channel per round. Their hellos and statuses, and their state
/// reports, are each written in one transaction, so a busy fleet costs a few statements' worth of waiting
/// for the database per round instead of one wait per message.
const BATCH: usize = 512;

/// Consumes device messages until the channel closes. `kick` is bumped whenever deployments
/// should be reconciled again (fleet changed or devices made progress).
pub async fn run(
    engine: Arc<Engine>,
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
        let presence = engine.inventory.apply_presence(&presence, now_ms()).await;
        let mut changed = noted(&engine, presence);
        changed |= noted(&engine, record_states(&engine, &states).await);
        if let Err(err) = record_telemetry(&engine, &windows).await {
            engine.metrics.store_errors.inc();
            tracing::warn!(%err, windows = windows.len(), "telemetry windows not recorded");
        }
        if changed {
            kick.send_modify(|n| *n = n.wrapping_add(1));
        }
        batch.clear();
    }
}

/// Whether a handled message changed something; a store error costs a counter and a log line.
fn noted(engine: &Engine, result: Result<Change, crate::store::StoreError>) -> bool {
    match result {
        Ok(change) => change != Change::Nothing,
        Err(err) => {
            engine.metrics.store_errors.inc();
            tracing::warn!(%err, "device message not recorded");
            false
        }
    }
}

async fn record_states(
    engine: &Engine,
    reports: &[&StateReport],
) -> Result<Change, crate::store::StoreError> {
    for report in reports {
        for model in &report.models {
            engine.attribution.serving(
                &model.deployment,
                report.device_id.as_str(),
                model.serving_sha256.as_deref(),
            );
        }
    }
    engine.inventory.apply_states(reports, now_ms()).await
}

pub async fn handle(
    engine: &Engine,
    message: &DeviceMessage,
) -> Result<Change, crate::store::StoreError> {
    let now = now_ms();
    match message {
        DeviceMessage::Hello(hello) => engine.inventory.apply_hello(hello, now).await,
        DeviceMessage::Status(status) => engine.inventory.apply_status(status, now).await,
        DeviceMessage::State(report) => record_states(engine, &[report]).await,
        DeviceMessage::Telemetry(window) => {
            record_telemetry(engine, &[window]).await?;
            Ok(Change::Nothing)
        }
    }
}

/// Counts each window once: a replay (store-and-forward) or a QoS 1 duplicate carries a
/// sequence number already claimed.
async fn record_telemetry(
    engine: &Engine,
    windows: &[&TelemetryWindow],
) -> Result<(), crate::store::StoreError> {
    let known: Vec<(&TelemetryWindow, String)> = windows
        .iter()
        .filter_map(|window| {
            let class = engine.inventory.device_class_of(&window.device_id);
            if class.is_none() {
                engine
                    .metrics
                    .telemetry_windows
                    .with_label_values(&["unknown_device"])
                    .inc();
            }
            Some((*window, class?))
        })
        .collect();
    for (window, device_class) in &known {
        if engine
            .telemetry
            .claim_seq(window.device_id.as_str(), window.seq)
        {
            count_window(engine, window, device_class);
        } else {
            engine
                .metrics
                .telemetry_windows
                .with_label_values(&["duplicate"])
                .inc();
        }
    }
    Ok(())
}

fn count_window(engine: &Engine, window: &TelemetryWindow, device_class: &str) {
    engine
        .metrics
        .telemetry_windows
        .with_label_values(&["counted"])
        .inc();
    for model in &window.models {
        let known = engine
            .attribution
            .is_known(&model.deployment, &model.variant);
        let Some((namespace, deployment)) = model.deployment.split_once('/').filter(|_| known)
        else {
            engine
                .metrics
                .telemetry_windows
                .with_label_values(&["unknown_model"])
                .inc();
            continue;
        };
        let role = engine
            .attribution
            .role_of(&model.deployment, window.device_id.as_str());
        let labels = CohortLabels {
            namespace: namespace.to_string(),
            deployment: deployment.to_string(),
            variant: model.variant.clone(),
            device_class: device_class.to_string(),
            role: role.as_str().to_string(),
        };
        engine
            .telemetry
            .record(labels, window.window_start_ms, model);
    }
}
