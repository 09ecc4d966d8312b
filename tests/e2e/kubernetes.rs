//! Kubernetes mode end to end: the API stand-in driven by the real kubectl, a private
//! Mosquitto, SQLite or PostgreSQL, the real controller binary and six real agent processes
//! with heterogeneous capabilities, serving a real CNN in three compression variants.

#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location
use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_e2e::orientation::*;
use edgefleet_e2e::*;

async fn deploy_and_check(database_url: &str) {
    let logs = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let v1 = publish_variants(&artifacts, "1.0.0");

    let controller = ControllerProc::start(&standin, database_url, &broker.url(), "a", logs.path());
    let agents: Vec<AgentProc> = fleet()
        .iter()
        .map(|d| AgentProc::start(d, &broker.url(), logs.path()))
        .collect();
    let fail = |what: &str| -> String {
        let mut text = format!("{what}\n{}\n", controller.proc.log_tail());
        for agent in &agents {
            text.push_str(&agent.proc.log_tail());
            text.push('\n');
        }
        text
    };

    // 1. first deployment: each device gets the variant its capabilities call for
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("1.0.0", &v1, "[{percent: 34}, {percent: 67}]")),
    );
    eventually(
        Duration::from_secs(120),
        "version 1.0.0 ready on every device that fits",
        || async {
            let status = md_status(&standin);
            let ready = status["devices"]["ready"].as_u64().unwrap_or(0);
            if status["phase"] == "Succeeded" && ready == 5 {
                Ok(())
            } else {
                Err(fail(&status.to_string()))
            }
        },
    )
    .await;
    let status = md_status(&standin);
    assert_eq!(status["devices"]["noFit"], 1, "{status}");
    assert_eq!(status["devices"]["matched"], 6, "{status}");
    for agent in &agents {
        let served = agent.model(MODEL).await;
        match expected_variant(&agent.device.id) {
            Some(variant) => {
                let served = served.unwrap_or_else(|| panic!("{} serves nothing", agent.device.id));
                assert_eq!(served["variant"], variant, "{}: {served}", agent.device.id);
                let output = agent
                    .infer(MODEL, "x", &[1, 3, 224, 224], 0.5)
                    .await
                    .unwrap();
                assert_eq!(
                    output["outputs"][0]["shape"],
                    serde_json::json!([1, 4]),
                    "{output}"
                );
            }
            None => assert!(
                served.is_none(),
                "{} fits nothing but serves {served:?}",
                agent.device.id
            ),
        }
    }
    let table = standin.kubectl_ok(&["get", "md"], None);
    assert!(table.contains("Succeeded"), "{table}");

    // 2. a new version rolls out through the canary steps
    let v2 = publish_variants(&artifacts, "2.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("2.0.0", &v2, "[{percent: 34}, {percent: 67}]")),
    );
    let mut steps_seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        drive_load(&agents, 3).await;
        let status = md_status(&standin);
        if let Some(step) = status["currentStep"].as_u64()
            && status["targetVersion"] == "2.0.0"
            && steps_seen.last() != Some(&step)
        {
            steps_seen.push(step);
        }
        if status["phase"] == "Succeeded"
            && status["targetVersion"] == "2.0.0"
            && status["devices"]["ready"] == 5
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            fail(&format!("version 2.0.0 not promoted: {status}"))
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        steps_seen.contains(&1) && steps_seen.contains(&2),
        "canary steps were observed: {steps_seen:?}"
    );
    for agent in agents
        .iter()
        .filter(|a| expected_variant(&a.device.id).is_some())
    {
        let served = agent.model(MODEL).await.unwrap();
        assert_eq!(served["version"], "2.0.0", "{}: {served}", agent.device.id);
    }
    let events = standin.kubectl_ok(&["get", "events.events.k8s.io", "-o", "json"], None);
    assert!(events.contains("Promoted"), "a Promoted event was recorded");

    let metrics = controller.metrics().await;
    assert!(
        metrics.contains("edgefleet_inference_latency_seconds_bucket"),
        "telemetry reached /metrics"
    );
    assert!(
        !metrics.contains("gw-x86-1"),
        "no device id in metric labels"
    );

    // 3. deleting the CR removes the model from every device, then the CR goes
    standin.kubectl_ok(&["delete", "md", "orientation", "--wait=false"], None);
    eventually(
        Duration::from_secs(60),
        "models removed from devices",
        || async {
            for agent in &agents {
                if let Some(served) = agent.model(MODEL).await {
                    return Err(format!("{} still serves {served}", agent.device.id));
                }
            }
            Ok(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the CR deleted once its finalizer ran",
        || async {
            let out = standin.kubectl(&["get", "md", "orientation"], None);
            if out.status.success() {
                Err("still there".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_canary_and_delete_on_sqlite() {
    let db = tempfile::tempdir().unwrap();
    deploy_and_check(&format!(
        "sqlite://{}",
        db.path().join("fleet.db").display()
    ))
    .await;
}

/// Kill the controller mid-rollout (SIGKILL); a new one on the same PostgreSQL database
/// resumes where it was: no device receives a different assignment, the rollout completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_resumes_the_rollout_on_postgres() {
    let logs = tempfile::tempdir().unwrap();
    let db = TempPostgres::create("restart").await;
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let devices: Vec<DeviceSpec> = fleet()
        .into_iter()
        .filter(|d| d.id != "tiny-arm-1")
        .collect();
    let _agents: Vec<AgentProc> = devices
        .iter()
        .map(|d| AgentProc::start(d, &broker.url(), logs.path()))
        .collect();
    let mut controller =
        ControllerProc::start(&standin, &db.url, &broker.url(), "first", logs.path());

    let v1 = publish_variants(&artifacts, "1.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest(
            "1.0.0",
            &v1,
            "[{percent: 34, pauseSeconds: 3600}]",
        )),
    );
    eventually(Duration::from_secs(120), "version 1.0.0 ready", || async {
        let status = md_status(&standin);
        if status["phase"] == "Succeeded" {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
    // v2 holds in its first step (a one-hour pause): a rollout in flight
    let v2 = publish_variants(&artifacts, "2.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest(
            "2.0.0",
            &v2,
            "[{percent: 34, pauseSeconds: 3600}]",
        )),
    );
    eventually(
        Duration::from_secs(120),
        "canaries of 2.0.0 ready",
        || async {
            let status = md_status(&standin);
            let canaries_ready = status["targetVersion"] == "2.0.0"
                && status["devices"]["ready"].as_u64().unwrap_or(0) >= 2;
            if canaries_ready {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
    let before = db.desired_documents().await;
    assert!(
        before
            .values()
            .any(|(_, doc)| doc.contains("\"version\":\"2.0.0\"")),
        "some device runs the canary"
    );
    assert!(
        before
            .values()
            .any(|(_, doc)| doc.contains("\"version\":\"1.0.0\"")),
        "others still run 1.0.0"
    );

    controller.proc.kill(); // SIGKILL: no graceful anything
    controller = ControllerProc::start(&standin, &db.url, &broker.url(), "second", logs.path());
    // The new replica takes the Lease once the dead one's expires, then reconciles.
    eventually(
        Duration::from_secs(90),
        "the new controller leading and reconciling",
        || async {
            let metrics = controller.metrics().await;
            let leading = metric_sum(&metrics, "edgefleet_leader") == 1.0;
            let reconciled = metrics.lines().any(|l| {
                l.starts_with("edgefleet_rollout_step{")
                    && l.contains("\"orientation\"")
                    && l.ends_with(" 1")
            });
            if leading && reconciled {
                Ok(())
            } else {
                Err(controller.proc.log_tail())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a few more reconciles
    let after = db.desired_documents().await;
    assert_eq!(
        before, after,
        "the restarted controller re-assigned devices"
    );
    let status = md_status(&standin);
    assert_eq!(status["currentStep"], 1, "{status}");
    drop(controller);
    db.drop().await;
}

/// A new version whose fp16 variant is far slower than the SLO on the Pi class is rolled back
/// by canary analysis; the Pi outside the first step never runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_canary_is_rolled_back_automatically() {
    let logs = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let db = tempfile::tempdir().unwrap();
    let controller = ControllerProc::start(
        &standin,
        &format!("sqlite://{}", db.path().join("fleet.db").display()),
        &broker.url(),
        "rollback",
        logs.path(),
    );
    let knob = [(
        "EDGEFLEET_AGENT_EXTRA_LATENCY_MS_BY_VARIANT",
        "fp16-next=800",
    )];
    let devices: Vec<DeviceSpec> = fleet()
        .into_iter()
        .filter(|d| d.id != "tiny-arm-1")
        .collect();
    let agents: Vec<AgentProc> = devices
        .iter()
        .map(|d| AgentProc::start_with_env(d, &broker.url(), logs.path(), &knob))
        .collect();
    let steps = "[{percent: 50}, {percent: 75}]";
    let v1 = publish_variants(&artifacts, "1.0.0");
    standin.kubectl_ok(&["apply", "-f", "-"], Some(&manifest("1.0.0", &v1, steps)));
    eventually(Duration::from_secs(120), "version 1.0.0 ready", || async {
        let status = md_status(&standin);
        if status["phase"] == "Succeeded" {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;

    let v2 = publish_variants(&artifacts, "2.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest_named("2.0.0", &v2, steps, "fp16-next")),
    );
    let pis: Vec<&AgentProc> = agents
        .iter()
        .filter(|a| a.device.id.starts_with("pi-arm"))
        .collect();
    let mut pi_versions: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let status = loop {
        drive_load(&agents, 2).await;
        for pi in &pis {
            if let Some(served) = pi.model(MODEL).await {
                let version = served["version"].as_str().unwrap_or_default().to_string();
                pi_versions
                    .entry(pi.device.id.clone())
                    .or_default()
                    .insert(version);
            }
        }
        let status = md_status(&standin);
        if status["phase"] == "RolledBack" {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not rolled back: {status}\n{}",
            controller.proc.log_tail()
        );
    };
    // exactly one Pi (the canary of its cohort) ever served 2.0.0
    let served_v2 = pi_versions.values().filter(|v| v.contains("2.0.0")).count();
    assert_eq!(served_v2, 1, "{pi_versions:?}");
    let failing = status["cohorts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["variant"] == "fp16-next")
        .unwrap_or_else(|| panic!("no fp16-next cohort in {status}"));
    assert!(
        failing["consecutiveFailures"].as_u64().unwrap() >= 2,
        "{failing}"
    );
    assert!(
        failing["p95LatencyMs"].as_f64().unwrap() > 700.0,
        "{failing}"
    );
    // every device returns to 1.0.0
    eventually(
        Duration::from_secs(60),
        "every device back on 1.0.0",
        || async {
            for agent in &agents {
                let served = agent
                    .model(MODEL)
                    .await
                    .ok_or(format!("{} serves nothing", agent.device.id))?;
                if served["version"] != "1.0.0" {
                    return Err(format!("{}: {served}", agent.device.id));
                }
            }
            Ok(())
        },
    )
    .await;
    let events = standin.kubectl_ok(&["get", "events.events.k8s.io", "-o", "json"], None);
    assert!(
        events.contains("RolledBack"),
        "a RolledBack event was recorded"
    );
}

/// Issue 17: with `onFailure: Demote`, the aarch64 class whose only fitting new variant is too
/// slow is demoted and keeps 1.0.0; the x86_64 class passes and 2.0.0 is promoted. After
/// promotion, and after a controller restart, every device still serves a model, and the
/// status says how many devices were demoted and kept the previous version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_class_keeps_serving_after_promotion() {
    let logs = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let db = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", db.path().join("fleet.db").display());
    let mut controller =
        ControllerProc::start(&standin, &database, &broker.url(), "demote", logs.path());
    // aarch64 devices with 256 MiB fit only int8; 2.0.0's int8 is 800 ms slower there
    let knob = [(
        "EDGEFLEET_AGENT_EXTRA_LATENCY_MS_BY_VARIANT",
        "int8-next=800",
    )];
    let mut devices: Vec<DeviceSpec> = fleet()
        .into_iter()
        .filter(|d| d.id.starts_with("gw-x86") || d.id == "mcu-arm-1")
        .collect();
    let mut second_mcu = devices.last().cloned().unwrap();
    second_mcu.id = "mcu-arm-2".into();
    devices.push(second_mcu);
    let agents: Vec<AgentProc> = devices
        .iter()
        .map(|d| AgentProc::start_with_env(d, &broker.url(), logs.path(), &knob))
        .collect();
    let steps = "[{percent: 50}, {percent: 75}]";
    let demote = |manifest: String| {
        manifest.replace(
            "stepTimeoutSeconds: 120}",
            "stepTimeoutSeconds: 120, onFailure: Demote}",
        )
    };
    let v1 = publish_variants(&artifacts, "1.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&demote(manifest("1.0.0", &v1, steps))),
    );
    wait_succeeded(&standin, "1.0.0", 4, Duration::from_secs(120)).await;

    let v2 = publish_variants(&artifacts, "2.0.0");
    let v2_manifest =
        demote(manifest("2.0.0", &v2, steps)).replace("name: int8", "name: int8-next");
    standin.kubectl_ok(&["apply", "-f", "-"], Some(&v2_manifest));
    // 2.0.0 is promoted on the two x86 devices; the two aarch64 devices keep 1.0.0
    promote(&standin, &agents, "2.0.0", 2, Duration::from_secs(240)).await;

    let serving = &agents;
    let check = |status: serde_json::Value| async move {
        for agent in serving {
            let served = agent
                .model(MODEL)
                .await
                .ok_or(format!("{} serves nothing; {status}", agent.device.id))?;
            let expected = if agent.device.id.starts_with("gw-x86") {
                ("2.0.0", "fp32")
            } else {
                ("1.0.0", "int8")
            };
            if (served["version"].as_str(), served["variant"].as_str())
                != (Some(expected.0), Some(expected.1))
            {
                return Err(format!("{}: {served}", agent.device.id));
            }
            agent
                .infer(MODEL, "x", &[1, 3, 224, 224], 0.5)
                .await
                .map_err(|e| format!("{} does not answer: {e}", agent.device.id))?;
        }
        let d = &status["devices"];
        let counts = (
            d["matched"].as_u64(),
            d["assigned"].as_u64(),
            d["demoted"].as_u64(),
            d["keptPrevious"].as_u64(),
            d["noFit"].as_u64(),
        );
        if counts != (Some(4), Some(4), Some(2), Some(2), Some(0)) {
            return Err(format!("counts {counts:?}: {status}"));
        }
        let demoted = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Demoted"))
            .ok_or(format!("no Demoted condition: {status}"))?;
        let message = demoted["message"].as_str().unwrap_or_default();
        if demoted["status"] != "True" || !message.contains("/int8-next demoted: 2 keep 1.0.0") {
            return Err(format!("Demoted condition: {demoted}"));
        }
        Ok::<_, String>(counts)
    };
    let counts = eventually(Duration::from_secs(60), "every device serves", || async {
        check(md_status(&standin)).await
    })
    .await;

    // a restarted controller changes nothing
    controller.proc.terminate(Duration::from_secs(10));
    controller = ControllerProc::start(&standin, &database, &broker.url(), "demote-2", logs.path());
    tokio::time::sleep(Duration::from_secs(5)).await;
    eventually(
        Duration::from_secs(60),
        "every device serves after a restart",
        || async { check(md_status(&standin)).await },
    )
    .await;
    println!(
        "RELIABILITY demote_after_promotion: (matched, assigned, demoted, kept_previous, no_fit)={counts:?} \
         serving=4/4 after promotion and after a controller restart"
    );
    drop(controller);
}
