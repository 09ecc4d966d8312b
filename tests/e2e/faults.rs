//! Faults on the device side of a rollout, with real processes: the broker crashes, an agent
//! is SIGKILLed while it downloads and installs, a device's link is partitioned. Each test
//! prints `RELIABILITY` lines with what it observed (RELIABILITY.md collects them).

#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location
use std::time::{Duration, Instant};

use edgefleet_e2e::orientation::*;
use edgefleet_e2e::*;

/// The five devices that fit a variant (the 64 MiB one fits none).
fn fitting_fleet() -> Vec<DeviceSpec> {
    fleet()
        .into_iter()
        .filter(|d| d.id != "tiny-arm-1")
        .collect()
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("fleet.db").display())
}

/// Inferences the agents served vs. inferences the controller's aggregates counted.
async fn inference_totals(controller: &ControllerProc, agents: &[AgentProc]) -> (f64, f64) {
    let mut served = 0.0;
    for agent in agents {
        served += metric_sum(
            &agent.metrics().await,
            "edgefleet_agent_inference_requests_total",
        );
    }
    let counted = metric_sum(
        &controller.metrics().await,
        "edgefleet_inference_requests_total",
    );
    (served, counted)
}

/// The broker is SIGKILLed mid-rollout (losing its retained messages and sessions: nothing
/// was autosaved) and restarted 6 s later. Devices keep answering locally and spool their
/// telemetry; afterwards every window reaches the controller exactly once and the rollout
/// completes. Agents reconnect before the controller does; they hold their spool until the
/// controller's presence says it subscribed again (before that, the broker would ack and
/// drop the windows: 147 of 225 inferences were lost that way before presence existed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_crash_mid_rollout_loses_no_telemetry_and_the_rollout_completes() {
    let logs = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let mut broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let controller =
        ControllerProc::start(&standin, &sqlite_url(&db), &broker.url(), "a", logs.path());
    let agents: Vec<AgentProc> = fitting_fleet()
        .iter()
        .map(|d| AgentProc::start(d, &broker.url(), logs.path()))
        .collect();
    let v1 = publish_variants(&artifacts, "1.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("1.0.0", &v1, "[{percent: 50}]")),
    );
    wait_succeeded(&standin, "1.0.0", 5, Duration::from_secs(120)).await;

    let v2 = publish_variants(&artifacts, "2.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("2.0.0", &v2, "[{percent: 34}, {percent: 67}]")),
    );
    drive_load(&agents, 3).await;
    broker.stop(); // SIGKILL
    let outage = Instant::now();
    let mut answered_offline = 0;
    while outage.elapsed() < Duration::from_secs(6) {
        for agent in &agents {
            if agent
                .infer(MODEL, "x", &[1, 3, 224, 224], 0.25)
                .await
                .is_ok()
            {
                answered_offline += 1;
            }
        }
    }
    assert!(
        answered_offline > 0,
        "devices stopped answering without a broker"
    );
    let restarted = Instant::now();
    broker.restart();
    eventually(
        Duration::from_secs(60),
        "controller reconnected",
        || async {
            let metrics = controller.metrics().await;
            if metric_sum(&metrics, "edgefleet_mqtt_connected") == 1.0 {
                Ok(())
            } else {
                Err(controller.proc.log_tail())
            }
        },
    )
    .await;
    let reconnect_s = restarted.elapsed().as_secs_f64();

    promote(&standin, &agents, "2.0.0", 5, Duration::from_secs(180)).await;
    let completed_s = restarted.elapsed().as_secs_f64();

    // Exactly once: what the devices served equals what the controller counted, and stays so.
    let (served, counted) = eventually(
        Duration::from_secs(60),
        "every served inference counted by the controller",
        || async {
            let (served, counted) = inference_totals(&controller, &agents).await;
            if served > 0.0 && served == counted {
                return Ok((served, counted));
            }
            let metrics = controller.metrics().await;
            let windows: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("edgefleet_telemetry_windows_total")
                        || l.starts_with("edgefleet_mqtt_messages_received_total")
                })
                .collect();
            let mut acked = 0.0;
            for agent in &agents {
                acked += metric_sum(
                    &agent.metrics().await,
                    "edgefleet_agent_telemetry_acked_total",
                );
            }
            Err(format!(
                "agents served {served}, controller counted {counted}; windows acked by the \
                 broker {acked}; controller: {windows:?}\n{}",
                controller.proc.log_tail()
            ))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        inference_totals(&controller, &agents).await,
        (served, counted),
        "late duplicates were counted"
    );
    let mut spool_dropped = 0.0;
    for agent in &agents {
        spool_dropped += metric_sum(
            &agent.metrics().await,
            "edgefleet_agent_spool_dropped_total",
        );
    }
    assert_eq!(spool_dropped, 0.0);
    let metrics = controller.metrics().await;
    let duplicates = metrics
        .lines()
        .find(|l| l.starts_with("edgefleet_telemetry_windows_total{result=\"duplicate\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    println!(
        "RELIABILITY broker_crash: outage_s=6 inferences_served={served} counted={counted} \
         windows_lost=0 duplicates_dropped={duplicates} served_during_outage={answered_offline} \
         controller_reconnect_s={reconnect_s:.1} rollout_done_after_restart_s={completed_s:.1}"
    );
}

