//! Telemetry aggregation: agents' latency windows merged per cohort (deployment × variant ×
//! device class × role), exported to Prometheus with bounded labels and kept in short
//! per-interval slices for canary analysis. Device ids never become labels.

use std::collections::BTreeMap;
use std::sync::Mutex;

use edgefleet_core::analysis::CohortWindow;
use edgefleet_protocol::LatencyHistogram;
use edgefleet_protocol::histogram::LATENCY_BUCKETS_SECONDS;
use edgefleet_protocol::wire::ModelWindow;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

/// The labels of one exported series; all values are bounded by the deployments' specs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CohortLabels {
    pub namespace: String,
    pub deployment: String,
    pub variant: String,
    pub device_class: String,
    /// `canary` or `stable`.
    pub role: String,
}

#[derive(Default)]
struct State {
    /// Since controller start, for Prometheus counters.
    totals: BTreeMap<CohortLabels, CohortWindow>,
    /// Per interval start (ms), for analysis; pruned to `retention_ms`.
    recent: BTreeMap<CohortLabels, BTreeMap<i64, CohortWindow>>,
}

pub struct Telemetry {
    state: Mutex<State>,
    /// Highest window seq counted per device. In memory, like the aggregates it guards: each
    /// replica counts each window once, and a restarted one starts both afresh.
    last_seq: Mutex<std::collections::HashMap<String, u64>>,
    interval_ms: i64,
    retention_ms: i64,
    descs: Vec<Desc>,
}

const LATENCY: &str = "edgefleet_inference_latency_seconds";
const REQUESTS: &str = "edgefleet_inference_requests_total";
const ERRORS: &str = "edgefleet_inference_errors_total";
const OFFLOADS: &str = "edgefleet_offload_requests_total";
const FALLBACKS: &str = "edgefleet_offload_fallbacks_total";
const CLOUD_LATENCY: &str = "edgefleet_cloud_request_duration_seconds";
const LABELS: [&str; 5] = ["namespace", "deployment", "variant", "device_class", "role"];

impl Telemetry {
    /// `interval_ms`: slice width for analysis; `retention_ms`: how long slices are kept.
    pub fn new(interval_ms: i64, retention_ms: i64) -> Self {
        let desc = |name: &str, help: &str| {
            Desc::new(
                name.into(),
                help.into(),
                LABELS.iter().map(|l| l.to_string()).collect(),
                Default::default(),
            )
            .unwrap_or_else(|_| unreachable!("static descriptors are valid"))
        };
        Self {
            state: Mutex::default(),
            last_seq: Mutex::default(),
            interval_ms: interval_ms.max(1),
            retention_ms,
            descs: vec![
                desc(
                    LATENCY,
                    "Inference latency measured on devices, merged per cohort",
                ),
                desc(REQUESTS, "Inference requests served on devices, per cohort"),
                desc(
                    ERRORS,
                    "Inference requests that failed on devices, per cohort",
                ),
                desc(
                    OFFLOADS,
                    "Inference requests devices sent to the cloud endpoint, per cohort",
                ),
                desc(
                    FALLBACKS,
                    "Offloaded requests answered with the local result because the cloud failed",
                ),
                desc(
                    CLOUD_LATENCY,
                    "Round trips of offloaded requests to the cloud endpoint, per cohort",
                ),
            ],
        }
    }

    /// Claims window `seq` of `device`; false when it was already counted (a store-and-forward
    /// replay or a QoS 1 duplicate: agents number windows in order and replay them in order).
    pub fn claim_seq(&self, device: &str, seq: u64) -> bool {
        let mut last = self.last_seq.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(device) {
            Some(highest) if *highest >= seq => false,
            Some(highest) => {
                *highest = seq;
                true
            }
            None => {
                last.insert(device.to_string(), seq);
                true
            }
        }
    }

    /// Adds one model window of one device. A late window lands in the interval it measured.
    pub fn record(&self, labels: CohortLabels, window_start_ms: i64, window: &ModelWindow) {
        let slice = window_start_ms - window_start_ms.rem_euclid(self.interval_ms);
        let mut one = CohortWindow::default();
        one.add(window.requests, window.errors, &window.latency);
        if let Some(offload) = &window.offload {
            one.add_offload(offload);
        }
        let mut state = self.lock();
        state.totals.entry(labels.clone()).or_default().merge(&one);
        let slices = state.recent.entry(labels).or_default();
        slices.entry(slice).or_default().merge(&one);
        if let Some(newest) = slices.keys().next_back().copied() {
            slices.retain(|start, _| *start > newest - self.retention_ms);
        }
    }

