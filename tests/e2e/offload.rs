//! Edge–cloud collaboration end to end, with a real classifier (PaddleOCR's text-direction
//! `cls`, two classes, softmax output): an edge agent serves the int8 variant with a
//! `confidenceBelow` offload policy; the "cloud" is a second real agent serving the reference
//! fp32 variant, placed there by its own ModelDeployment.
//!
//! The test first asks the edge model with offload off and computes, from those answers, which
//! inputs fall below the threshold; with offload on exactly those are answered by the cloud.
//! With the cloud stopped, every request is still answered, those same ones marked
//! `local-fallback`. The controller's per-cohort offload metrics count them.

#![allow(clippy::unwrap_used)]
// test code: a failed step should panic with its location
// Request numbers index several parallel per-request tables.
#![allow(clippy::needless_range_loop)]
use std::collections::BTreeSet;
use std::time::Duration;

use edgefleet_e2e::*;

const MODEL: &str = "ocr-cls";
const OUTPUT: &str = "save_infer_model/scale_0.tmp_1";
const SHAPE: [usize; 4] = [1, 3, 48, 192];
const REQUESTS: usize = 40;

/// Input `k`: smooth signals of varying frequency, phase and contrast, so that the
/// classifier is sure of some and unsure of others.
fn input(k: usize) -> Vec<f32> {
    let count: usize = SHAPE.iter().product();
    let a = 0.0005 + 0.013 * k as f32;
    let b = 0.37 * k as f32;
    let scale = 0.2 + 0.06 * (k % 17) as f32;
    (0..count)
        .map(|i| scale * (a * i as f32 + b).sin())
        .collect()
}

struct Answer {
    source: Option<String>,
    probabilities: Vec<f64>,
}

async fn ask(client: &reqwest::Client, agent: &AgentProc, k: usize) -> Answer {
    let body = serde_json::json!({
        "id": k.to_string(),
        "inputs": [{"name": "x", "shape": SHAPE, "datatype": "FP32", "data": input(k)}]
    });
    let response = client
        .post(format!("http://{}/v2/models/{MODEL}/infer", agent.api))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "request {k}: {response:?}");
    let header = response
        .headers()
        .get("edgefleet-source")
        .map(|v| v.to_str().unwrap().to_string());
    let value: serde_json::Value = response.json().await.unwrap();
    assert_eq!(value["id"], k.to_string(), "{value}");
    let source = value["parameters"]["edgefleet.source"]
        .as_str()
        .map(str::to_string);
    assert_eq!(source, header, "parameter and header agree: {value}");
    let output = value["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == OUTPUT)
        .unwrap_or_else(|| panic!("no {OUTPUT} in {value}"));
    Answer {
        source,
        probabilities: output["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect(),
    }
}

fn manifest(
    name: &str,
    tier: &str,
    variant: (&str, &(String, String, u64)),
    offload: &str,
) -> String {
    let (precision, (uri, sha, size)) = variant;
    format!(
        r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}, namespace: default}}
spec:
  model: {{name: {MODEL}, version: "1.4.4"}}
  selector: {{matchLabels: {{tier: {tier}}}}}
  variants:
  - name: {precision}
    precision: {precision}
    artifact: {{uri: "{uri}", sha256: "{sha}", sizeBytes: {size}}}
    quality: {{accuracyDrift: 0.0}}
  rollout:
    steps: [{{percent: 100}}]
    analysis: {{intervalSeconds: 1, minSamples: 1}}
{offload}"#
    )
}