/// Every file in the agent's content-addressed store hashes to its name: nothing partial or
/// unverified was ever committed.
fn assert_store_verified(agent: &AgentProc) {
    let dir = agent.store.path().join("sha256");
    for entry in std::fs::read_dir(&dir).into_iter().flatten() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(sha256_hex(&bytes), name, "a corrupt artifact was committed");
    }
}

/// The agent is SIGKILLed halfway through a (throttled) download, then repeatedly while it
/// verifies, loads and self-tests. After each restart it serves a complete model (the old
/// one until the new one passes its self-test), and the download resumes where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_download_and_mid_install_never_serves_a_partial_model() {
    let logs = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let _controller =
        ControllerProc::start(&standin, &sqlite_url(&db), &broker.url(), "a", logs.path());
    let device = fleet().into_iter().next().unwrap(); // gw-x86-1: runs fp32 (6.8 MB)
    let mut agent = AgentProc::start(&device, &broker.url(), logs.path());
    let agents = std::slice::from_ref(&agent);
    let v1 = publish_variants(&artifacts, "1.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("1.0.0", &v1, "[{percent: 100}]")),
    );
    wait_succeeded(&standin, "1.0.0", 1, Duration::from_secs(120)).await;
    drive_load(agents, 1).await;

    // The same bytes would be the same digest, already in the store: v2's "fp32" artifact
    // is the fp16 file (3.4 MB), so the device really downloads something new.
    let mut v2 = publish_variants(&artifacts, "2.0.0");
    let fp16 = std::fs::read(artifacts.dir.path().join("2.0.0/fp16.onnx")).unwrap();
    v2.files
        .insert("fp32", artifacts.put("2.0.0/fp32.onnx", &fp16));
    artifacts.throttle(400_000); // ~8.5 s for it
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("2.0.0", &v2, "[{percent: 100}]")),
    );
    eventually(Duration::from_secs(30), "v2 download started", || async {
        if artifacts.ranges("2.0.0/fp32.onnx").is_empty() {
            Err("no request yet".into())
        } else {
            Ok(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.kill_and_restart();

    // Back up (after re-verifying and loading its stored model): still v1, complete and
    // answering, while v2 resumes.
    let served = eventually(Duration::from_secs(30), "v1 served again", || async {
        agent
            .model(MODEL)
            .await
            .ok_or_else(|| "nothing served yet".to_string())
    })
    .await;
    assert_eq!(served["version"], "1.0.0", "{served}");
    agent
        .infer(MODEL, "x", &[1, 3, 224, 224], 0.5)
        .await
        .unwrap();
    let resumed_from = eventually(Duration::from_secs(30), "a resumed request", || async {
        let ranges = artifacts.ranges("2.0.0/fp32.onnx");
        match ranges.get(1) {
            Some(Some(range)) => Ok(range
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse::<u64>()
                .unwrap()),
            Some(None) => Err("the restarted agent downloaded from scratch".into()),
            None => Err(format!("{ranges:?}")),
        }
    })
    .await;
    assert!(resumed_from > 300_000, "resumed from byte {resumed_from}");
    artifacts.throttle(0);

    // Now kill it again and again while it verifies, loads and self-tests the new model.
    let mut kills = 1;
    let mut versions_seen = std::collections::BTreeSet::new();
    for delay_ms in [200, 500, 900, 1400] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        agent.kill_and_restart();
        kills += 1;
        assert_store_verified(&agent);
        if let Some(served) = agent.model(MODEL).await {
            versions_seen.insert(served["version"].as_str().unwrap_or("?").to_string());
            agent
                .infer(MODEL, "x", &[1, 3, 224, 224], 0.5)
                .await
                .unwrap_or_else(|e| panic!("served {served} but failed: {e}"));
        }
    }
    // Canary analysis needs samples: keep the device busy until 2.0.0 is promoted.
    promote(
        &standin,
        std::slice::from_ref(&agent),
        "2.0.0",
        1,
        Duration::from_secs(120),
    )
    .await;
    let served = agent.model(MODEL).await.unwrap();
    assert_eq!(served["version"], "2.0.0", "{served}");
    assert_eq!(served["sha256"], v2.files["fp32"].1, "{served}");
    assert_store_verified(&agent);
    println!(
        "RELIABILITY agent_kill: sigkills={kills} resumed_from_byte={resumed_from} of {} \
         versions_served_between_kills={versions_seen:?} partial_models_served=0",
        v2.files["fp32"].2
    );
}

/// One Pi's link goes silent (no FIN, no RST). The broker publishes its last will after the
/// keep-alive; the rollout does not wait for it (an online device of its cohort takes its
/// canary place); when the link heals it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_device_goes_offline_does_not_block_the_rollout_and_catches_up() {
    let logs = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let controller =
        ControllerProc::start(&standin, &sqlite_url(&db), &broker.url(), "a", logs.path());
    let link = Partition::start(broker.port).await;
    let mut agents = Vec::new();
    for device in fitting_fleet() {
        let partitioned = device.id == "pi-arm-2";
        let url = if partitioned {
            link.url()
        } else {
            broker.url()
        };
        agents.push(AgentProc::start_with_env(
            &device,
            &url,
            logs.path(),
            &[("EDGEFLEET_AGENT_KEEP_ALIVE_SECS", "5")],
        ));
    }
    let v1 = publish_variants(&artifacts, "1.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("1.0.0", &v1, "[{percent: 50}]")),
    );
    wait_succeeded(&standin, "1.0.0", 5, Duration::from_secs(120)).await;

    link.cut();
    let cut = Instant::now();
    eventually(
        Duration::from_secs(30),
        "the partitioned device marked offline",
        || async {
            let status = md_status(&standin);
            if status["devices"]["offline"] == 1 {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
    let offline_after_s = cut.elapsed().as_secs_f64();

    let v2 = publish_variants(&artifacts, "2.0.0");
    let applied = Instant::now();
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("2.0.0", &v2, "[{percent: 34}, {percent: 67}]")),
    );
    let online: Vec<&AgentProc> = agents
        .iter()
        .filter(|a| a.device.id != "pi-arm-2")
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        for agent in &online {
            let _ = agent.infer(MODEL, "x", &[1, 3, 224, 224], 0.25).await;
        }
        let status = md_status(&standin);
        if status["phase"] == "Succeeded" && status["targetVersion"] == "2.0.0" {
            assert_eq!(status["devices"]["ready"], 4, "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout waited for the partitioned device: {status}\n{}",
            controller.proc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rollout_s = applied.elapsed().as_secs_f64();
    let stranded = agents.iter().find(|a| a.device.id == "pi-arm-2").unwrap();
    assert_eq!(
        stranded.model(MODEL).await.unwrap()["version"],
        "1.0.0",
        "the partitioned device keeps serving what it had"
    );

    link.heal();
    let healed = Instant::now();
    wait_succeeded(&standin, "2.0.0", 5, Duration::from_secs(120)).await;
    assert_eq!(stranded.model(MODEL).await.unwrap()["version"], "2.0.0");
    println!(
        "RELIABILITY partition: offline_detected_s={offline_after_s:.1} (keep-alive 5 s) \
         rollout_without_it_s={rollout_s:.1} caught_up_after_heal_s={:.1} devices_blocked=0",
        healed.elapsed().as_secs_f64()
    );
}
