//! The Prometheus side of the telemetry aggregates: one family per metric, one series per
//! cohort, labels from [`LABELS`] only. Histograms are rebuilt from the merged bucket counts
//! (cumulative, as Prometheus wants them) over the bucket layout the devices used.

use edgefleet_core::analysis::CohortWindow;
use edgefleet_protocol::LatencyHistogram;
use edgefleet_protocol::histogram::LATENCY_BUCKETS_SECONDS;
use edgefleet_protocol::llm::{LlmWindow, TOKEN_RATE_BUCKETS, TokenRateHistogram};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

use super::{CohortLabels, Telemetry};

const LABELS: [&str; 5] = ["namespace", "deployment", "variant", "device_class", "role"];

/// Every family the collector exports, by position: name, type, help.
const FAMILIES: [(&str, MetricType, &str); 15] = [
    (
        "edgefleet_inference_latency_seconds",
        MetricType::HISTOGRAM,
        "Inference latency measured on devices, merged per cohort",
    ),
    (
        "edgefleet_inference_requests_total",
        MetricType::COUNTER,
        "Inference requests served on devices, per cohort",
    ),
    (
        "edgefleet_inference_errors_total",
        MetricType::COUNTER,
        "Inference requests that failed on devices, per cohort",
    ),
    (
        "edgefleet_offload_requests_total",
        MetricType::COUNTER,
        "Inference requests devices sent to the cloud endpoint, per cohort",
    ),
    (
        "edgefleet_offload_fallbacks_total",
        MetricType::COUNTER,
        "Offloaded requests answered with the local result because the cloud failed",
    ),
    (
        "edgefleet_cloud_request_duration_seconds",
        MetricType::HISTOGRAM,
        "Round trips of offloaded requests to the cloud endpoint, per cohort",
    ),
    (
        "edgefleet_llm_time_to_first_token_seconds",
        MetricType::HISTOGRAM,
        "Language models: request arrival to first generated token, measured on devices, per cohort",
    ),
    (
        "edgefleet_llm_inter_token_latency_seconds",
        MetricType::HISTOGRAM,
        "Language models: time between consecutive generated tokens of a request, per cohort",
    ),
    (
        "edgefleet_llm_queue_wait_seconds",
        MetricType::HISTOGRAM,
        "Language models: admission to a generation slot picking the request up, per cohort",
    ),
    (
        "edgefleet_llm_prompt_tokens_per_second",
        MetricType::HISTOGRAM,
        "Language models: prompt-processing speed of each request in tokens per second, per cohort",
    ),
    (
        "edgefleet_llm_decode_tokens_per_second",
        MetricType::HISTOGRAM,
        "Language models: generation speed of each request in tokens per second, per cohort",
    ),
    (
        "edgefleet_llm_prompt_tokens_total",
        MetricType::COUNTER,
        "Language models: prompt tokens processed on devices, per cohort",
    ),
    (
        "edgefleet_llm_completion_tokens_total",
        MetricType::COUNTER,
        "Language models: tokens generated on devices, per cohort",
    ),
    (
        "edgefleet_llm_context_overflows_total",
        MetricType::COUNTER,
        "Language models: requests refused because prompt and max_tokens exceed the context",
    ),
    (
        "edgefleet_llm_rejected_busy_total",
        MetricType::COUNTER,
        "Language models: requests refused because every slot and the queue were full",
    ),
];

// Positions in FAMILIES.
const LATENCY: usize = 0;
const REQUESTS: usize = 1;
const ERRORS: usize = 2;
const OFFLOADS: usize = 3;
const FALLBACKS: usize = 4;
const CLOUD_LATENCY: usize = 5;
const LLM_TIME_TO_FIRST_TOKEN: usize = 6;
const LLM_INTER_TOKEN_LATENCY: usize = 7;
const LLM_QUEUE_WAIT: usize = 8;
const LLM_PROMPT_RATE: usize = 9;
const LLM_DECODE_RATE: usize = 10;
const LLM_PROMPT_TOKENS: usize = 11;
const LLM_COMPLETION_TOKENS: usize = 12;
const LLM_CONTEXT_OVERFLOWS: usize = 13;
const LLM_REJECTED_BUSY: usize = 14;

