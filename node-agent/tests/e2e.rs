//! End to end through the real binary, a real Mosquitto and real models: announcement,
//! deployment from a local HTTP server, inference through the local API compared with
//! onnxruntime, telemetry, restart without a broker, graceful shutdown.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use edgefleet_protocol::Runtime;
use edgefleet_protocol::wire::{self, Channel, DeviceStatus, Hello, ModelPhase, Telemetry};

use common::*;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_is_retained_with_capabilities_and_shutdown_publishes_offline() {
    let broker = TestBroker::get();
    let device = unique_device("hello");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let onnxruntime = onnxruntime_lib().display().to_string();
    let mut agent = AgentProcess::spawn(
        &dir.path().join("store"),
        &[
            "--device-id",
            &device,
            "--broker",
            &broker.url(),
            "--onnxruntime-lib",
            &onnxruntime,
            "--labels",
            "zone=lab,tier=edge",
            "--arch",
            "aarch64",
            "--memory-mib",
            "512",
            "--cpu-features",
            "neon,dotprod",
            "--accelerators",
            "coral",
        ],
    );
    obs.wait_for(Channel::Status, T, |p| {
        wire::decode::<DeviceStatus>(p).is_ok_and(|s| s.online)
    })
    .await;

    // A controller connecting later still gets both, retained.
    let mut late = Observer::connect(broker.port(), &device).await;
    let hello = late.wait_for(Channel::Hello, T, |_| true).await;
    let hello: Hello = wire::decode(&hello).unwrap();
    late.drain();
    assert!(
        late.seen
            .iter()
            .any(|(t, _, retained)| t.ends_with("/hello") && *retained)
    );
    assert!(
        late.seen
            .iter()
            .any(|(t, _, retained)| t.ends_with("/status") && *retained)
    );
    assert_eq!(hello.device_id.as_str(), device);
    assert_eq!(hello.labels.get("zone").map(String::as_str), Some("lab"));
    assert_eq!(hello.labels.get("tier").map(String::as_str), Some("edge"));
    assert_eq!(hello.arch, "aarch64");
    assert_eq!(
        (hello.memory_total_mib, hello.memory_available_mib),
        (512, 512)
    );
    assert_eq!(hello.cpu_features, ["neon", "dotprod"]);
    assert_eq!(hello.accelerators, ["coral"]);
    assert_eq!(
        hello.runtimes,
        [Runtime::Tract, Runtime::Onnxruntime, Runtime::Llamacpp]
    );
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    let cores = std::thread::available_parallelism().unwrap().get() as u32;
    assert_eq!(hello.cores, cores);
    assert!(hello.disk_free_mib > 0);

    let status = agent.terminate();
    assert!(status.success(), "exit {status:?}; log:\n{}", agent.log());
    obs.wait_for(Channel::Status, T, |p| {
        wire::decode::<DeviceStatus>(p).is_ok_and(|s| !s.online)
    })
    .await;
    obs.clear_retained(&device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_real_models_serves_reference_outputs_and_restarts_without_broker() {
    let models = [
        ("vision/orientation", "orientation", "orientation.onnx"),
        ("ocr/text-direction", "ocr-cls", "ocr-cls.onnx"),
        ("audio/vad", "silero-vad", "silero-vad.onnx"),
    ];
    let server = ArtifactServer::start().await;
    let assignments: Vec<_> = models
        .iter()
        .map(|(deployment, name, file)| {
            let bytes = model_bytes(file);
            let uri = server.add(file, bytes.clone());
            let mut a = assignment(deployment, name, "fp32", &uri, &bytes);
            a.self_test = Some(self_test(file));
            a
        })
        .collect();
    let broker = TestBroker::get();
    let device = unique_device("deploy");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut agent = AgentProcess::spawn(
        &store,
        &[
            "--device-id",
            &device,
            "--broker",
            &broker.url(),
            "--telemetry-interval-secs",
            "1",
        ],
    );
    obs.publish_desired(&device, desired(&device, 1, assignments.clone()))
        .await;
    let downloading = obs
        .wait_for(Channel::State, T, |p| {
            state_report(p)
                .models
                .iter()
                .any(|m| m.phase == ModelPhase::Downloading)
        })
        .await;
    let m = state_report(&downloading)
        .models
        .into_iter()
        .find(|m| m.phase == ModelPhase::Downloading)
        .unwrap();
    assert!(m.bytes_total.is_some() && m.bytes_done.is_some());
    let ready = obs
        .wait_for(Channel::State, T, |p| {
            let r = state_report(p);
            r.generation == 1
                && r.models.len() == 3
                && r.models.iter().all(|m| m.phase == ModelPhase::Ready)
        })
        .await;
    for m in state_report(&ready).models {
        assert_eq!(m.serving_sha256.as_deref(), Some(m.sha256.as_str()));
    }

    check_inference(&agent, &assignments).await;

    // Telemetry carries the requests just made.
    let window = obs
        .wait_for(Channel::Telemetry, T, |p| {
            wire::decode::<Telemetry>(p).is_ok_and(|t| {
                t.models
                    .iter()
                    .any(|m| m.deployment == "vision/orientation" && m.requests > 0)
            })
        })
        .await;
    let window: Telemetry = wire::decode(&window).unwrap();
    let w = window
        .models
        .iter()
        .find(|m| m.deployment == "vision/orientation")
        .unwrap();
    assert_eq!(w.variant, "fp32");
    assert_eq!(w.latency.count(), w.requests);
    assert!(w.latency.has_shared_layout());

    // Restart with the broker out of reach: the last good models serve at once.
    assert!(agent.terminate().success());
    let nobody = format!("mqtt://127.0.0.1:{}", free_port());
    let agent = AgentProcess::spawn(&store, &["--device-id", &device, "--broker", &nobody]);
    for a in &assignments {
        wait_serving(
            &agent,
            &a.model.name,
            &a.artifact.sha256,
            Duration::from_secs(20),
        )
        .await;
    }
    check_inference(&agent, &assignments).await;
    let ready = reqwest::get(agent.url("/v2/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    obs.clear_retained(&device).await;
}

async fn check_inference(
    agent: &AgentProcess,
    assignments: &[edgefleet_protocol::wire::Assignment],
) {
    let client = reqwest::Client::new();
    for a in assignments {
        let file = format!("{}.onnx", a.model.name);
        let reference = reference(&file);
        let meta = wait_serving(agent, &a.model.name, &a.artifact.sha256, T).await;
        assert_eq!(meta["variant"], "fp32");
        assert_eq!(meta["version"], "1.0.0");
        assert_eq!(
            meta["inputs"].as_array().unwrap().len(),
            reference.cases[0].inputs.len()
        );
        for (n, case) in reference.cases.iter().enumerate() {
            // JSON tensors, addressed by model name.
            let r = client
                .post(agent.url(&format!("/v2/models/{}/infer", a.model.name)))
                .header("Content-Type", "application/json")
                .body(infer_json(case).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{file} case {n}");
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            for want in &case.outputs {
                let out = v["outputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|o| o["name"] == want.name.as_str())
                    .unwrap_or_else(|| panic!("{file}: no output {} in {v}", want.name));
                let shape: Vec<usize> = serde_json::from_value(out["shape"].clone()).unwrap();
                assert_eq!(shape, want.shape);
                let got: Vec<f64> = out["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                assert_close(
                    &format!("{file} JSON case {n} {}", want.name),
                    &got,
                    &want.data,
                    1e-4,
                );
            }
            // Binary tensors, addressed by the deployment's name.
            let bare = a.deployment.rsplit('/').next().unwrap();
            let (header_len, body) = infer_binary(case);
            let r = client
                .post(agent.url(&format!("/v2/models/{bare}/infer")))
                .header("Inference-Header-Content-Length", header_len)
                .header("Content-Type", "application/octet-stream")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{file} binary case {n}");
            let len: usize = r.headers()["inference-header-content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let outputs = parse_binary_response(len, &r.bytes().await.unwrap());
            for want in &case.outputs {
                assert_close(
                    &format!("{file} binary case {n} {}", want.name),
                    &outputs[&want.name],
                    &want.data,
                    1e-4,
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolls_back_from_disk_collects_old_artifacts_and_adds_test_latency() {
    let server = ArtifactServer::start().await;
    let files = ["ocr-cls.onnx", "silero-vad.onnx", "orientation.onnx"];
    let versions: Vec<_> = files
        .iter()
        .map(|f| {
            let bytes = model_bytes(f);
            let uri = server.add(f, bytes.clone());
            let mut a = assignment("team/model", "model", "slow", &uri, &bytes);
            a.self_test = Some(self_test(f));
            a
        })
        .collect();
    let broker = TestBroker::get();
    let device = unique_device("rollback");
    let mut obs = Observer::connect(broker.port(), &device).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let agent = AgentProcess::spawn(
        &store,
        &[
            "--device-id",
            &device,
            "--broker",
            &broker.url(),
            "--telemetry-interval-secs",
            "1",
            "--extra-latency-ms-by-variant",
            "slow=150",
        ],
    );
    let stored = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(store.join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let sha = |i: usize| versions[i].artifact.sha256.clone();
    for (generation, i) in [(1u64, 0usize), (2, 1)] {
        obs.publish_desired(
            &device,
            desired(&device, generation, vec![versions[i].clone()]),
        )
        .await;
        wait_phase(&mut obs, generation, "team/model", ModelPhase::Ready, T).await;
    }
    assert_eq!(
        stored(),
        [sha(0), sha(1)].into(),
        "current and previous are kept"
    );

    // Rolling back to the previous version needs no download.
    let requests = server.request_count();
    obs.publish_desired(&device, desired(&device, 3, vec![versions[0].clone()]))
        .await;
    let m = wait_phase(&mut obs, 3, "team/model", ModelPhase::Ready, T).await;
    assert_eq!(m.serving_sha256, Some(sha(0)));
    assert_eq!(server.request_count(), requests);
    wait_serving(&agent, "model", &sha(0), T).await;

    // A third version: the oldest one is garbage-collected.
    obs.publish_desired(&device, desired(&device, 4, vec![versions[2].clone()]))
        .await;
    wait_phase(&mut obs, 4, "team/model", ModelPhase::Ready, T).await;
    assert_eq!(stored(), [sha(0), sha(2)].into());

    // The test knob: every inference of variant "slow" takes at least 150 ms, and the
    // telemetry histogram says so.
    let case = &reference("orientation.onnx").cases[0];
    let (header_len, body) = infer_binary(case);
    let start = std::time::Instant::now();
    let r = reqwest::Client::new()
        .post(agent.url("/v2/models/model/infer"))
        .header("Inference-Header-Content-Length", header_len)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(150));
    let window = obs
        .wait_for(Channel::Telemetry, T, |p| {
            wire::decode::<Telemetry>(p).is_ok_and(|t| t.models.iter().any(|m| m.requests > 0))
        })
        .await;
    let window: Telemetry = wire::decode(&window).unwrap();
    let m = &window.models[0];
    assert_eq!(
        (m.deployment.as_str(), m.variant.as_str()),
        ("team/model", "slow")
    );
    assert!(m.latency.quantile(0.5).unwrap() >= 0.15, "{:?}", m.latency);
    obs.clear_retained(&device).await;
}
