//! Issue 17, part 2: a message larger than the clients read, published on any device topic
//! (real or invented device id, retained or not, 1 MB and 16 MB), costs the controller and an
//! agent at most one reconnect, against a Mosquitto with its default (unlimited) packet size
//! and against both brokers `edgefleet up` runs. Prints `RELIABILITY` lines.
#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location

use std::process::Command;
use std::time::Duration;

use edgefleet_e2e::orientation::*;
use edgefleet_e2e::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Between the old rumqttd limit and the clients' limit, 1 MB and 16 MB.
const SIZES: [usize; 3] = [300 << 10, 1 << 20, 16 << 20];
const CHANNELS: [&str; 5] = ["hello", "status", "state", "telemetry", "desired"];

/// Connections the broker accepted for the controller, from its log (the same on code before
/// and after the fix, which added `edgefleet_mqtt_connections_total`).
fn connections_in_log(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("connected to the MQTT broker")
        .count()
}

/// Publishes one message with a fresh client; `true` when the broker acked it, `false` when
/// it refused it (closed the connection, as a broker with a packet limit does).
async fn publish_once(port: u16, topic: &str, size: usize, retain: bool) -> bool {
    let mut options = MqttOptions::new(format!("oversize-{}", rand_id()), "127.0.0.1", port);
    options.set_max_packet_size(64 << 20, 64 << 20);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .publish(topic, QoS::AtLeastOnce, retain, vec![b'x'; size])
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    let _ = client.disconnect().await;
    outcome
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Every device topic of `devices`, every size, retained and not. Returns (acked, refused).
async fn publish_oversized_everywhere(port: u16, devices: &[&str]) -> (usize, usize) {
    let (mut acked, mut refused) = (0, 0);
    for size in SIZES {
        for device in devices {
            for channel in CHANNELS {
                for retain in [false, true] {
                    let topic = format!("edgefleet/v1/devices/{device}/{channel}");
                    if publish_once(port, &topic, size, retain).await {
                        acked += 1;
                    } else {
                        refused += 1;
                    }
                }
            }
        }
    }
    (acked, refused)
}

fn counted_windows(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("edgefleet_telemetry_windows_total{result=\"counted\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Kubernetes mode against a Mosquitto with no packet limit (what a user brings): the
/// controller stays connected, still ingests real telemetry and finishes the next rollout;
/// the agent whose retained desired document was replaced by an oversized one reconnects at
/// most once and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_on_every_device_topic_cost_at_most_one_reconnect() {
    let logs = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let controller = ControllerProc::start(
        &standin,
        &format!("sqlite://{}", db.path().join("fleet.db").display()),
        &broker.url(),
        "a",
        logs.path(),
    );
    let agents: Vec<AgentProc> = fleet()
        .into_iter()
        .filter(|d| d.id == "gw-x86-1" || d.id == "pi-arm-1")
        .map(|d| AgentProc::start(&d, &broker.url(), logs.path()))
        .collect();
    let v1 = publish_variants(&artifacts, "1.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("1.0.0", &v1, "[{percent: 50}]")),
    );
    wait_succeeded(&standin, "1.0.0", 2, Duration::from_secs(120)).await;
    let before = connections_in_log(&controller.proc.log);
    let agent_before = metric_sum(
        &agents[0].metrics().await,
        "edgefleet_agent_mqtt_connections_total",
    );

    let (acked, refused) =
        publish_oversized_everywhere(broker.port, &["gw-x86-1", "ghost-device-9"]).await;
    // Let redeliveries (persistent session, retained messages) and the loopback probe's
    // stall detection (15 s) play out.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let reconnects = connections_in_log(&controller.proc.log).saturating_sub(before);
    let agent_reconnects = metric_sum(
        &agents[0].metrics().await,
        "edgefleet_agent_mqtt_connections_total",
    ) - agent_before;
    let metrics = controller.metrics().await;
    println!(
        "RELIABILITY oversized_messages broker=mosquitto-unlimited: published={} acked={acked} \
         refused={refused} controller_reconnects={reconnects} agent_reconnects={agent_reconnects} \
         controller_too_large_counted={} controller_stalls={}",
        acked + refused,
        metrics
            .lines()
            .find(|l| l.starts_with("edgefleet_mqtt_messages_rejected_total{reason=\"too_large\"}"))
            .unwrap_or("none"),
        metric_sum(&metrics, "edgefleet_mqtt_stalls_total"),
    );
    assert!(
        reconnects <= 1,
        "the controller reconnected {reconnects} times\n{}",
        controller.proc.log_tail()
    );
    assert!(
        agent_reconnects <= 1.0,
        "the agent reconnected {agent_reconnects} times\n{}",
        agents[0].proc.log_tail()
    );

    // Real telemetry is still ingested and both agents still serve.
    let counted_before = counted_windows(&metrics);
    eventually(
        Duration::from_secs(60),
        "telemetry counted after the oversized messages",
        || async {
            drive_load(&agents, 2).await;
            let now = counted_windows(&controller.metrics().await);
            if now > counted_before {
                Ok(())
            } else {
                Err(format!("{now} <= {counted_before}"))
            }
        },
    )
    .await;
    let ready = reqwest::get(format!("http://{}/readyz", controller.listen))
        .await
        .unwrap();
    assert!(ready.status().is_success(), "/readyz: {}", ready.status());

    // A following rollout still works (it also replaces the oversized retained desired).
    let v2 = publish_variants(&artifacts, "2.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("2.0.0", &v2, "[{percent: 50}]")),
    );
    promote(&standin, &agents, "2.0.0", 2, Duration::from_secs(120)).await;
    for agent in &agents {
        agent
            .infer(MODEL, "x", &[1, 3, 224, 224], 0.5)
            .await
            .unwrap_or_else(|e| panic!("{} stopped answering: {e}", agent.device.id));
    }
    let total = connections_in_log(&controller.proc.log).saturating_sub(before);
    assert!(total <= 1, "the controller reconnected {total} times");
}

/// `edgefleet up` with each broker implementation: the broker refuses the oversized
/// publishes; the controller never reconnects and still ingests a device that joins after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgefleet_up_brokers_refuse_oversized_messages_and_the_controller_stays_connected() {
    for broker_impl in ["embedded", "mosquitto"] {
        let logs = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let (edgefleet, _) = binaries();
        let (http_port, mqtt_port) = (free_port(), free_port());
        let mut command = Command::new(edgefleet);
        command
            .arg("up")
            .env("EDGEFLEET_DATA_DIR", data.path())
            .env("EDGEFLEET_LISTEN", format!("127.0.0.1:{http_port}"))
            .env("EDGEFLEET_MQTT_LISTEN", format!("127.0.0.1:{mqtt_port}"))
            .env("EDGEFLEET_BROKER_IMPL", broker_impl)
            .env("RUST_LOG", "info");
        let up = Proc::spawn(&format!("up-{broker_impl}"), &mut command, logs.path());
        let broker_url = format!("mqtt://127.0.0.1:{mqtt_port}");
        let metrics_url = format!("http://127.0.0.1:{http_port}/metrics");
        let online = |count: f64| {
            let url = metrics_url.clone();
            async move {
                let text = match reqwest::get(&url).await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => return Err(e.to_string()),
                };
                let seen = text
                    .lines()
                    .find(|l| l.starts_with("edgefleet_devices{state=\"online\"}"))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .unwrap_or(0.0);
                if seen >= count {
                    Ok(())
                } else {
                    Err(format!("{seen} online"))
                }
            }
        };
        let devices = fleet();
        let first = AgentProc::start(&devices[0], &broker_url, logs.path());
        eventually(Duration::from_secs(30), "the first device online", || {
            online(1.0)
        })
        .await;
        let before = connections_in_log(&up.log);
        let agent_before = metric_sum(
            &first.metrics().await,
            "edgefleet_agent_mqtt_connections_total",
        );

        let (acked, refused) =
            publish_oversized_everywhere(mqtt_port, &[&devices[0].id, "ghost-device-9"]).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let reconnects = connections_in_log(&up.log).saturating_sub(before);
        let agent_reconnects = metric_sum(
            &first.metrics().await,
            "edgefleet_agent_mqtt_connections_total",
        ) - agent_before;
        println!(
            "RELIABILITY oversized_messages broker={broker_impl}: published={} acked={acked} \
             refused={refused} controller_reconnects={reconnects} agent_reconnects={agent_reconnects}",
            acked + refused
        );
        assert_eq!(acked, 0, "{broker_impl} accepted oversized messages");
        assert!(
            reconnects <= 1,
            "{broker_impl}: the controller reconnected {reconnects} times\n{}",
            up.log_tail()
        );
        assert!(
            agent_reconnects <= 1.0,
            "{broker_impl}: agent {agent_reconnects}"
        );

        // A device that joins now is still ingested.
        let _second = AgentProc::start(&devices[1], &broker_url, logs.path());
        eventually(Duration::from_secs(30), "the second device online", || {
            online(2.0)
        })
        .await;
        let ready = reqwest::get(format!("http://127.0.0.1:{http_port}/readyz"))
            .await
            .unwrap();
        assert!(ready.status().is_success(), "/readyz: {}", ready.status());
    }
}
