//! The controller's own Prometheus metrics. Labels are bounded: channels, reasons, categories,
//! deployments and cohorts — never device ids. METRICS.md documents every series.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconcile_duration: Histogram,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_plans: IntCounterVec,
    pub mqtt_received: IntCounterVec,
    pub mqtt_rejected: IntCounterVec,
    pub mqtt_published: IntCounterVec,
    pub mqtt_connected: IntGauge,
    pub mqtt_connections: IntCounter,
    pub mqtt_stalls: IntCounter,
    pub devices: IntGaugeVec,
    pub deployment_devices: IntGaugeVec,
    pub rollout_step: IntGaugeVec,
    pub rollout_progressing: IntGaugeVec,
    pub canary_verdicts: IntCounterVec,
    pub telemetry_windows: IntCounterVec,
    pub leader: IntGauge,
    pub store_errors: IntCounter,
    pub artifact_resolutions: IntCounterVec,
    /// Bytes devices fetched for their models, by site and source (origin or site_cache).
    pub site_fetched_bytes: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let metrics = Self {
            reconcile_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "edgefleet_reconcile_duration_seconds",
                    "Time to reconcile one ModelDeployment",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )
            .unwrap_or_else(|_| unreachable!("static histogram options are valid")),
            reconcile_errors: counter_vec(
                "edgefleet_reconcile_errors_total",
                "Reconcile failures by bounded category",
                &["category"],
            ),
            reconcile_plans: counter_vec(
                "edgefleet_reconcile_plans_total",
                "Plans a reconcile pass worked from: `planned` over the whole fleet, or \
                 `followed` (the last pass's, brought up to date with the devices that changed)",
                &["how"],
            ),
            mqtt_received: counter_vec(
                "edgefleet_mqtt_messages_received_total",
                "Device messages decoded, by channel",
                &["channel"],
            ),
            mqtt_rejected: counter_vec(
                "edgefleet_mqtt_messages_rejected_total",
                "Device messages dropped as malformed or invalid, by reason",
                &["reason"],
            ),
            mqtt_published: counter_vec(
                "edgefleet_mqtt_messages_published_total",
                "Messages the controller published, by channel",
                &["channel"],
            ),
            mqtt_connected: IntGauge::new(
                "edgefleet_mqtt_connected",
                "1 while the controller is connected to the MQTT broker",
            )
            .unwrap_or_else(|_| unreachable!("static gauge options are valid")),
            mqtt_connections: IntCounter::new(
                "edgefleet_mqtt_connections_total",
                "Connections the broker accepted (CONNACKs); more than one means reconnects",
            )
            .unwrap_or_else(|_| unreachable!("static counter options are valid")),
            mqtt_stalls: IntCounter::new(
                "edgefleet_mqtt_stalls_total",
                "Connections dropped because the broker stopped delivering (loopback probe lost)",
            )
            .unwrap_or_else(|_| unreachable!("static counter options are valid")),
            devices: gauge_vec(
                "edgefleet_devices",
                "Known devices by state (online, offline)",
                &["state"],
            ),
            deployment_devices: gauge_vec(
                "edgefleet_deployment_devices",
                "Devices of a deployment by rollout state",
                &["namespace", "deployment", "state"],
            ),
            rollout_step: gauge_vec(
                "edgefleet_rollout_step",
                "Current canary step of a deployment (steps + 1 when promoted)",
                &["namespace", "deployment"],
            ),
            rollout_progressing: gauge_vec(
                "edgefleet_rollout_progressing",
                "1 while a deployment's rollout is in progress",
                &["namespace", "deployment"],
            ),
            canary_verdicts: counter_vec(
                "edgefleet_canary_verdicts_total",
                "Canary analysis verdicts per cohort evaluation",
                &["namespace", "deployment", "verdict"],
            ),
            telemetry_windows: counter_vec(
                "edgefleet_telemetry_windows_total",
                "Telemetry windows received, by result (counted, duplicate, stale, unknown_device, not_stored)",
                &["result"],
            ),
            leader: IntGauge::new(
                "edgefleet_leader",
                "1 while this replica holds the leader Lease",
            )
            .unwrap_or_else(|_| unreachable!("static gauge options are valid")),
            store_errors: IntCounter::new(
                "edgefleet_store_errors_total",
                "SQL operations that failed (retried later)",
            )
            .unwrap_or_else(|_| unreachable!("static counter options are valid")),
            artifact_resolutions: counter_vec(
                "edgefleet_artifact_resolutions_total",
                "oci:// references looked up in their registry, by result",
                &["result"],
            ),
            site_fetched_bytes: gauge_vec(
                "edgefleet_site_fetched_bytes",
                "Bytes the devices of a site fetched for the models they were last assigned, by source (origin: across the uplink; site_cache: from the site's cache)",
                &["site", "source"],
            ),
            registry,
        };
        metrics.register_all();
        // Known label values start at zero, so rates and dashboards have a series before the
        // first event (Prometheus practice for bounded label sets).
        for result in [
            "ok",
            "unauthorized",
            "not_found",
            "unreachable",
            "http",
            "manifest",
        ] {
            metrics.artifact_resolutions.with_label_values(&[result]);
        }
        for how in ["planned", "followed"] {
            metrics.reconcile_plans.with_label_values(&[how]);
        }
        for category in ["store", "publish", "kube"] {
            metrics.reconcile_errors.with_label_values(&[category]);
        }
        for reason in [
            "too_large",
            "not_json",
            "missing_version",
            "unsupported_version",
            "malformed",
            "invalid",
            "bad_topic",
            "device_mismatch",
        ] {
            metrics.mqtt_rejected.with_label_values(&[reason]);
        }
        for channel in ["hello", "status", "state", "telemetry"] {
            metrics.mqtt_received.with_label_values(&[channel]);
        }
        metrics.mqtt_published.with_label_values(&["desired"]);
        for result in [
            "counted",
            "duplicate",
            "stale",
            "unknown_device",
            "unknown_model",
            "not_stored",
        ] {
            metrics.telemetry_windows.with_label_values(&[result]);
        }
        metrics
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.reconcile_duration.clone()),
            Box::new(self.reconcile_errors.clone()),
            Box::new(self.reconcile_plans.clone()),
            Box::new(self.mqtt_received.clone()),
            Box::new(self.mqtt_rejected.clone()),
            Box::new(self.mqtt_published.clone()),
            Box::new(self.mqtt_connected.clone()),
            Box::new(self.mqtt_connections.clone()),
            Box::new(self.mqtt_stalls.clone()),
            Box::new(self.devices.clone()),
            Box::new(self.deployment_devices.clone()),
            Box::new(self.rollout_step.clone()),
            Box::new(self.rollout_progressing.clone()),
            Box::new(self.canary_verdicts.clone()),
            Box::new(self.telemetry_windows.clone()),
            Box::new(self.leader.clone()),
            Box::new(self.store_errors.clone()),
            Box::new(self.artifact_resolutions.clone()),
            Box::new(self.site_fetched_bytes.clone()),
        ];
        for collector in collectors {
            // Names are distinct constants; a clash would be a programming error caught by tests.
            if let Err(err) = self.registry.register(collector) {
                tracing::error!(%err, "metric registration failed");
            }
        }
    }

    /// Prometheus text exposition of every registered collector.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%err, "metrics encoding failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|_| unreachable!("static counter options are valid"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|_| unreachable!("static gauge options are valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_and_rendered() {
        let metrics = Metrics::new();
        metrics.reconcile_errors.with_label_values(&["apply"]).inc();
        metrics.devices.with_label_values(&["online"]).set(3);
        let text = metrics.render();
        assert!(
            text.contains("edgefleet_reconcile_errors_total{category=\"apply\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edgefleet_devices{state=\"online\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE edgefleet_reconcile_duration_seconds histogram"),
            "{text}"
        );
    }
}