pub(super) fn descs() -> Vec<Desc> {
    FAMILIES
        .iter()
        .map(|(name, _, help)| {
            Desc::new(
                name.to_string(),
                help.to_string(),
                LABELS.iter().map(|l| l.to_string()).collect(),
                Default::default(),
            )
            .unwrap_or_else(|_| unreachable!("static descriptors are valid"))
        })
        .collect()
}

impl Collector for Telemetry {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let state = self.lock();
        let mut families: Vec<MetricFamily> = FAMILIES
            .iter()
            .map(|(name, kind, help)| {
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(*kind);
                family
            })
            .collect();
        for (labels, totals) in &state.totals {
            cohort(&mut families, labels, totals);
        }
        // Families without a series (no cohort offloaded, no language model) are left out of
        // the exposition by the registry.
        families
    }
}

/// The series of one cohort, pushed onto `families` (indexed as [`FAMILIES`]).
fn cohort(families: &mut [MetricFamily], labels: &CohortLabels, totals: &CohortWindow) {
    let mut push = |family: usize, metric: proto::Metric| {
        families[family].mut_metric().push(metric);
    };
    push(LATENCY, latency_histogram(labels, &totals.latency));
    push(REQUESTS, counter(labels, totals.requests));
    push(ERRORS, counter(labels, totals.errors));
    // Only cohorts that ever offloaded: deployments without a policy add no series.
    let offload = &totals.offload;
    if offload.requests > 0 {
        push(OFFLOADS, counter(labels, offload.requests));
        push(FALLBACKS, counter(labels, offload.fallbacks));
        push(
            CLOUD_LATENCY,
            latency_histogram(labels, &offload.cloud_latency),
        );
    }
    // Only cohorts some device reported an LLM window for: other models add no series.
    let Some(llm) = &totals.llm else {
        return;
    };
    let LlmWindow {
        time_to_first_token,
        inter_token_latency,
        queue_wait,
        prompt_tokens_per_second,
        decode_tokens_per_second,
        prompt_tokens,
        completion_tokens,
        context_overflows,
        rejected_busy,
    } = llm;
    push(
        LLM_TIME_TO_FIRST_TOKEN,
        latency_histogram(labels, time_to_first_token),
    );
    push(
        LLM_INTER_TOKEN_LATENCY,
        latency_histogram(labels, inter_token_latency),
    );
    push(LLM_QUEUE_WAIT, latency_histogram(labels, queue_wait));
    push(
        LLM_PROMPT_RATE,
        token_rate_histogram(labels, prompt_tokens_per_second),
    );
    push(
        LLM_DECODE_RATE,
        token_rate_histogram(labels, decode_tokens_per_second),
    );
    push(LLM_PROMPT_TOKENS, counter(labels, *prompt_tokens));
    push(LLM_COMPLETION_TOKENS, counter(labels, *completion_tokens));
    push(LLM_CONTEXT_OVERFLOWS, counter(labels, *context_overflows));
    push(LLM_REJECTED_BUSY, counter(labels, *rejected_busy));
}

fn latency_histogram(labels: &CohortLabels, observed: &LatencyHistogram) -> proto::Metric {
    histogram(
        labels,
        &LATENCY_BUCKETS_SECONDS,
        &observed.counts,
        observed.sum_seconds,
    )
}

fn token_rate_histogram(labels: &CohortLabels, observed: &TokenRateHistogram) -> proto::Metric {
    histogram(labels, &TOKEN_RATE_BUCKETS, &observed.counts, observed.sum)
}

/// `counts` are non-cumulative over `bounds` with `+Inf` last, as devices send them (the
/// wire checks guarantee the layout); the sample count includes the `+Inf` bucket.
fn histogram(labels: &CohortLabels, bounds: &[f64], counts: &[u64], sum: f64) -> proto::Metric {
    let mut histogram = proto::Histogram::default();
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(bounds.len());
    for (bound, count) in bounds.iter().zip(counts) {
        cumulative = cumulative.saturating_add(*count);
        let mut bucket = proto::Bucket::default();
        bucket.set_upper_bound(*bound);
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    histogram.set_bucket(buckets);
    histogram.set_sample_count(counts.iter().fold(0u64, |n, c| n.saturating_add(*c)));
    histogram.set_sample_sum(sum);
    let mut metric = proto::Metric::from_label(label_pairs(labels));
    metric.set_histogram(histogram);
    metric
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
