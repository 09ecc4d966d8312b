//! Issue 21: ONNX Runtime as a first-class backend. Two real agents of the same class, one with
//! `libonnxruntime` (the PyPI wheel's) and one without; a ModelDeployment lists the orientation
//! CNN twice, for ONNX Runtime and for tract, preferring the lower measured latency. The device
//! that announces `onnxruntime` gets the ONNX Runtime variant, the other the tract one, and both
//! answer the same input alike (two independent implementations agreeing).

#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location
use std::time::Duration;

use edgefleet_e2e::orientation::{MODEL, md_status};
use edgefleet_e2e::*;

fn manifest(file: &(String, String, u64)) -> String {
    let (uri, sha, size) = file;
    // Latency hints from BENCHMARKS.md (orientation, 1 thread): ONNX Runtime 4.97 ms, tract 9.42.
    format!(
        r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {{name: orientation, namespace: default}}
spec:
  model: {{name: {MODEL}, version: "1.0.0"}}
  selector: {{matchLabels: {{site: plant-a}}}}
  variants:
  - name: fp32-ort
    precision: fp32
    runtime: onnxruntime
    artifact: {{uri: "{uri}", sha256: "{sha}", sizeBytes: {size}}}
    quality: {{accuracyDrift: 0.0, latencyHintMs: 4.97}}
  - name: fp32
    precision: fp32
    artifact: {{uri: "{uri}", sha256: "{sha}", sizeBytes: {size}}}
    quality: {{accuracyDrift: 0.0, latencyHintMs: 9.42}}
  selection: {{prefer: latency}}
  rollout:
    steps: [{{percent: 100}}]
  selfTest:
    inputs: [{{name: x, shape: [1, 3, 224, 224], fill: 0.5}}]
"#
    )
}

fn scores(answer: &serde_json::Value) -> Vec<f64> {
    answer["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_with_onnxruntime_get_its_variant_and_the_others_tract() {
    let logs = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let file = artifacts.put(
        "orientation.onnx",
        &std::fs::read(model("orientation.onnx")).unwrap(),
    );
    let db = tempfile::tempdir().unwrap();
    let controller = ControllerProc::start(
        &standin,
        &format!("sqlite://{}", db.path().join("fleet.db").display()),
        &broker.url(),
        "onnxruntime",
        logs.path(),
    );
    let device = |id: &str| DeviceSpec {
        id: id.into(),
        arch: "x86_64",
        memory_mib: 4096,
        labels: "site=plant-a",
        extra_latency_ms: 0,
    };
    let lib = onnxruntime_lib().display().to_string();
    let with_ort = AgentProc::start_with_env(
        &device("gw-ort-1"),
        &broker.url(),
        logs.path(),
        &[("EDGEFLEET_AGENT_ONNXRUNTIME_LIB", lib.as_str())],
    );
    let tract_only = AgentProc::start(&device("gw-tract-1"), &broker.url(), logs.path());
    standin.kubectl_ok(&["apply", "-f", "-"], Some(&manifest(&file)));

    for (agent, variant) in [(&with_ort, "fp32-ort"), (&tract_only, "fp32")] {
        eventually(
            Duration::from_secs(120),
            "the variant its runtimes call for",
            || async {
                match agent.model(MODEL).await {
                    Some(m) if m["variant"] == variant => Ok(()),
                    other => Err(format!(
                        "{}: {other:?}\n{}",
                        agent.device.id,
                        controller.proc.log_tail()
                    )),
                }
            },
        )
        .await;
    }
    eventually(Duration::from_secs(60), "both ready", || async {
        let status = md_status(&standin);
        if status["phase"] == "Succeeded" && status["devices"]["ready"] == 2 {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;

    for fill in [0.0f32, 0.25, 0.5, 1.0] {
        let ort = with_ort
            .infer(MODEL, "x", &[1, 3, 224, 224], fill)
            .await
            .unwrap();
        let tract = tract_only
            .infer(MODEL, "x", &[1, 3, 224, 224], fill)
            .await
            .unwrap();
        let (a, b) = (scores(&ort), scores(&tract));
        assert_eq!(a.len(), b.len());
        assert!(!a.is_empty());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-3,
            "fill {fill}: onnxruntime {a:?} vs tract {b:?}"
        );
    }
}
