//! Devices kept in their lane: the whole loop over MQTT-over-TLS with a client certificate per
//! device (and one for the controller), under the ACL the Helm chart ships (rendered by the
//! real helm). A device holding a valid certificate tries to read and write another
//! device's topics; the broker refuses, and the controller never hears of it.

#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_e2e::orientation::*;
use edgefleet_e2e::pki::{Identity, Pki};
use edgefleet_e2e::*;
use edgefleet_protocol::presence;
use edgefleet_protocol::wire::{self, Channel, DeviceId, DeviceStatus, Hello};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

const CONTROLLER_CN: &str = "edgefleet-controller";

/// The TLS listener's ACL exactly as the chart renders it.
fn chart_acl() -> String {
    let tools = Command::new("bash")
        .arg(repo_root().join("tests/tools/install-k8s-tools.sh"))
        .output()
        .unwrap();
    assert!(tools.status.success());
    let bin = String::from_utf8(tools.stdout).unwrap();
    let helm = std::path::PathBuf::from(bin.lines().last().unwrap().trim()).join("helm");
    let out = Command::new(helm)
        .arg("template")
        .arg("t")
        .arg(repo_root().join("charts/edgefleet"))
        .args([
            "--set",
            "mqtt.bundled.tls.enabled=true",
            "--set",
            "mqtt.bundled.tls.secretName=mqtt-tls",
            "--set",
            &format!("mqtt.bundled.controllerUsername={CONTROLLER_CN}"),
            "--show-only",
            "templates/mosquitto-configmap.yaml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    doc["data"]["acl-tls"].as_str().unwrap().to_string()
}

/// Mosquitto as the chart configures it: TLS for devices and the controller (client
/// certificate required, CN = username, the chart's ACL) and a plain anonymous listener for
/// the test's observer (the chart's in-cluster listener).
fn secure_broker(pki: &Pki, tls_port: u16, plain_port: u16, dir: &std::path::Path) -> Broker {
    let acl_tls = dir.join("acl-tls");
    std::fs::write(&acl_tls, chart_acl()).unwrap();
    let acl_plain = dir.join("acl-plain");
    std::fs::write(&acl_plain, "topic readwrite edgefleet/v1/#\n").unwrap();
    let server = pki.server();
    Broker::start_with_config(
        tls_port,
        &format!(
            "per_listener_settings true\n\
             listener {plain_port} 127.0.0.1\nallow_anonymous true\nacl_file {}\n\
             listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n\
             allow_anonymous false\nacl_file {}\n",
            acl_plain.display(),
            pki.ca().display(),
            server.cert.display(),
            server.key.display(),
            acl_tls.display(),
        ),
    )
}

fn tls_client(
    pki: &Pki,
    who: &Identity,
    client_id: &str,
    port: u16,
) -> (AsyncClient, rumqttc::EventLoop) {
    let config = edgefleet_mqtt::client_config(edgefleet_mqtt::TlsFiles {
        ca_file: Some(&pki.ca()),
        identity: Some((&who.cert, &who.key)),
    })
    .unwrap();
    let mut options = MqttOptions::new(client_id, "localhost", port);
    options.set_transport(Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
    ));
    options.set_max_packet_size(1 << 20, 1 << 20);
    AsyncClient::new(options, 64)
}

/// Everything seen on the device tree through the plain listener: (topic, payload).
async fn observe(
    port: u16,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let mut options = MqttOptions::new("observer", "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 64);
    client
        .subscribe("edgefleet/v1/devices/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe(presence::presence_subscription(), QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event
                && tx.send((p.topic.clone(), p.payload.to_vec())).is_err()
            {
                return;
            }
        }
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_read_or_write_another_devices_topics() {
    let logs = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::create(certs.path());
    let (tls_port, plain_port) = (free_port(), free_port());
    let broker = secure_broker(&pki, tls_port, plain_port, certs.path());
    let tls_url = format!("mqtts://localhost:{tls_port}");
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let db = tempfile::tempdir().unwrap();
    let controller_id = pki.client(CONTROLLER_CN);
    let ca = pki.ca().display().to_string();
    let (cert, key) = (
        controller_id.cert.display().to_string(),
        controller_id.key.display().to_string(),
    );
    let controller = ControllerProc::start_with_env(
        &standin,
        &format!("sqlite://{}", db.path().join("fleet.db").display()),
        &tls_url,
        "tls",
        logs.path(),
        &[
            ("EDGEFLEET_MQTT_CA_FILE", &ca),
            ("EDGEFLEET_MQTT_CERT_FILE", &cert),
            ("EDGEFLEET_MQTT_KEY_FILE", &key),
        ],
    );
    let devices: Vec<DeviceSpec> = fleet()
        .into_iter()
        .filter(|d| ["gw-x86-1", "pi-arm-1"].contains(&d.id.as_str()))
        .collect();
    let agents: Vec<AgentProc> = devices
        .iter()
        .map(|d| {
            let id = pki.client(&d.id);
            let (cert, key) = (id.cert.display().to_string(), id.key.display().to_string());
            AgentProc::start_with_env(
                d,
                &tls_url,
                logs.path(),
                &[
                    ("EDGEFLEET_AGENT_TLS_CA_FILE", &ca),
                    ("EDGEFLEET_AGENT_TLS_CERT_FILE", &cert),
                    ("EDGEFLEET_AGENT_TLS_KEY_FILE", &key),
                ],
            )
        })
        .collect();

    // The whole loop works over TLS under the ACL.
    let v1 = publish_variants(&artifacts, "1.0.0");
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("1.0.0", &v1, "[{percent: 50}]")),
    );
    eventually(
        Duration::from_secs(120),
        "1.0.0 on both devices",
        || async {
            let status = md_status(&standin);
            if status["phase"] == "Succeeded" && status["devices"]["ready"] == 2 {
                Ok(())
            } else {
                Err(format!("{status}\n{}", controller.proc.log_tail()))
            }
        },
    )
    .await;
    let pi = &agents[1];
    assert_eq!(pi.model(MODEL).await.unwrap()["variant"], "fp16");

    let (_observer, mut seen) = observe(plain_port).await;
    let victim = DeviceId::new("pi-arm-1").unwrap();
    let mut genuine_hello = None;
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok((topic, payload)) = seen.try_recv() {
        if topic == wire::topic(&victim, Channel::Hello) {
            genuine_hello = Some(payload); // retained
        }
    }
    let genuine_hello: Hello = wire::decode(&genuine_hello.expect("pi-arm-1's hello")).unwrap();

    // gw-x86-1's own certificate, in an attacker's hands.
    let stolen = pki.client("gw-x86-1");
    let (attacker, mut events) = tls_client(&pki, &stolen, "gw-x86-1-evil", tls_port);
    attacker
        .subscribe(wire::topic(&victim, Channel::Desired), QoS::AtLeastOnce)
        .await
        .unwrap();
    attacker
        .subscribe("edgefleet/v1/devices/+/desired", QoS::AtLeastOnce)
        .await
        .unwrap();
    // Forged: pi-arm-1 claims to be a big x86 box (to be handed fp32), and to be offline.
    let forged_hello = wire::encode(&Hello {
        arch: "x86_64".into(),
        memory_total_mib: 65536,
        memory_available_mib: 65536,
        ..genuine_hello
    });
    let forged_status = wire::encode(&DeviceStatus {
        device_id: victim.clone(),
        online: false,
    });
    for (channel, payload) in [
        (Channel::Hello, forged_hello.clone()),
        (Channel::Status, forged_status.clone()),
    ] {
        attacker
            .publish(
                wire::topic(&victim, channel),
                QoS::AtLeastOnce,
                true,
                payload,
            )
            .await
            .unwrap();
    }
    // Forged: the controller says it went away (agents would hold their telemetry).
    let forged_presence = presence::encode_presence(false);
    attacker
        .publish(
            presence::presence_topic("controller-tls"),
            QoS::AtLeastOnce,
            true,
            forged_presence.clone(),
        )
        .await
        .unwrap();
    // A marker on its own topic, after the forgeries on the same connection.
    let own = DeviceId::new("gw-x86-1").unwrap();
    let marker = wire::encode(&DeviceStatus {
        device_id: own.clone(),
        online: true,
    });
    attacker
        .publish(
            wire::topic(&own, Channel::Status),
            QoS::AtLeastOnce,
            true,
            marker.clone(),
        )
        .await
        .unwrap();

    let mut suback_codes = Vec::new();
    let mut desired_topics = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => suback_codes.extend(ack.return_codes),
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                desired_topics.insert(p.topic.clone());
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(err)) => panic!("attacker connection failed: {err}"),
        }
    }
    assert_eq!(
        desired_topics,
        [wire::topic(&own, Channel::Desired)].into_iter().collect(),
        "the attacker read another device's desired document"
    );
    // Mosquitto grants the subscription in its SUBACK (MQTT 3.1.1 has no "not authorized"
    // code for it) and then never delivers what the ACL denies: the assertion above is the
    // one that matters; the codes are reported.
    assert_eq!(suback_codes.len(), 2, "{suback_codes:?}");

    // The observer (plain listener) saw the marker, never the forgeries.
    let mut saw_marker = false;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until && !saw_marker {
        if let Ok(Some((topic, payload))) =
            tokio::time::timeout(Duration::from_millis(200), seen.recv()).await
        {
            assert!(
                payload != forged_hello && payload != forged_status && payload != forged_presence,
                "a forged message reached {topic}"
            );
            saw_marker |= topic == wire::topic(&own, Channel::Status) && payload == marker;
        }
    }
    assert!(saw_marker, "the attacker's own publish did not arrive");
    // The controller still knows pi-arm-1 as it is: online, fp16.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = md_status(&standin);
    assert_eq!(status["devices"]["offline"], 0, "{status}");
    assert_eq!(pi.model(MODEL).await.unwrap()["variant"], "fp16");
    // No key material in any log.
    for log in std::fs::read_dir(logs.path()).unwrap() {
        let text = std::fs::read_to_string(log.unwrap().path()).unwrap_or_default();
        assert!(!text.contains("PRIVATE KEY"), "key material logged");
    }
    println!(
        "RELIABILITY acl: forged_publishes_delivered=0 foreign_desired_read=0 \
         foreign_subscribe_suback={suback_codes:?}"
    );
    drop(broker);
}