fn cohort_value(exposition: &str, metric: &str) -> Option<f64> {
    deployment_metric(exposition, metric, "text-direction")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_confidence_requests_go_to_the_cloud_and_fall_back_when_it_is_gone() {
    let logs = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let fp32_bytes = std::fs::read(model("ocr-cls.onnx")).unwrap();
    let (int8_bytes, _) =
        edgefleet_compress::quantize_int8(&fp32_bytes, Default::default()).unwrap();
    let fp32 = artifacts.put("fp32.onnx", &fp32_bytes);
    let int8 = artifacts.put("int8.onnx", &int8_bytes);
    let db = tempfile::tempdir().unwrap();
    let controller = ControllerProc::start(
        &standin,
        &format!("sqlite://{}", db.path().join("fleet.db").display()),
        &broker.url(),
        "offload",
        logs.path(),
    );
    let device = |id: &str, labels: &'static str| DeviceSpec {
        id: id.into(),
        arch: "x86_64",
        memory_mib: 4096,
        labels,
        extra_latency_ms: 0,
    };
    let edge = AgentProc::start(&device("edge-1", "tier=edge"), &broker.url(), logs.path());
    let mut cloud = AgentProc::start(&device("cloud-1", "tier=cloud"), &broker.url(), logs.path());
    let fail = |what: &str| format!("{what}\n{}", controller.proc.log_tail());

    // The cloud model and the edge model, offload off.
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest(
            "text-direction-cloud",
            "cloud",
            ("fp32", &fp32),
            "",
        )),
    );
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("text-direction", "edge", ("int8", &int8), "")),
    );
    for (agent, variant) in [(&edge, "int8"), (&cloud, "fp32")] {
        eventually(Duration::from_secs(120), "models served", || async {
            match agent.model(MODEL).await {
                Some(m) if m["variant"] == variant => Ok(()),
                other => Err(fail(&format!("{}: {other:?}", agent.device.id))),
            }
        })
        .await;
    }

    // 1. Offload off: the edge model's own answers, and which fall below the threshold.
    let client = reqwest::Client::new();
    let mut local = Vec::new();
    for k in 0..REQUESTS {
        let answer = ask(&client, &edge, k).await;
        assert_eq!(answer.source, None, "no policy, no marker");
        local.push(answer.probabilities);
    }
    let confidences: Vec<f64> = local
        .iter()
        .map(|p| p.iter().copied().fold(f64::MIN, f64::max))
        .collect();
    let mut sorted = confidences.clone();
    sorted.sort_by(f64::total_cmp);
    // The threshold sits in the widest gap of the middle half, away from any answer.
    let (low, high) = (REQUESTS / 4..3 * REQUESTS / 4)
        .map(|i| (sorted[i], sorted[i + 1]))
        .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
        .unwrap();
    assert!(high - low > 1e-4, "confidences too close: {sorted:?}");
    let threshold = (low + high) / 2.0;
    let below: BTreeSet<usize> = (0..REQUESTS)
        .filter(|k| confidences[*k] < threshold)
        .collect();
    eprintln!(
        "threshold {threshold:.4}: {} of {REQUESTS} local answers below it (confidences {:.3?})",
        below.len(),
        sorted
    );

    // 2. Offload on, towards the cloud agent.
    let policy = format!(
        r#"  offload:
    inputsMayLeaveDevice: true
    endpoint: {{url: "http://{}", model: {MODEL}}}
    triggers:
      confidenceBelow: {{output: "{OUTPUT}", threshold: {threshold}}}
    rateLimit: {{requestsPerSecond: 1000, burst: 1000}}
    timeoutMs: 5000
"#,
        cloud.api
    );
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest(
            "text-direction",
            "edge",
            ("int8", &int8),
            &policy,
        )),
    );
    eventually(
        Duration::from_secs(60),
        "the policy on the edge agent",
        || async {
            match edge.model(MODEL).await {
                Some(m) if m["offload"]["inputsMayLeaveDevice"] == true => Ok(()),
                other => Err(fail(&format!("{other:?}"))),
            }
        },
    )
    .await;
    let mut offloaded = BTreeSet::new();
    for k in 0..REQUESTS {
        let answer = ask(&client, &edge, k).await;
        match answer.source.as_deref() {
            Some("cloud") => {
                offloaded.insert(k);
                // The cloud's fp32 answer, as the cloud agent gives it directly.
                let direct = ask(&client, &cloud, k).await;
                assert_eq!(answer.probabilities, direct.probabilities, "request {k}");
            }
            Some("local") => assert_eq!(answer.probabilities, local[k], "request {k}"),
            other => panic!("request {k}: source {other:?}"),
        }
    }
    assert_eq!(
        offloaded, below,
        "offloaded requests are exactly the local answers below {threshold}"
    );
    assert!(!below.is_empty() && below.len() < REQUESTS);
    let expected = below.len() as f64;
    eventually(
        Duration::from_secs(30),
        "offloads in the controller's metrics",
        || async {
            let text = controller.metrics().await;
            match cohort_value(&text, "edgefleet_offload_requests_total") {
                Some(v) if v == expected => Ok(()),
                other => Err(format!("{other:?} != {expected}")),
            }
        },
    )
    .await;

    // 3. The cloud is gone: every request is still answered, the unsure ones marked.
    cloud.proc.kill();
    for k in 0..REQUESTS {
        let answer = ask(&client, &edge, k).await;
        let want = if below.contains(&k) {
            "local-fallback"
        } else {
            "local"
        };
        assert_eq!(answer.source.as_deref(), Some(want), "request {k}");
        assert_eq!(
            answer.probabilities, local[k],
            "request {k}: the local answer"
        );
    }
    eventually(
        Duration::from_secs(30),
        "fallbacks in the controller's metrics",
        || async {
            let text = controller.metrics().await;
            let offloads = cohort_value(&text, "edgefleet_offload_requests_total");
            let fallbacks = cohort_value(&text, "edgefleet_offload_fallbacks_total");
            let cloud_count = cohort_value(&text, "edgefleet_cloud_request_duration_seconds_count");
            if offloads == Some(2.0 * expected)
                && fallbacks == Some(expected)
                && cloud_count == Some(2.0 * expected)
            {
                Ok(())
            } else {
                Err(format!("{offloads:?} {fallbacks:?} {cloud_count:?}"))
            }
        },
    )
    .await;
}
