//! Faults: interrupted downloads, bad artifacts, full disks, bad desired documents, and a
//! broker that goes away while telemetry keeps coming.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use edgefleet_protocol::wire::{self, Channel, ModelPhase, Telemetry};

use common::*;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes_with_range() {
    let server = ArtifactServer::start().await;
    let bytes = model_bytes("orientation.onnx");
    let uri = server.add("orientation.onnx", bytes.clone());
    server.cut_once("orientation.onnx", 2_000_000);
    let broker = TestBroker::get();
    let device = unique_device("resume");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(&dir.path().join("store"), &device, &broker.url(), &[]);
    let mut a = assignment("vision/orientation", "orientation", "fp32", &uri, &bytes);
    a.self_test = Some(self_test("orientation.onnx"));
    obs.publish_desired(&device, desired(&device, 1, vec![a.clone()]))
        .await;
    let m = wait_phase(&mut obs, 1, "vision/orientation", ModelPhase::Ready, T).await;
    assert_eq!(
        m.serving_sha256.as_deref(),
        Some(a.artifact.sha256.as_str())
    );
    let ranges = server.ranges("orientation.onnx");
    assert_eq!(ranges.len(), 2, "one cut request, one resumed: {ranges:?}");
    assert_eq!(ranges[0], None);
    let resumed_from: u64 = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        resumed_from > 0 && resumed_from <= 2_000_000,
        "resumed from {resumed_from}"
    );
    // Whole file sent once plus the re-sent tail, not twice.
    let served = server.sent_bytes();
    assert!(served < 2 * bytes.len() as u64, "{served} bytes served");
    wait_serving(&agent, "orientation", &a.artifact.sha256, T).await;
    assert!(
        !dir.path()
            .join("store/partial")
            .join(&a.artifact.sha256)
            .exists()
    );
    obs.clear_retained(&device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_digest_size_cap_and_full_disk_fail_while_the_previous_model_serves() {
    let server = ArtifactServer::start().await;
    let good = model_bytes("ocr-cls.onnx");
    let good_uri = server.add("ocr-cls.onnx", good.clone());
    let other = model_bytes("silero-vad.onnx");
    let other_uri = server.add("silero-vad.onnx", other.clone());
    let big = model_bytes("orientation.onnx");
    let big_uri = server.add("orientation.onnx", big.clone());
    let broker = TestBroker::get();
    let device = unique_device("faults");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    // The agent believes it has 3 MiB of free disk.
    let agent = start(
        &dir.path().join("store"),
        &device,
        &broker.url(),
        &["--disk-free-mib", "3"],
    );
    let d = "ocr/text-direction";
    let v1 = assignment(d, "ocr-cls", "fp32", &good_uri, &good);
    obs.publish_desired(&device, desired(&device, 1, vec![v1.clone()]))
        .await;
    wait_phase(&mut obs, 1, d, ModelPhase::Ready, T).await;
    wait_serving(&agent, "ocr-cls", &v1.artifact.sha256, T).await;

    // 1. The body does not hash to the declared digest.
    let mut wrong = assignment(d, "ocr-cls", "fp32", &other_uri, &other);
    wrong.artifact.sha256 = "0".repeat(64);
    obs.publish_desired(&device, desired(&device, 2, vec![wrong]))
        .await;
    let m = wait_phase(&mut obs, 2, d, ModelPhase::Failed, T).await;
    assert!(
        m.reason.as_deref().unwrap().contains("digest_mismatch"),
        "{m:?}"
    );
    assert_eq!(
        m.serving_sha256.as_deref(),
        Some(v1.artifact.sha256.as_str())
    );
    assert_still_serving(&agent, &v1.artifact.sha256).await;

    // 2. The body is larger than the declared size.
    let mut capped = assignment(d, "ocr-cls", "fp32", &other_uri, &other);
    capped.artifact.size_bytes = 1000;
    obs.publish_desired(&device, desired(&device, 3, vec![capped]))
        .await;
    let m = wait_phase(&mut obs, 3, d, ModelPhase::Failed, T).await;
    assert!(m.reason.as_deref().unwrap().contains("too_large"), "{m:?}");
    assert_eq!(
        m.serving_sha256.as_deref(),
        Some(v1.artifact.sha256.as_str())
    );
    assert_still_serving(&agent, &v1.artifact.sha256).await;

    // 3. The artifact does not fit on the disk: refused before downloading.
    let requests_before = server.ranges("orientation.onnx").len();
    let huge = assignment(d, "ocr-cls", "fp32", &big_uri, &big);
    obs.publish_desired(&device, desired(&device, 4, vec![huge]))
        .await;
    let m = wait_phase(&mut obs, 4, d, ModelPhase::Failed, T).await;
    assert!(m.reason.as_deref().unwrap().contains("disk_full"), "{m:?}");
    assert_eq!(server.ranges("orientation.onnx").len(), requests_before);
    assert_still_serving(&agent, &v1.artifact.sha256).await;

    // 4. A model that loads but fails its self-test (the wrong input shape).
    let mut bad_test = assignment(d, "ocr-cls", "fp32", &other_uri, &other);
    bad_test.self_test = Some(self_test("orientation.onnx"));
    obs.publish_desired(&device, desired(&device, 5, vec![bad_test.clone()]))
        .await;
    let m = wait_phase(&mut obs, 5, d, ModelPhase::Failed, T).await;
    assert!(m.reason.is_some(), "{m:?}");
    assert_still_serving(&agent, &v1.artifact.sha256).await;

    // Nothing partial or unverified is left in the content-addressed store; the verified
    // download whose self-test failed stays while the desired document still asks for it.
    let list = |sub: &str| -> BTreeSet<String> {
        std::fs::read_dir(dir.path().join("store").join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        list("sha256"),
        [v1.artifact.sha256.clone(), bad_test.artifact.sha256.clone()].into()
    );
    assert!(list("partial").is_empty(), "{:?}", list("partial"));
    obs.clear_retained(&device).await;
}

async fn assert_still_serving(agent: &AgentProcess, sha: &str) {
    let meta = wait_serving(agent, "ocr-cls", sha, Duration::from_secs(5)).await;
    assert_eq!(meta["sha256"], sha);
    let case = &reference("ocr-cls.onnx").cases[0];
    let r = reqwest::Client::new()
        .post(agent.url("/v2/models/ocr-cls/infer"))
        .header("Content-Type", "application/json")
        .body(infer_json(case).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stale_and_foreign_desired_documents_are_ignored() {
    let server = ArtifactServer::start().await;
    let bytes = model_bytes("ocr-cls.onnx");
    let uri = server.add("ocr-cls.onnx", bytes.clone());
    let broker = TestBroker::get();
    let device = unique_device("malformed");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(&dir.path().join("store"), &device, &broker.url(), &[]);
    let a = assignment("ocr/cls", "ocr-cls", "fp32", &uri, &bytes);
    obs.publish_desired(&device, desired(&device, 5, vec![a.clone()]))
        .await;
    wait_phase(&mut obs, 5, "ocr/cls", ModelPhase::Ready, T).await;

    let foreign = desired("someone-else", 9, vec![]);
    let mut bad_digest = a.clone();
    bad_digest.artifact.sha256 = "XYZ".into();
    let bad_payloads: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not_json"),
        (br#"{"deviceId":"x"}"#.to_vec(), "missing_version"),
        (br#"{"v":7}"#.to_vec(), "unsupported_version"),
        (
            format!(r#"{{"v":1,"deviceId":"{device}","generation":"six"}}"#).into_bytes(),
            "malformed",
        ),
        (desired(&device, 9, vec![bad_digest]), "invalid"),
        (foreign, "device_mismatch"),
        (desired(&device, 4, vec![]), "stale"),
        (desired(&device, 5, vec![]), "stale"),
        (vec![b' '; wire::MAX_PAYLOAD_BYTES + 1], "too_large"),
    ];
    for (payload, _) in &bad_payloads {
        obs.publish_desired(&device, payload.clone()).await;
    }
    // All counted by reason, none applied: the model still serves.
    for (_, reason) in &bad_payloads {
        let series = format!("edgefleet_agent_desired_rejected_total{{reason=\"{reason}\"}}");
        let deadline = std::time::Instant::now() + T;
        while metric(&agent, &series).await.unwrap_or(0.0) < 1.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{series} not counted; log:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_serving(
        &agent,
        "ocr-cls",
        &a.artifact.sha256,
        Duration::from_secs(5),
    )
    .await;
    let log = agent.log();
    assert!(log.contains("ignoring desired message"), "{log}");

    // The next valid generation applies; an empty list removes the model.
    obs.publish_desired(&device, desired(&device, 6, vec![]))
        .await;
    let removed = wait_phase(&mut obs, 6, "ocr/cls", ModelPhase::Removed, T).await;
    assert_eq!(removed.serving_sha256, None);
    let deadline = std::time::Instant::now() + T;
    loop {
        let r = reqwest::get(agent.url("/v2/models/ocr-cls")).await.unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "model not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    obs.clear_retained(&device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_is_spooled_while_the_broker_is_unreachable_and_replayed_in_order() {
    let broker = TestBroker::get();
    let proxy = Proxy::start(broker.port()).await;
    let device = unique_device("spool");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        &dir.path().join("store"),
        &device,
        &proxy.url(),
        &[
            "--telemetry-interval-secs",
            "1",
            "--backoff-initial-ms",
            "100",
            "--backoff-max-ms",
            "500",
        ],
    );
    let seq_of = |p: &[u8]| wire::decode::<Telemetry>(p).unwrap().seq;
    let first = seq_of(&obs.wait_for(Channel::Telemetry, T, |_| true).await);

    proxy.cut();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let spooled = metric(&agent, "edgefleet_agent_spool_windows")
        .await
        .unwrap();
    assert!(
        spooled >= 3.0,
        "{spooled} windows spooled during the outage"
    );
    let connected = metric(&agent, "edgefleet_agent_mqtt_connected")
        .await
        .unwrap();
    assert_eq!(connected, 0.0);
    proxy.restore();

    // Every window produced during the outage arrives, in order, before newer ones.
    let target = first + spooled as u64 + 2;
    obs.wait_for(Channel::Telemetry, T, |p| seq_of(p) >= target)
        .await;
    obs.drain();
    let seqs: Vec<u64> = obs
        .seen
        .iter()
        .filter(|(t, _, _)| t.ends_with("/telemetry"))
        .map(|(_, p, _)| seq_of(p))
        .collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    let expected: BTreeSet<u64> = (first..=target).collect();
    assert!(
        expected.is_subset(&unique),
        "missing windows {:?}; got {seqs:?}",
        expected.difference(&unique).collect::<Vec<_>>()
    );
    let mut firsts = Vec::new();
    for s in &seqs {
        if !firsts.contains(s) {
            firsts.push(*s);
        }
    }
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "not in order: {seqs:?}"
    );
    let deadline = std::time::Instant::now() + T;
    while metric(&agent, "edgefleet_agent_spool_windows")
        .await
        .unwrap()
        > 1.0
    {
        assert!(std::time::Instant::now() < deadline, "spool not drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        metric(&agent, "edgefleet_agent_mqtt_connections_total")
            .await
            .unwrap()
            >= 2.0
    );
    obs.clear_retained(&device).await;
}

/// A broker acks telemetry nobody is subscribed to: the agent forwards windows only while a
/// controller announces itself online, and keeps them spooled otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_waits_in_the_spool_until_a_controller_is_online() {
    let broker = TestBroker::get();
    let device = unique_device("presence");
    let mut obs = Observer::connect_without_presence(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        &dir.path().join("store"),
        &device,
        &broker.url(),
        &["--telemetry-interval-secs", "1"],
    );
    obs.wait_for(Channel::Hello, T, |_| true).await;
    // The shared broker may hold other tests' observers: the agent counts them all.
    let others = metric(&agent, "edgefleet_agent_controllers_online")
        .await
        .unwrap();
    // Another test's observer may come online during the window, even briefly (it counts as
    // a controller): then telemetry going out is right, and the window proves nothing. So the
    // count is watched through the whole window, not read at its ends.
    let mut most_online = others;
    if others == 0.0 {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let online = metric(&agent, "edgefleet_agent_controllers_online")
                .await
                .unwrap();
            most_online = most_online.max(online);
        }
        obs.drain();
    }
    let alone_throughout = most_online == 0.0;
    if alone_throughout {
        assert!(
            !obs.seen.iter().any(|(t, _, _)| t.ends_with("/telemetry")),
            "telemetry was published with no controller online"
        );
        let spooled = metric(&agent, "edgefleet_agent_spool_windows")
            .await
            .unwrap();
        assert!(spooled >= 2.0, "{spooled} windows spooled");
    }
    obs.announce(true).await;
    let seq_of = |p: &[u8]| wire::decode::<Telemetry>(p).unwrap().seq;
    obs.wait_for(Channel::Telemetry, T, |p| seq_of(p) >= 3)
        .await;
    let seqs: Vec<u64> = obs
        .seen
        .iter()
        .filter(|(t, _, _)| t.ends_with("/telemetry"))
        .map(|(_, p, _)| seq_of(p))
        .collect();
    assert_eq!(
        seqs.first(),
        Some(&1),
        "the oldest spooled window first: {seqs:?}"
    );
    assert!(
        metric(&agent, "edgefleet_agent_controllers_online")
            .await
            .unwrap()
            >= 1.0
    );
    obs.clear_retained(&device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_would_not_fit_the_announced_memory_is_refused_before_loading() {
    let server = ArtifactServer::start().await;
    let small = model_bytes("ocr-cls.onnx");
    let small_uri = server.add("ocr-cls.onnx", small.clone());
    let big = model_bytes("orientation.onnx");
    let big_uri = server.add("orientation.onnx", big.clone());
    let broker = TestBroker::get();
    let device = unique_device("memory");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    // 60 MiB for models: ocr-cls (0.6 MB file, ~32.8 MiB estimated) fits; orientation (6.8 MB,
    // ~41.7 MiB) does not fit beside it.
    let agent = start(
        &dir.path().join("store"),
        &device,
        &broker.url(),
        &["--memory-mib", "60"],
    );
    let text = assignment("ocr/text-direction", "ocr-cls", "fp32", &small_uri, &small);
    obs.publish_desired(&device, desired(&device, 1, vec![text.clone()]))
        .await;
    wait_phase(&mut obs, 1, "ocr/text-direction", ModelPhase::Ready, T).await;
    let vision = assignment("vision/orientation", "orientation", "fp32", &big_uri, &big);
    obs.publish_desired(
        &device,
        desired(&device, 2, vec![text.clone(), vision.clone()]),
    )
    .await;
    let m = wait_phase(&mut obs, 2, "vision/orientation", ModelPhase::Failed, T).await;
    let reason = m.reason.as_deref().unwrap();
    assert!(
        reason.contains("not loaded: the model needs about 41.7 MiB resident")
            && reason.contains("already loaded hold about 32.8 MiB")
            && reason.contains("more than the 60 MiB this device announced"),
        "{reason}"
    );
    // The model already serving is untouched.
    wait_serving(&agent, "ocr-cls", &text.artifact.sha256, T).await;
    obs.clear_retained(&device).await;
}
