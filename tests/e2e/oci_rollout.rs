//! Issue 24: a ModelDeployment whose variant is an OCI artifact named by tag. The controller
//! (Kubernetes mode, the stand-in) resolves the tag once, with its own registry credentials,
//! and every device gets the same pinned bytes — a device that joins after the tag moved
//! included. A reference the registry does not have leaves a clear condition and touches no
//! device.

#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location
use std::time::Duration;

use edgefleet_e2e::oci::{self, BASIC_AUTH};
use edgefleet_e2e::*;

const MODEL: &str = "ocr-cls";

fn manifest(name: &str, uri: &str) -> String {
    format!(
        r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}, namespace: default}}
spec:
  model: {{name: {MODEL}, version: "1.0.0"}}
  selector: {{matchLabels: {{site: plant-a}}}}
  variants:
  - name: fp32
    precision: fp32
    artifact: {{uri: "{uri}"}}
  rollout:
    steps: [{{percent: 100}}]
"#
    )
}

fn status(standin: &StandIn, name: &str) -> serde_json::Value {
    let json = standin.kubectl_ok(&["get", "md", name, "-o", "json"], None);
    serde_json::from_str::<serde_json::Value>(&json).unwrap()["status"].clone()
}

async fn wait_sha(agent: &AgentProc, sha: &str, log: impl Fn() -> String) {
    eventually(Duration::from_secs(120), "the pinned model", || async {
        match agent.model(MODEL).await {
            Some(m) if m["sha256"] == sha => Ok(()),
            other => Err(format!("{}: {other:?}\n{}", agent.device.id, log())),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_is_resolved_once_and_every_device_gets_the_same_bytes() {
    let logs = tempfile::tempdir().unwrap();
    let repo = oci::unique_repo("rollout");
    let first = oci::push(
        BASIC_AUTH,
        &repo,
        "stable",
        &models_dir().join("ocr-cls.onnx"),
    );
    let auth = oci::auth_file(logs.path(), oci::PASSWORD);
    let auth = auth.display().to_string();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let db = tempfile::tempdir().unwrap();
    let controller = ControllerProc::start_with_env(
        &standin,
        &format!("sqlite://{}", db.path().join("fleet.db").display()),
        &broker.url(),
        "oci",
        logs.path(),
        &[
            ("EDGEFLEET_REGISTRY_AUTH_FILE", auth.as_str()),
            ("EDGEFLEET_INSECURE_REGISTRIES", BASIC_AUTH),
        ],
    );
    let device = |id: &str| DeviceSpec {
        id: id.into(),
        arch: "x86_64",
        memory_mib: 2048,
        labels: "site=plant-a",
        extra_latency_ms: 0,
    };
    // devices hold their own credentials: the controller never sends any
    let agent_env = [
        ("EDGEFLEET_AGENT_REGISTRY_AUTH_FILE", auth.as_str()),
        ("EDGEFLEET_AGENT_INSECURE_REGISTRIES", BASIC_AUTH),
    ];
    let early = AgentProc::start_with_env(&device("oci-1"), &broker.url(), logs.path(), &agent_env);
    let uri = format!("oci://{BASIC_AUTH}/{repo}:stable");
    standin.kubectl_ok(&["apply", "-f", "-"], Some(&manifest("ocr", &uri)));
    wait_sha(&early, &first.layer_sha256, || controller.proc.log_tail()).await;

    // The tag moves to other bytes during the rollout; a device that joins now still gets
    // what the tag named when the rollout began.
    let moved = oci::push(
        BASIC_AUTH,
        &repo,
        "stable",
        &models_dir().join("silero-vad.onnx"),
    );
    assert_ne!(moved.layer_sha256, first.layer_sha256);
    let late = AgentProc::start_with_env(&device("oci-2"), &broker.url(), logs.path(), &agent_env);
    wait_sha(&late, &first.layer_sha256, || controller.proc.log_tail()).await;
    eventually(Duration::from_secs(60), "both ready", || async {
        let s = status(&standin, "ocr");
        if s["phase"] == "Succeeded" && s["devices"]["ready"] == 2 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let metrics = controller.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "edgefleet_artifact_resolutions_total{result=\"ok\"}"
        ),
        1.0,
        "one registry lookup for the whole rollout:\n{metrics}"
    );

    // A reference the registry does not have: a condition that says so, no device touched.
    let missing = format!("oci://{BASIC_AUTH}/{repo}:no-such-tag");
    standin.kubectl_ok(&["apply", "-f", "-"], Some(&manifest("missing", &missing)));
    eventually(Duration::from_secs(60), "the reason in status", || async {
        let s = status(&standin, "missing");
        let said = s["conditions"].as_array().into_iter().flatten().any(|c| {
            c["type"] == "ArtifactsResolved"
                && c["status"] == "False"
                && c["message"].as_str().unwrap_or("").contains("not found")
        });
        if said { Ok(()) } else { Err(s.to_string()) }
    })
    .await;
    wait_sha(&early, &first.layer_sha256, || controller.proc.log_tail()).await;
}
