//! Artifact signatures end to end: an agent that trusts one ed25519 key installs only
//! artifacts signed by it, refuses unsigned and forged ones before downloading a byte, and
//! keeps serving its previous model meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use edgefleet_protocol::wire::ModelPhase;
use ring::signature::{Ed25519KeyPair, KeyPair};

use common::*;

const T: Duration = Duration::from_secs(60);

fn sign(pair: &Ed25519KeyPair, sha: &str) -> String {
    STANDARD.encode(pair.sign(sha.as_bytes()).as_ref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_artifacts_signed_by_a_trusted_key_are_installed() {
    let publisher = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let attacker = Ed25519KeyPair::from_seed_unchecked(&[66; 32]).unwrap();
    let server = ArtifactServer::start().await;
    let good = model_bytes("ocr-cls.onnx");
    let good_uri = server.add("ocr-cls.onnx", good.clone());
    let other = model_bytes("silero-vad.onnx");
    let other_uri = server.add("silero-vad.onnx", other.clone());
    let broker = TestBroker::get();
    let device = unique_device("signed");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("trusted.keys");
    std::fs::write(&keys, STANDARD.encode(publisher.public_key().as_ref())).unwrap();
    let agent = AgentProcess::spawn(
        &dir.path().join("store"),
        &[
            "--device-id",
            &device,
            "--broker",
            &broker.url(),
            "--trusted-keys-file",
            keys.to_str().unwrap(),
        ],
    );
    let d = "ocr/text-direction";

    // 1. Signed by the trusted key: installed.
    let mut v1 = assignment(d, "ocr-cls", "fp32", &good_uri, &good);
    v1.artifact.signature = Some(sign(&publisher, &v1.artifact.sha256));
    obs.publish_desired(&device, desired(&device, 1, vec![v1.clone()]))
        .await;
    wait_phase(&mut obs, 1, d, ModelPhase::Ready, T).await;
    wait_serving(&agent, "ocr-cls", &v1.artifact.sha256, T).await;

    // 2. Unsigned, 3. signed by another key, 4. the publisher's signature of a different
    // artifact replayed: each refused with the reason, nothing downloaded, v1 still served.
    let unsigned = assignment(d, "ocr-cls", "fp32", &other_uri, &other);
    let mut forged = unsigned.clone();
    forged.artifact.signature = Some(sign(&attacker, &forged.artifact.sha256));
    let mut replayed = unsigned.clone();
    replayed.artifact.signature = v1.artifact.signature.clone();
    for (generation, bad, reason) in [
        (2, unsigned, "unsigned"),
        (3, forged, "does not verify"),
        (4, replayed, "does not verify"),
    ] {
        obs.publish_desired(&device, desired(&device, generation, vec![bad]))
            .await;
        let m = wait_phase(&mut obs, generation, d, ModelPhase::Failed, T).await;
        let why = m.reason.clone().unwrap_or_default();
        assert!(why.contains("signature") && why.contains(reason), "{m:?}");
        assert_eq!(
            m.serving_sha256.as_deref(),
            Some(v1.artifact.sha256.as_str())
        );
        wait_serving(&agent, "ocr-cls", &v1.artifact.sha256, T).await;
    }
    assert!(
        server.ranges("silero-vad.onnx").is_empty(),
        "a refused artifact was downloaded"
    );
    obs.clear_retained(&device).await;
}

#[test]
fn an_unreadable_or_empty_key_file_is_a_config_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.keys");
    std::fs::write(&empty, "# no keys yet\n").unwrap();
    for path in [dir.path().join("missing.keys"), empty] {
        let out = std::process::Command::new(agent_bin())
            .args(["--device-id", "d1", "--store"])
            .arg(dir.path().join("store"))
            .arg("--trusted-keys-file")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("trusted_keys_file"), "{stderr}");
    }
}