    /// Merged observations of one cohort from windows that started at or after `since_ms`.
    pub fn since(&self, labels: &CohortLabels, since_ms: i64) -> CohortWindow {
        let state = self.lock();
        let mut merged = CohortWindow::default();
        if let Some(slices) = state.recent.get(labels) {
            let first_slice = since_ms - since_ms.rem_euclid(self.interval_ms);
            for totals in slices.range(first_slice..).map(|(_, t)| t) {
                merged.merge(totals);
            }
        }
        merged
    }

    /// Merged observations of every cohort of a deployment matching `filter`, since `since_ms`.
    pub fn since_where(
        &self,
        namespace: &str,
        deployment: &str,
        since_ms: i64,
        filter: impl Fn(&CohortLabels) -> bool,
    ) -> CohortWindow {
        let keys: Vec<CohortLabels> = self
            .lock()
            .recent
            .keys()
            .filter(|l| l.namespace == namespace && l.deployment == deployment && filter(l))
            .cloned()
            .collect();
        let mut merged = CohortWindow::default();
        for key in keys {
            merged.merge(&self.since(&key, since_ms));
        }
        merged
    }

    pub fn forget_deployment(&self, namespace: &str, deployment: &str) {
        let mut state = self.lock();
        state
            .totals
            .retain(|l, _| !(l.namespace == namespace && l.deployment == deployment));
        state
            .recent
            .retain(|l, _| !(l.namespace == namespace && l.deployment == deployment));
    }

    pub fn series_count(&self) -> usize {
        self.lock().totals.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Collector for Telemetry {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let state = self.lock();
        let mut latency = family(LATENCY, &self.descs[0], MetricType::HISTOGRAM);
        let mut requests = family(REQUESTS, &self.descs[1], MetricType::COUNTER);
        let mut errors = family(ERRORS, &self.descs[2], MetricType::COUNTER);
        let mut offloads = family(OFFLOADS, &self.descs[3], MetricType::COUNTER);
        let mut fallbacks = family(FALLBACKS, &self.descs[4], MetricType::COUNTER);
        let mut cloud = family(CLOUD_LATENCY, &self.descs[5], MetricType::HISTOGRAM);
        for (labels, totals) in &state.totals {
            latency
                .mut_metric()
                .push(histogram(labels, &totals.latency));
            requests.mut_metric().push(counter(labels, totals.requests));
            errors.mut_metric().push(counter(labels, totals.errors));
            // Only cohorts that ever offloaded: deployments without a policy add no series.
            let offload = &totals.offload;
            if offload.requests > 0 {
                offloads
                    .mut_metric()
                    .push(counter(labels, offload.requests));
                fallbacks
                    .mut_metric()
                    .push(counter(labels, offload.fallbacks));
                cloud
                    .mut_metric()
                    .push(histogram(labels, &offload.cloud_latency));
            }
        }
        vec![latency, requests, errors, offloads, fallbacks, cloud]
    }
}

fn histogram(labels: &CohortLabels, observed: &LatencyHistogram) -> proto::Metric {
    let mut histogram = proto::Histogram::default();
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(LATENCY_BUCKETS_SECONDS.len());
    for (bound, count) in LATENCY_BUCKETS_SECONDS.iter().zip(&observed.counts) {
        cumulative += count;
        let mut bucket = proto::Bucket::default();
        bucket.set_upper_bound(*bound);
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    histogram.set_bucket(buckets);
    histogram.set_sample_count(observed.count());
    histogram.set_sample_sum(observed.sum_seconds);
    let mut metric = proto::Metric::from_label(label_pairs(labels));
    metric.set_histogram(histogram);
    metric
}

fn family(name: &str, desc: &Desc, kind: MetricType) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.into());
    family.set_help(desc.help.clone());
    family.set_field_type(kind);
    family
}

fn counter(labels: &CohortLabels, value: u64) -> proto::Metric {
    let mut counter = proto::Counter::default();
    counter.set_value(value as f64);
    let mut metric = proto::Metric::from_label(label_pairs(labels));
    metric.set_counter(counter);
    metric
}

