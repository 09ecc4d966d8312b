use edgefleet_protocol::LatencyHistogram;
use edgefleet_protocol::histogram::LATENCY_BUCKETS_SECONDS;
use edgefleet_protocol::llm::{LlmWindow, TOKEN_RATE_BUCKETS};

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
        llm: None,
    }
}

#[test]
fn windows_merge_per_cohort_and_interval() {
    let telemetry = Telemetry::new(10_000, 3_600_000, "test".into());
    telemetry.record(labels("a", "canary"), 100_000, &window(&[0.01, 0.02], 0));
    telemetry.record(labels("a", "canary"), 105_000, &window(&[0.03], 1));
    // late window for an earlier interval
    telemetry.record(labels("a", "canary"), 85_000, &window(&[0.5], 0));
    telemetry.record(labels("b", "stable"), 100_000, &window(&[0.001], 0));

    let recent = telemetry.since(&labels("a", "canary"), 100_000);
    assert_eq!((recent.requests, recent.errors), (3, 1));
    assert_eq!(telemetry.since(&labels("a", "canary"), 0).requests, 4);
    assert_eq!(telemetry.since(&labels("b", "stable"), 0).requests, 1);
    assert_eq!(telemetry.series_count(), 2);

    telemetry.forget_deployment("default", "vad");
    assert_eq!(telemetry.series_count(), 0);
}

#[test]
fn the_rows_of_a_batch_are_this_replicas_slices_with_the_batch_added() {
    let telemetry = Telemetry::new(10_000, 3_600_000, "test".into());
    telemetry.record(labels("a", "canary"), 100_000, &window(&[0.01], 0));
    let mut deltas = Deltas::default();
    deltas.add(
        telemetry.slice_start(101_000),
        labels("a", "canary"),
        &window(&[0.02], 1),
    );
    deltas.add(
        telemetry.slice_start(95_000),
        labels("a", "canary"),
        &window(&[0.03], 0),
    );
    let rows = telemetry.rows_with(&deltas);
    let summary: Vec<(i64, u64, u64)> = rows
        .iter()
        .map(|(_, start, sum)| (*start, sum.requests, sum.errors))
        .collect();
    // 90 s slice: the batch alone; 100 s slice: what was counted before plus the batch
    assert_eq!(summary, [(90_000, 1, 0), (100_000, 2, 1)]);
    // nothing is counted until the batch is applied
    assert_eq!(telemetry.since(&labels("a", "canary"), 0).requests, 1);
    telemetry.apply(deltas);
    assert_eq!(telemetry.since(&labels("a", "canary"), 0).requests, 3);
}

