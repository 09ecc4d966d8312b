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

/// One fp32 variant of ocr-cls for the devices of `site`; `artifact` is the YAML map's body.
fn manifest(name: &str, site: &str, artifact: &str) -> String {
    format!(
        r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}, namespace: default}}
spec:
  model: {{name: {MODEL}, version: "1.0.0"}}
  selector: {{matchLabels: {{site: {site}}}}}
  variants:
  - name: fp32
    precision: fp32
    artifact: {{{artifact}}}
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
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("ocr", "plant-a", &format!("uri: \"{uri}\""))),
    );
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
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest(
            "missing",
            "plant-a",
            &format!("uri: \"{missing}\""),
        )),
    );
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

/// The controller names a site's cache (a device of the site that announced one) in the
/// other devices' assignments; they download through it, and the per-site view counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_sends_a_sites_devices_to_its_cache() {
    let logs = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let origin = ArtifactServer::start().await;
    let file = origin.put(
        "ocr-cls.onnx",
        &std::fs::read(models_dir().join("ocr-cls.onnx")).unwrap(),
    );
    let size = file.2;
    let db = tempfile::tempdir().unwrap();
    let controller = ControllerProc::start(
        &standin,
        &format!("sqlite://{}", db.path().join("fleet.db").display()),
        &broker.url(),
        "site-cache",
        logs.path(),
    );
    let device = |id: &str| DeviceSpec {
        id: id.into(),
        arch: "x86_64",
        memory_mib: 2048,
        labels: "site=plant-b",
        extra_latency_ms: 0,
    };
    let listen = format!("127.0.0.1:{}", free_port());
    let cache = AgentProc::start_with_env(
        &device("b-cache"),
        &broker.url(),
        logs.path(),
        &[("EDGEFLEET_AGENT_SITE_CACHE_LISTEN", listen.as_str())],
    );
    let devices = [
        AgentProc::start(&device("b-1"), &broker.url(), logs.path()),
        AgentProc::start(&device("b-2"), &broker.url(), logs.path()),
    ];
    // the cache's hello first, so that the first plan already names it
    eventually(Duration::from_secs(30), "three devices online", || async {
        let online = metric_sum(
            &controller.metrics().await,
            "edgefleet_devices{state=\"online\"}",
        );
        if online == 3.0 {
            Ok(())
        } else {
            Err(format!("{online} online"))
        }
    })
    .await;
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest(
            "sited",
            "plant-b",
            &format!(
                "uri: \"{}\", sha256: \"{}\", sizeBytes: {size}",
                file.0, file.1
            ),
        )),
    );
    for agent in devices.iter().chain([&cache]) {
        wait_sha(agent, &file.1, || controller.proc.log_tail()).await;
    }
    // the cache's own copy and the one it keeps for the site: two; the devices: none
    assert_eq!(origin.sent_bytes(), 2 * size);
    let served = |text: &str, source: &str| {
        metric_sum(
            text,
            &format!("edgefleet_site_fetched_bytes{{site=\"plant-b\",source=\"{source}\"}}"),
        )
    };
    eventually(Duration::from_secs(30), "the per-site view", || async {
        let text = controller.metrics().await;
        let (site_cache, from_origin) = (served(&text, "site_cache"), served(&text, "origin"));
        if site_cache == 2.0 * size as f64 && from_origin == size as f64 {
            Ok(())
        } else {
            Err(format!("site_cache {site_cache}, origin {from_origin}"))
        }
    })
    .await;
}