fn label_pairs(labels: &CohortLabels) -> Vec<proto::LabelPair> {
    let values = [
        &labels.namespace,
        &labels.deployment,
        &labels.variant,
        &labels.device_class,
        &labels.role,
    ];
    LABELS
        .iter()
        .zip(values)
        .map(|(name, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.clone());
            pair
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(class: &str, role: &str) -> CohortLabels {
        CohortLabels {
            namespace: "default".into(),
            deployment: "vad".into(),
            variant: "int8".into(),
            device_class: class.into(),
            role: role.into(),
        }
    }

    fn window(latencies: &[f64], errors: u64) -> ModelWindow {
        let mut latency = LatencyHistogram::default();
        latencies.iter().for_each(|l| latency.observe(*l));
        ModelWindow {
            deployment: "default/vad".into(),
            variant: "int8".into(),
            requests: latencies.len() as u64,
            errors,
            latency,
            offload: None,
        }
    }

    #[test]
    fn windows_merge_per_cohort_and_interval() {
        let telemetry = Telemetry::new(10_000, 3_600_000);
        telemetry.record(labels("a", "canary"), 100_000, &window(&[0.01, 0.02], 0));
        telemetry.record(labels("a", "canary"), 105_000, &window(&[0.03], 1));
        // late window for an earlier interval
        telemetry.record(labels("a", "canary"), 85_000, &window(&[0.5], 0));
        telemetry.record(labels("b", "stable"), 100_000, &window(&[0.001], 0));

        let recent = telemetry.since(&labels("a", "canary"), 100_000);
        assert_eq!((recent.requests, recent.errors), (3, 1));
        assert_eq!(telemetry.since(&labels("a", "canary"), 0).requests, 4);
        let all_canary = telemetry.since_where("default", "vad", 0, |l| l.role == "canary");
        assert_eq!(all_canary.requests, 4);
        assert_eq!(telemetry.series_count(), 2);

        telemetry.forget_deployment("default", "vad");
        assert_eq!(telemetry.series_count(), 0);
    }

    #[test]
    fn exported_histogram_is_cumulative_with_bounded_labels() {
        let telemetry = Telemetry::new(10_000, 60_000);
        telemetry.record(
            labels("a", "canary"),
            0,
            &window(&[0.0001, 0.004, 0.004, 20.0], 1),
        );
        let registry = prometheus::Registry::new();
        registry.register(Box::new(telemetry)).expect("register");
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .expect("encode");
        let text = String::from_utf8(text).expect("utf8");
        assert!(
            text.contains("# TYPE edgefleet_inference_latency_seconds histogram"),
            "{text}"
        );
        assert!(text.contains(r#"le="0.0001"} 1"#), "{text}");
        assert!(text.contains(r#"le="0.005"} 3"#), "{text}");
        assert!(text.contains(r#"le="+Inf"} 4"#), "{text}");
        assert!(text.contains(r#"edgefleet_inference_errors_total{namespace="default",deployment="vad",variant="int8",device_class="a",role="canary"} 1"#), "{text}");
    }

    #[test]
    fn each_window_is_claimed_once_per_device() {
        let t = Telemetry::new(1000, 60_000);
        assert!(t.claim_seq("a", 1));
        assert!(!t.claim_seq("a", 1), "QoS 1 duplicate");
        assert!(t.claim_seq("b", 1), "devices are independent");
        assert!(t.claim_seq("a", 2));
        assert!(
            t.claim_seq("a", 5),
            "gaps are fine (windows with no requests)"
        );
        assert!(!t.claim_seq("a", 3), "a replay of an older window");
    }

    #[test]
    fn offload_counts_merge_and_export_only_for_cohorts_that_offloaded() {
        let telemetry = Telemetry::new(10_000, 60_000);
        let mut offloading = window(&[0.01, 0.02, 0.2, 0.3], 0);
        let mut cloud_latency = LatencyHistogram::default();
        cloud_latency.observe(0.15);
        cloud_latency.observe(0.25);
        offloading.offload = Some(edgefleet_protocol::wire::OffloadWindow {
            requests: 2,
            fallbacks: 1,
            cloud_latency,
        });
        telemetry.record(labels("a", "canary"), 0, &offloading);
        telemetry.record(labels("a", "canary"), 1_000, &offloading);
        telemetry.record(labels("b", "stable"), 0, &window(&[0.01], 0));
        let merged = telemetry.since(&labels("a", "canary"), 0);
        assert_eq!((merged.offload.requests, merged.offload.fallbacks), (4, 2));
        assert_eq!(merged.offload.cloud_latency.count(), 4);
        assert_eq!(merged.offload_ratio(), Some(0.5));

        let registry = prometheus::Registry::new();
        registry.register(Box::new(telemetry)).expect("register");
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .expect("encode");
        let text = String::from_utf8(text).expect("utf8");
        let cohort = r#"{namespace="default",deployment="vad",variant="int8",device_class="a",role="canary"}"#;
        assert!(
            text.contains(&format!("edgefleet_offload_requests_total{cohort} 4")),
            "{text}"
        );
        assert!(
            text.contains(&format!("edgefleet_offload_fallbacks_total{cohort} 2")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "edgefleet_cloud_request_duration_seconds_count{cohort} 4"
            )),
            "{text}"
        );
        assert!(
            !text.contains(r#"edgefleet_offload_requests_total{namespace="default",deployment="vad",variant="int8",device_class="b""#),
            "a cohort that never offloaded exports no offload series: {text}"
        );
    }
}