#[test]
fn exported_histogram_is_cumulative_with_bounded_labels() {
    let telemetry = Telemetry::new(10_000, 60_000, "test".into());
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
fn offload_counts_merge_and_export_only_for_cohorts_that_offloaded() {
    let telemetry = Telemetry::new(10_000, 60_000, "test".into());
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
    let cohort =
        r#"{namespace="default",deployment="vad",variant="int8",device_class="a",role="canary"}"#;
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

/// The text exposition of `telemetry`, as `/metrics` serves it.
fn exposition(telemetry: Telemetry) -> String {
    let registry = prometheus::Registry::new();
    registry.register(Box::new(telemetry)).expect("register");
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .expect("encode");
    String::from_utf8(text).expect("utf8")
}

/// The value of the one sample line `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> f64 {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .collect();
    assert_eq!(values.len(), 1, "{series} in\n{text}");
    values[0]
}

fn llm_window(ttft: &[f64], decode_rates: &[f64], completion_tokens: u64) -> LlmWindow {
    let mut llm = LlmWindow::default();
    ttft.iter()
        .for_each(|s| llm.time_to_first_token.observe(*s));
    llm.inter_token_latency.observe(0.008);
    llm.inter_token_latency.observe(0.009);
    llm.queue_wait.observe(0.002);
    llm.prompt_tokens_per_second.observe(900.0);
    decode_rates
        .iter()
        .for_each(|r| llm.decode_tokens_per_second.observe(*r));
    llm.prompt_tokens = 64;
    llm.completion_tokens = completion_tokens;
    llm.context_overflows = 1;
    llm.rejected_busy = 2;
    llm
}

#[test]
fn llm_windows_become_per_cohort_llm_series() {
    let telemetry = Telemetry::new(10_000, 60_000, "test".into());
    let mut first = window(&[0.5, 0.6, 0.7], 0);
    first.llm = Some(llm_window(&[0.045, 0.06, 0.08], &[120.0, 140.0], 100));
    let mut second = window(&[0.9], 0);
    second.llm = Some(llm_window(&[0.085], &[110.0], 30));
    telemetry.record(labels("a", "canary"), 0, &first);
    telemetry.record(labels("a", "canary"), 1_000, &second);
    // another model in the same deployment that is not a language model
    telemetry.record(labels("b", "stable"), 0, &window(&[0.01], 0));

    // The merged window is kept next to the latency data, for analysis.
    let merged = telemetry.since(&labels("a", "canary"), 0);
    let llm = merged.llm.as_ref().expect("merged LLM window");
    assert_eq!(llm.time_to_first_token.count(), 4);
    assert_eq!(llm.completion_tokens, 130);
    assert_eq!(telemetry.since(&labels("b", "stable"), 0).llm, None);

    let text = exposition(telemetry);
    let cohort =
        r#"namespace="default",deployment="vad",variant="int8",device_class="a",role="canary""#;
    for (family, kind) in [
        ("edgefleet_llm_time_to_first_token_seconds", "histogram"),
        ("edgefleet_llm_inter_token_latency_seconds", "histogram"),
        ("edgefleet_llm_queue_wait_seconds", "histogram"),
        ("edgefleet_llm_prompt_tokens_per_second", "histogram"),
        ("edgefleet_llm_decode_tokens_per_second", "histogram"),
        ("edgefleet_llm_prompt_tokens_total", "counter"),
        ("edgefleet_llm_completion_tokens_total", "counter"),
        ("edgefleet_llm_context_overflows_total", "counter"),
        ("edgefleet_llm_rejected_busy_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} {kind}")),
            "{family}: {text}"
        );
    }
    // Time to first token: the latency layout, cumulative, both windows merged.
    let ttft = |le: &str| {
        sample(
            &text,
            &format!("edgefleet_llm_time_to_first_token_seconds_bucket{{{cohort},le=\"{le}\"}}"),
        )
    };
    assert_eq!(ttft("0.03"), 0.0);
    assert_eq!(ttft("0.05"), 1.0);
    assert_eq!(ttft("0.07"), 2.0);
    assert_eq!(ttft("0.1"), 4.0);
    assert_eq!(ttft("+Inf"), 4.0);
    let ttft_sum = sample(
        &text,
        &format!("edgefleet_llm_time_to_first_token_seconds_sum{{{cohort}}}"),
    );
    assert!((ttft_sum - 0.27).abs() < 1e-9, "{ttft_sum}");
    let ttft_buckets = text
        .lines()
        .filter(|l| l.starts_with("edgefleet_llm_time_to_first_token_seconds_bucket{"))
        .count();
    assert_eq!(ttft_buckets, LATENCY_BUCKETS_SECONDS.len() + 1, "{text}");
    assert_eq!(
        sample(
            &text,
            &format!("edgefleet_llm_inter_token_latency_seconds_count{{{cohort}}}")
        ),
        4.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("edgefleet_llm_queue_wait_seconds_bucket{{{cohort},le=\"0.002\"}}")
        ),
        2.0
    );
    // Token rates: their own layout, in tokens per second.
    let decode = |le: &str| {
        sample(
            &text,
            &format!("edgefleet_llm_decode_tokens_per_second_bucket{{{cohort},le=\"{le}\"}}"),
        )
    };
    assert_eq!(decode("100"), 0.0);
    assert_eq!(decode("150"), 3.0);
    assert_eq!(decode("+Inf"), 3.0);
    let decode_buckets = text
        .lines()
        .filter(|l| l.starts_with("edgefleet_llm_decode_tokens_per_second_bucket{"))
        .count();
    assert_eq!(decode_buckets, TOKEN_RATE_BUCKETS.len() + 1, "{text}");
    assert_eq!(
        sample(
            &text,
            &format!("edgefleet_llm_decode_tokens_per_second_sum{{{cohort}}}")
        ),
        370.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("edgefleet_llm_prompt_tokens_per_second_bucket{{{cohort},le=\"1000\"}}")
        ),
        2.0
    );
    // Counters add up over the windows.
    for (counter, value) in [
        ("edgefleet_llm_prompt_tokens_total", 128.0),
        ("edgefleet_llm_completion_tokens_total", 130.0),
        ("edgefleet_llm_context_overflows_total", 2.0),
        ("edgefleet_llm_rejected_busy_total", 4.0),
    ] {
        assert_eq!(sample(&text, &format!("{counter}{{{cohort}}}")), value);
    }
    // The cohort that serves no language model has latency series and no LLM series.
    assert!(
        text.contains(r#"edgefleet_inference_requests_total{namespace="default",deployment="vad",variant="int8",device_class="b",role="stable"} 1"#),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("edgefleet_llm_") && l.contains(r#"device_class="b""#)),
        "{text}"
    );
}

#[test]
fn windows_without_llm_create_no_llm_series() {
    let telemetry = Telemetry::new(10_000, 60_000, "test".into());
    telemetry.record(labels("a", "canary"), 0, &window(&[0.01, 0.02], 0));
    telemetry.record(labels("b", "stable"), 0, &window(&[0.01], 1));
    assert_eq!(telemetry.since(&labels("a", "canary"), 0).llm, None);
    let text = exposition(telemetry);
    assert!(
        text.contains("edgefleet_inference_latency_seconds_bucket"),
        "{text}"
    );
    assert!(
        !text.contains("edgefleet_llm_"),
        "no LLM family, not even its HELP or TYPE: {text}"
    );
}
