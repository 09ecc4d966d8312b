//! The ingest loop: device messages from the broker into the inventory, the fleet store and
//! the telemetry aggregates. It runs apart from reconcile; a bad message costs one log line
//! and a counter, never the loop.

use std::sync::Arc;

use edgefleet_crds::wire::Telemetry as TelemetryWindow;
use tokio::sync::{mpsc, watch};

use crate::engine::{Engine, now_ms};
use crate::inventory::Change;
use crate::mqtt::DeviceMessage;
use crate::telemetry::CohortLabels;

/// Consumes device messages until the channel closes. `kick` is bumped whenever deployments
/// should be reconciled again (fleet changed or devices made progress).
pub async fn run(
    engine: Arc<Engine>,
    mut messages: mpsc::Receiver<DeviceMessage>,
    kick: watch::Sender<u64>,
) {
    while let Some(message) = messages.recv().await {
        match handle(&engine, &message).await {
            Ok(Change::Nothing) => {}
            Ok(_) => kick.send_modify(|n| *n = n.wrapping_add(1)),
            Err(err) => {
                engine.metrics.store_errors.inc();
                tracing::warn!(%err, "device message not recorded");
            }
        }
    }
}

pub async fn handle(
    engine: &Engine,
    message: &DeviceMessage,
) -> Result<Change, crate::store::StoreError> {
    let now = now_ms();
    match message {
        DeviceMessage::Hello(hello) => engine.inventory.apply_hello(hello, now).await,
        DeviceMessage::Status(status) => engine.inventory.apply_status(status, now).await,
        DeviceMessage::State(report) => {
            for model in &report.models {
                engine.attribution.serving(
                    &model.deployment,
                    report.device_id.as_str(),
                    model.serving_sha256.as_deref(),
                );
            }
            engine.inventory.apply_state(report, now).await
        }
        DeviceMessage::Telemetry(window) => {
            record_telemetry(engine, window).await?;
            Ok(Change::Nothing)
        }
    }
}

/// Counts a window once: a replay (store-and-forward) or a QoS 1 duplicate carries a sequence
/// number already claimed.
async fn record_telemetry(
    engine: &Engine,
    window: &TelemetryWindow,
) -> Result<(), crate::store::StoreError> {
    let Some(device_class) = engine.inventory.device_class_of(&window.device_id) else {
        engine
            .metrics
            .telemetry_windows
            .with_label_values(&["unknown_device"])
            .inc();
        return Ok(());
    };
    if !engine
        .telemetry
        .claim_seq(window.device_id.as_str(), window.seq)
    {
        engine
            .metrics
            .telemetry_windows
            .with_label_values(&["duplicate"])
            .inc();
        return Ok(());
    }
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
            device_class: device_class.clone(),
            role: role.as_str().to_string(),
        };
        engine
            .telemetry
            .record(labels, window.window_start_ms, model);
    }
    Ok(())
}
