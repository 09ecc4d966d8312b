//! The agent's own Prometheus metrics (served on `GET /metrics`).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use edgefleet_protocol::histogram::LATENCY_BUCKETS_SECONDS;

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub latency: HistogramVec,
    pub offloads: IntCounterVec,
    pub cloud_latency: HistogramVec,
    pub desired_rejected: IntCounterVec,
    pub desired_applied: IntCounter,
    pub model_switches: IntCounterVec,
    /// By `source`: `origin` or `site_cache`.
    pub download_bytes: IntCounterVec,
    /// Bytes this device served to its site as the site cache.
    pub site_cache_served_bytes: IntCounter,
    pub spool_windows: IntGauge,
    pub spool_dropped: IntCounter,
    pub telemetry_acked: IntCounter,
    pub mqtt_connected: IntGauge,
    pub controllers_online: IntGauge,
    pub mqtt_reconnects: IntCounter,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[allow(clippy::expect_used)]
    pub fn new() -> Metrics {
        let r = Registry::new();
        let dv = &["deployment", "variant"];
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "edgefleet_agent_inference_duration_seconds",
                "Inference latency through the local API",
            )
            .buckets(LATENCY_BUCKETS_SECONDS.to_vec()),
            dv,
        )
        .expect("valid metric");
        r.register(Box::new(latency.clone()))
            .expect("unique metric");
        let cloud_latency = HistogramVec::new(
            HistogramOpts::new(
                "edgefleet_agent_cloud_request_duration_seconds",
                "Round trips of offloaded requests to the cloud endpoint, failed ones included",
            )
            .buckets(LATENCY_BUCKETS_SECONDS.to_vec()),
            dv,
        )
        .expect("valid metric");
        r.register(Box::new(cloud_latency.clone()))
            .expect("unique metric");
        Metrics {
            offloads: counter_vec(
                &r,
                "edgefleet_agent_offload_requests_total",
                "Offload triggers by result: cloud (answered), fallback (local result), rate_limited",
                &["deployment", "variant", "trigger", "result"],
            ),
            cloud_latency,
            requests: counter_vec(
                &r,
                "edgefleet_agent_inference_requests_total",
                "Inference requests",
                dv,
            ),
            errors: counter_vec(
                &r,
                "edgefleet_agent_inference_errors_total",
                "Failed inference requests",
                dv,
            ),
            latency,
            desired_rejected: counter_vec(
                &r,
                "edgefleet_agent_desired_rejected_total",
                "Desired documents ignored, by reason",
                &["reason"],
            ),
            desired_applied: counter(
                &r,
                "edgefleet_agent_desired_applied_total",
                "Desired documents applied",
            ),
            model_switches: counter_vec(
                &r,
                "edgefleet_agent_model_switches_total",
                "Model installs by result",
                &["result"],
            ),
            download_bytes: counter_vec(
                &r,
                "edgefleet_agent_download_bytes_total",
                "Artifact bytes downloaded, by source (origin or site_cache)",
                &["source"],
            ),
            site_cache_served_bytes: counter(
                &r,
                "edgefleet_agent_site_cache_served_bytes_total",
                "Artifact bytes served to the site's devices as its site cache",
            ),
            spool_windows: gauge(
                &r,
                "edgefleet_agent_spool_windows",
                "Telemetry windows waiting for a broker ack",
            ),
            spool_dropped: counter(
                &r,
                "edgefleet_agent_spool_dropped_total",
                "Telemetry windows dropped because the spool was full",
            ),
            telemetry_acked: counter(
                &r,
                "edgefleet_agent_telemetry_acked_total",
                "Telemetry windows acked by the broker",
            ),
            mqtt_connected: gauge(
                &r,
                "edgefleet_agent_mqtt_connected",
                "1 while connected to the broker",
            ),
            controllers_online: gauge(
                &r,
                "edgefleet_agent_controllers_online",
                "Controller replicas announcing themselves online; telemetry stays spooled at 0",
            ),
            mqtt_reconnects: counter(
                &r,
                "edgefleet_agent_mqtt_connections_total",
                "Successful broker connections",
            ),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
