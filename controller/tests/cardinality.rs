//! Bounded labels: the number of series on /metrics does not grow with the number of devices,
//! and device-supplied strings cannot create series.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::fleet::{RecordingPublisher, fleet_state};
use edgefleet_controller::ingest;
use edgefleet_controller::metrics::Metrics;
use edgefleet_controller::mqtt::DeviceMessage;
use edgefleet_controller::reconcile::{DeploymentInput, Reconciler};
use edgefleet_controller::telemetry::Telemetry;
use edgefleet_crds::{ModelDeploymentSpec, Runtime};
use edgefleet_protocol::LatencyHistogram;
use edgefleet_protocol::llm::LlmWindow;
use edgefleet_protocol::wire::{DeviceId, Hello, ModelWindow, Telemetry as Window};

struct TelemetryCollector(Arc<Telemetry>);

impl prometheus::core::Collector for TelemetryCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

fn spec() -> ModelDeploymentSpec {
    let yaml = format!(
        "model: {{name: vad, version: '1'}}\nvariants:\n- name: fp32\n  precision: fp32\n  artifact: {{uri: 'http://a/fp32', sha256: '{}', sizeBytes: 10}}\n  requires: {{minMemoryMib: 1024}}\n- name: int8\n  precision: int8\n  artifact: {{uri: 'http://a/int8', sha256: '{}', sizeBytes: 5}}\n",
        "aa".repeat(32),
        "bb".repeat(32)
    );
    serde_yaml::from_str(&yaml).expect("spec")
}

/// Tokens each device reports generating in its window.
const COMPLETION_TOKENS: u64 = 7;

/// Series exported after `devices` devices said hello and reported a window each (every
/// window delivered twice, as a QoS 1 duplicate would be).
async fn series_after(devices: usize) -> (usize, String) {
    let metrics = Metrics::new();
    let fleet = fleet_state(metrics.clone(), 1000, 60_000).await;
    let telemetry = fleet.telemetry.clone();
    metrics
        .registry
        .register(Box::new(TelemetryCollector(telemetry.clone())))
        .expect("register");
    let engine = Reconciler::new(fleet, Arc::new(RecordingPublisher::default()));

    let archs = ["x86_64", "aarch64"];
    let memories = [256, 2048, 8192];
    for i in 0..devices {
        let hello = Hello {
            device_id: DeviceId::new(format!("dev-{i:05}")).expect("id"),
            agent_version: "sim".into(),
            labels: BTreeMap::from([("serial".into(), format!("sn-{i}"))]),
            arch: archs[i % 2].into(),
            cores: 4,
            cpu_features: vec![],
            memory_total_mib: memories[i % 3],
            memory_available_mib: 100,
            disk_free_mib: 1000,
            accelerators: vec![],
            runtimes: vec![Runtime::Tract],
            site_cache_url: None,
        };
        ingest::handle(engine.fleet(), &DeviceMessage::Hello(hello))
            .await
            .expect("hello");
    }
    let spec = spec();
    let input = DeploymentInput {
        namespace: "default",
        name: "vad",
        uid: "u",
        generation: Some(1),
        spec: &spec,
        status: None,
    };
    engine.reconcile(&input, 0).await.expect("reconcile");

    for i in 0..devices {
        let mut latency = LatencyHistogram::default();
        latency.observe(0.001 * (i % 50) as f64);
        // Every device serves a language model here: LLM series must be as bounded.
        let mut llm = LlmWindow::default();
        llm.time_to_first_token
            .observe(0.04 + 0.001 * (i % 50) as f64);
        llm.inter_token_latency.observe(0.008);
        llm.decode_tokens_per_second
            .observe(100.0 + (i % 50) as f64);
        llm.completion_tokens = COMPLETION_TOKENS;
        let variant = if memories[i % 3] >= 1024 {
            "fp32"
        } else {
            "int8"
        };
        let window = Window {
            device_id: DeviceId::new(format!("dev-{i:05}")).expect("id"),
            seq: 1,
            window_start_ms: 1_000,
            window_seconds: 10,
            models: vec![
                ModelWindow {
                    deployment: "default/vad".into(),
                    variant: variant.into(),
                    requests: 1,
                    errors: 0,
                    latency: latency.clone(),
                    offload: None,
                    llm: Some(llm.clone()),
                },
                // a device inventing names must not create series
                ModelWindow {
                    deployment: "default/vad".into(),
                    variant: format!("made-up-{i}"),
                    requests: 1,
                    errors: 0,
                    latency: latency.clone(),
                    offload: None,
                    llm: Some(llm),
                },
                ModelWindow {
                    deployment: format!("ns/dep-{i}"),
                    variant: "fp32".into(),
                    requests: 1,
                    errors: 0,
                    latency,
                    offload: None,
                    llm: None,
                },
            ],
        };
        let message = DeviceMessage::Telemetry(window);
        for _delivery in 0..2 {
            ingest::handle(engine.fleet(), &message)
                .await
                .expect("telemetry");
        }
    }
    let text = metrics.render();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    (series, text)
}

#[tokio::test]
async fn series_do_not_grow_with_devices() {
    let (small, _) = series_after(60).await;
    let (large, text) = series_after(1000).await;
    assert_eq!(
        small, large,
        "series must not depend on the number of devices"
    );
    assert!(!text.contains("dev-0"), "no device id in any label");
    assert!(
        !text.contains("made-up"),
        "device-invented variants are not exported"
    );
    assert!(
        !text.contains("dep-1"),
        "device-invented deployments are not exported"
    );
    assert!(
        text.contains("edgefleet_inference_latency_seconds_bucket"),
        "{text}"
    );
    let latency_series = text
        .lines()
        .filter(|l| l.starts_with("edgefleet_inference_requests_total"))
        .count();
    // 2 arches x 3 memory tiers, each on exactly one variant, all stable
    assert_eq!(latency_series, 6, "{text}");

    // Every LLM family has one series per cohort, like the latency ones.
    for family in [
        "edgefleet_llm_time_to_first_token_seconds_count",
        "edgefleet_llm_inter_token_latency_seconds_count",
        "edgefleet_llm_queue_wait_seconds_count",
        "edgefleet_llm_prompt_tokens_per_second_count",
        "edgefleet_llm_decode_tokens_per_second_count",
        "edgefleet_llm_prompt_tokens_total",
        "edgefleet_llm_completion_tokens_total",
        "edgefleet_llm_context_overflows_total",
        "edgefleet_llm_rejected_busy_total",
    ] {
        let series = text
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .count();
        assert_eq!(series, 6, "{family}: {text}");
    }
    // Each window counted once although delivered twice.
    let generated: f64 = text
        .lines()
        .filter(|l| l.starts_with("edgefleet_llm_completion_tokens_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(generated, (1000 * COMPLETION_TOKENS) as f64, "{text}");
}
