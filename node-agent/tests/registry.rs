//! Models from OCI registries and through a site cache: real agents pulling from Debian's
//! docker-registry (Distribution 2.8; `scripts/lib.sh ensure_registry` runs one anonymous on
//! :5000 and one with basic auth on :5001), artifacts pushed with `oras`; and agents of one
//! site downloading through another agent acting as the site cache.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use edgefleet_e2e::oci::{self, ANONYMOUS, BASIC_AUTH, SlowProxy};
use edgefleet_protocol::wire::{FetchedBytes, ModelPhase};

use common::*;

const T: Duration = Duration::from_secs(60);

/// An assignment of `file` as pushed to `registry/repo`, pinned by manifest digest.
fn oci_assignment(
    deployment: &str,
    model: &str,
    registry: &str,
    repo: &str,
    pushed: &oci::Pushed,
) -> edgefleet_protocol::wire::Assignment {
    let mut a = assignment(deployment, model, "fp32", "http://unused", &[]);
    a.artifact.uri = pushed.by_digest(registry, repo);
    a.artifact.sha256 = pushed.layer_sha256.clone();
    a.artifact.size_bytes = pushed.size;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_basic_auth_serves_the_agent_and_a_wrong_password_fails_clearly() {
    let repo = oci::unique_repo("auth");
    let pushed = oci::push(BASIC_AUTH, &repo, "v1", &models_dir().join("ocr-cls.onnx"));
    let broker = TestBroker::get();
    let dir = tempfile::tempdir().unwrap();

    // The right credentials: the blob streams into the store and serves.
    let device = unique_device("oci-auth");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let good = oci::auth_file(dir.path(), oci::PASSWORD)
        .display()
        .to_string();
    let agent = start(
        &dir.path().join("good"),
        &device,
        &broker.url(),
        &[
            "--registry-auth-file",
            &good,
            "--insecure-registries",
            BASIC_AUTH,
        ],
    );
    let a = oci_assignment("ocr/cls", "ocr-cls", BASIC_AUTH, &repo, &pushed);
    obs.publish_desired(&device, desired(&device, 1, vec![a.clone()]))
        .await;
    let m = wait_phase(&mut obs, 1, "ocr/cls", ModelPhase::Ready, T).await;
    assert_eq!(
        m.fetched,
        Some(FetchedBytes {
            origin: pushed.size,
            site_cache: 0
        })
    );
    wait_serving(&agent, "ocr-cls", &pushed.layer_sha256, T).await;
    let origin = metric(
        &agent,
        "edgefleet_agent_download_bytes_total{source=\"origin\"}",
    )
    .await;
    assert_eq!(origin, Some(pushed.size as f64));
    obs.clear_retained(&device).await;

    // A wrong password: a clear error, and the model it already runs keeps serving.
    let device = unique_device("oci-badauth");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let server = ArtifactServer::start().await;
    let first = model_bytes("orientation.onnx");
    let first_uri = server.add("orientation.onnx", first.clone());
    let wrong = oci::auth_file(dir.path(), "not-the-password")
        .display()
        .to_string();
    let agent = start(
        &dir.path().join("wrong"),
        &device,
        &broker.url(),
        &[
            "--registry-auth-file",
            &wrong,
            "--insecure-registries",
            BASIC_AUTH,
        ],
    );
    let serving = assignment("ocr/cls", "orientation", "fp32", &first_uri, &first);
    obs.publish_desired(&device, desired(&device, 1, vec![serving.clone()]))
        .await;
    wait_phase(&mut obs, 1, "ocr/cls", ModelPhase::Ready, T).await;
    obs.publish_desired(&device, desired(&device, 2, vec![a]))
        .await;
    let m = wait_phase(&mut obs, 2, "ocr/cls", ModelPhase::Failed, T).await;
    let reason = m.reason.unwrap_or_default();
    assert!(
        reason.contains("registry") && reason.contains("refused the credentials"),
        "{reason}"
    );
    assert_eq!(
        m.serving_sha256.as_deref(),
        Some(serving.artifact.sha256.as_str())
    );
    wait_serving(&agent, "orientation", &serving.artifact.sha256, T).await;
    obs.clear_retained(&device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_blob_fails_clearly_and_the_previous_model_keeps_serving() {
    let repo = oci::unique_repo("missing");
    let kept = oci::push(ANONYMOUS, &repo, "v1", &models_dir().join("ocr-cls.onnx"));
    let gone = oci::push(
        ANONYMOUS,
        &repo,
        "v2",
        &models_dir().join("silero-vad.onnx"),
    );
    oci::delete_blob(ANONYMOUS, &repo, &gone.layer_sha256);
    let broker = TestBroker::get();
    let device = unique_device("oci-missing");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        &dir.path().join("store"),
        &device,
        &broker.url(),
        &["--insecure-registries", ANONYMOUS],
    );
    let v1 = oci_assignment("audio/m", "ocr-cls", ANONYMOUS, &repo, &kept);
    obs.publish_desired(&device, desired(&device, 1, vec![v1]))
        .await;
    wait_phase(&mut obs, 1, "audio/m", ModelPhase::Ready, T).await;
    let v2 = oci_assignment("audio/m", "ocr-cls", ANONYMOUS, &repo, &gone);
    obs.publish_desired(&device, desired(&device, 2, vec![v2]))
        .await;
    let m = wait_phase(&mut obs, 2, "audio/m", ModelPhase::Failed, T).await;
    let reason = m.reason.unwrap_or_default();
    assert!(
        reason.contains("registry") && reason.contains("not found"),
        "{reason}"
    );
    assert_eq!(
        m.serving_sha256.as_deref(),
        Some(kept.layer_sha256.as_str())
    );
    wait_serving(&agent, "ocr-cls", &kept.layer_sha256, T).await;
    obs.clear_retained(&device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_midway_resumes_from_the_registry() {
    let repo = oci::unique_repo("resume");
    let pushed = oci::push(
        ANONYMOUS,
        &repo,
        "v1",
        &models_dir().join("orientation.onnx"),
    );
    // 2 MB/s: the 6.8 MB blob takes over three seconds, long enough to kill the agent in it
    let proxy = SlowProxy::start(ANONYMOUS, 2_000_000).await;
    let broker = TestBroker::get();
    let device = unique_device("oci-resume");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let registry = proxy.address();
    let args = ["--insecure-registries", registry.as_str()];
    let mut agent = start(&store, &device, &broker.url(), &args);
    let a = oci_assignment("vision/o", "orientation", &registry, &repo, &pushed);
    obs.publish_desired(&device, desired(&device, 1, vec![a.clone()]))
        .await;
    let partial = store.join("partial").join(&pushed.layer_sha256);
    let on_disk = eventually_size(&partial, 1_000_000).await;
    agent.proc.kill(); // SIGKILL: no chance to tidy up
    assert!(on_disk < pushed.size, "killed before the end");

    let agent = start(&store, &device, &broker.url(), &args);
    wait_phase(&mut obs, 1, "vision/o", ModelPhase::Ready, T).await;
    wait_serving(&agent, "orientation", &pushed.layer_sha256, T).await;
    let resumed = proxy.range_starts();
    assert!(
        resumed.iter().any(|&start| start >= 1_000_000),
        "the second agent asked for the rest, not the whole blob: {resumed:?}"
    );
    assert!(
        proxy.sent_bytes() < pushed.size + pushed.size / 2,
        "{} bytes crossed for a {}-byte blob",
        proxy.sent_bytes(),
        pushed.size
    );
    obs.clear_retained(&device).await;
}

async fn eventually_size(path: &std::path::Path, at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + T;
    loop {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if size >= at_least {
            return size;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} stayed at {size} bytes",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_downloads_once_through_its_cache_and_falls_back_to_the_origin() {
    let server = ArtifactServer::start().await;
    let bytes = model_bytes("orientation.onnx");
    let uri = server.add("orientation.onnx", bytes.clone());
    let size = bytes.len() as u64;
    let broker = TestBroker::get();
    let dir = tempfile::tempdir().unwrap();
    let cache_port = free_port().to_string();
    let cache_listen = format!("127.0.0.1:{cache_port}");
    let cache_device = unique_device("site-cache");
    let mut cache = start(
        &dir.path().join("cache"),
        &cache_device,
        &broker.url(),
        &["--site-cache-listen", &cache_listen],
    );
    let cache_url = format!("http://{cache_listen}");
    let mut a = assignment("vision/o", "orientation", "fp32", &uri, &bytes);
    a.site_cache = Some(cache_url.clone());

    // Two devices of the site: the bytes cross from the origin once.
    for name in ["site-a1", "site-a2"] {
        let device = unique_device(name);
        let mut obs = Observer::connect(broker.port(), &device).await;
        let agent = start(&dir.path().join(name), &device, &broker.url(), &[]);
        obs.publish_desired(&device, desired(&device, 1, vec![a.clone()]))
            .await;
        let m = wait_phase(&mut obs, 1, "vision/o", ModelPhase::Ready, T).await;
        assert_eq!(
            m.fetched,
            Some(FetchedBytes {
                origin: 0,
                site_cache: size
            }),
            "{name}"
        );
        wait_serving(&agent, "orientation", &a.artifact.sha256, T).await;
        obs.clear_retained(&device).await;
    }
    assert_eq!(server.sent_bytes(), size, "the origin sent the model once");
    let served = metric(&cache, "edgefleet_agent_site_cache_served_bytes_total").await;
    assert_eq!(served, Some(2.0 * size as f64));

    // A cache whose copy went bad cannot make a device run it: the digest check catches it and
    // the device fetches from the origin.
    let cached = dir
        .path()
        .join("cache/site-cache/sha256")
        .join(&a.artifact.sha256);
    std::fs::write(&cached, vec![0u8; bytes.len()]).unwrap();
    let device = unique_device("site-a3");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let agent = start(&dir.path().join("a3"), &device, &broker.url(), &[]);
    obs.publish_desired(&device, desired(&device, 1, vec![a.clone()]))
        .await;
    let m = wait_phase(&mut obs, 1, "vision/o", ModelPhase::Ready, T).await;
    assert_eq!(m.fetched.map(|f| f.origin), Some(size), "{m:?}");
    wait_serving(&agent, "orientation", &a.artifact.sha256, T).await;
    obs.clear_retained(&device).await;

    // The cache is down: devices go to the origin by themselves.
    cache.proc.kill();
    let device = unique_device("site-a4");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let agent = start(&dir.path().join("a4"), &device, &broker.url(), &[]);
    obs.publish_desired(&device, desired(&device, 1, vec![a.clone()]))
        .await;
    let m = wait_phase(&mut obs, 1, "vision/o", ModelPhase::Ready, T).await;
    assert_eq!(
        m.fetched,
        Some(FetchedBytes {
            origin: size,
            site_cache: 0
        })
    );
    wait_serving(&agent, "orientation", &a.artifact.sha256, T).await;
    obs.clear_retained(&device).await;
    assert_eq!(server.sent_bytes(), 3 * size);
}
