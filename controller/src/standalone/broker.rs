//! The MQTT broker of the embedded default: rumqttd inside the controller process, configured
//! in code on a loopback port, or a private Mosquitto when asked for (`--broker-impl
//! mosquitto`). Agents rely on retained `hello`/`desired`/`status` and on the last-will
//! `status`; the tests below check both against rumqttd.
//!
//! Both refuse publishes over [`BROKER_MAX_PACKET_BYTES`] (the publisher is disconnected), a
//! limit below what every EdgeFleet client reads, so no message this broker accepts can break
//! a subscriber's connection. rumqttd speaks MQTT 3.1.1 (agents) and MQTT 5 (the controller)
//! on two ports of one router; Mosquitto speaks both on one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::ValueEnum;
use edgefleet_protocol::wire::BROKER_MAX_PACKET_BYTES;

/// Which broker `edgefleet up` / `edgefleet demo` runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BrokerImpl {
    /// rumqttd, in-process.
    Embedded,
    /// `/usr/sbin/mosquitto` as a child process (killed with the controller).
    Mosquitto,
}

/// A running broker; a Mosquitto child is killed on drop. rumqttd has no shutdown API: its
/// threads end with the process.
pub struct RunningBroker {
    /// What devices connect to (MQTT 3.1.1 and, with Mosquitto, 5).
    pub url: String,
    pub addr: SocketAddr,
    /// What the controller connects to (MQTT 5): a second rumqttd listener, or `url`.
    pub controller_url: String,
    _child: Option<tokio::process::Child>,
}

/// Starts the broker on `listen` (port 0 picks a free port).
pub async fn start(
    kind: BrokerImpl,
    listen: &str,
    data_dir: &Path,
) -> anyhow::Result<RunningBroker> {
    let addr = resolve_port(listen)?;
    let mut controller_addr = addr;
    let child = match kind {
        BrokerImpl::Embedded => {
            controller_addr = resolve_port(&SocketAddr::new(addr.ip(), 0).to_string())?;
            let config = rumqttd_config(addr, controller_addr);
            std::thread::Builder::new()
                .name("mqtt-broker".into())
                .spawn(move || {
                    let mut broker = rumqttd::Broker::new(config);
                    if let Err(err) = broker.start() {
                        tracing::error!(%err, "embedded MQTT broker stopped");
                    }
                })
                .context("starting the embedded MQTT broker thread")?;
            None
        }
        BrokerImpl::Mosquitto => Some(spawn_mosquitto(addr, data_dir)?),
    };
    for listener in [addr, controller_addr] {
        wait_listening(listener, Duration::from_secs(10))
            .await
            .with_context(|| format!("the MQTT broker did not listen on {listener}"))?;
    }
    Ok(RunningBroker {
        url: format!("mqtt://{addr}"),
        addr,
        controller_url: format!("mqtt://{controller_addr}"),
        _child: child,
    })
}

/// `host:0` becomes a free port now (rumqttd binds in its own thread and cannot report it).
fn resolve_port(listen: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--mqtt-listen {listen:?} is not an IP:PORT address"))?;
    if addr.port() != 0 {
        return Ok(addr);
    }
    let probe = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(probe.local_addr()?)
}

async fn wait_listening(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => return Err(err.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// rumqttd configured in code: an MQTT 3.1.1 listener on `addr` (agents) and an MQTT 5 one on
/// `v5_addr` (the controller), packets up to [`BROKER_MAX_PACKET_BYTES`], and enough
/// in-flight slots that every retained message of a wildcard subscription is forwarded
/// (rumqttd drops retained messages beyond the free in-flight slots of the subscribing
/// connection). rumqttd ignores a client's Maximum Packet Size, so its own limit is what
/// protects subscribers.
pub fn rumqttd_config(addr: SocketAddr, v5_addr: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: BROKER_MAX_PACKET_BYTES,
        max_inflight_count: 10_000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen: SocketAddr| rumqttd::ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 10_000,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server("v4-1", addr))])),
        v5: Some(HashMap::from([("1".to_string(), server("v5-1", v5_addr))])),
        ..Default::default()
    }
}

/// Messages Mosquitto queues for one client before it drops the rest, silently. The
/// controller's subscription replays every device's retained hello and status at once (a
/// restart or a 100,000-device reconnect storm): Mosquitto's default of 1,000 would drop all
/// but the first ~1,000 of them.
const MAX_QUEUED_MESSAGES: u32 = 1_000_000;

fn spawn_mosquitto(addr: SocketAddr, data_dir: &Path) -> anyhow::Result<tokio::process::Child> {
    let binary = Path::new("/usr/sbin/mosquitto");
    anyhow::ensure!(
        binary.is_file(),
        "--broker-impl mosquitto: {} is not installed",
        binary.display()
    );
    let dir = data_dir.join("mosquitto");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "allow_anonymous true\npersistence true\npersistence_location {}/\nlistener {} {}\nmax_queued_messages {MAX_QUEUED_MESSAGES}\nmax_packet_size {BROKER_MAX_PACKET_BYTES}\n",
            dir.display(),
            addr.port(),
            addr.ip()
        ),
    )?;
    let log = std::fs::File::create(dir.join("mosquitto.log"))?;
    tokio::process::Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting /usr/sbin/mosquitto")
}

#[cfg(test)]
mod tests {
    use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};

    use super::*;

    fn options(id: &str, addr: SocketAddr) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(5));
        o
    }

    /// Collects publishes until `count` arrived or the timeout passed.
    async fn receive(
        eventloop: &mut rumqttc::EventLoop,
        count: usize,
        timeout: Duration,
    ) -> Vec<(String, Vec<u8>, bool)> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while got.len() < count {
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    got.push((p.topic.clone(), p.payload.to_vec(), p.retain))
                }
                Ok(Ok(_)) => {}
                Ok(Err(err)) => panic!("connection error: {err}"),
                Err(_) => break,
            }
        }
        got
    }

    async fn connected(options: MqttOptions) -> (AsyncClient, rumqttc::EventLoop) {
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await.expect("connect") {
                return (client, eventloop);
            }
        }
    }

    #[tokio::test]
    async fn embedded_broker_keeps_retained_messages_and_fires_last_wills() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = start(BrokerImpl::Embedded, "127.0.0.1:0", dir.path())
            .await
            .expect("broker");

        // A device announces itself (retained) with an offline last will, then vanishes
        // without DISCONNECT.
        let mut device = options("dev-1", broker.addr);
        device.set_last_will(LastWill::new(
            "t/dev-1/status",
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = connected(device).await;
        client
            .publish("t/dev-1/hello", QoS::AtLeastOnce, true, "hello")
            .await
            .expect("publish");
        client
            .publish("t/dev-1/status", QoS::AtLeastOnce, true, "online")
            .await
            .expect("publish");
        for _ in 0..6 {
            let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
        }

        // A subscriber arriving later gets the retained messages.
        let (watcher, mut watcher_loop) = connected(options("watcher", broker.addr)).await;
        watcher
            .subscribe("t/+/hello", QoS::AtLeastOnce)
            .await
            .expect("sub");
        watcher
            .subscribe("t/+/status", QoS::AtLeastOnce)
            .await
            .expect("sub");
        let got = receive(&mut watcher_loop, 2, Duration::from_secs(5)).await;
        assert!(
            got.iter()
                .any(|(t, p, r)| t == "t/dev-1/hello" && p == b"hello" && *r),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|(t, p, r)| t == "t/dev-1/status" && p == b"online" && *r),
            "{got:?}"
        );

        // The device's connection drops: the will reaches the live subscriber...
        drop(eventloop);
        drop(client);
        let got = receive(&mut watcher_loop, 1, Duration::from_secs(5)).await;
        assert_eq!(
            got.first().map(|g| g.1.as_slice()),
            Some(&b"offline"[..]),
            "{got:?}"
        );

        // ...and replaces the retained status for later subscribers.
        let (late, mut late_loop) = connected(options("late", broker.addr)).await;
        late.subscribe("t/+/status", QoS::AtLeastOnce)
            .await
            .expect("sub");
        let got = receive(&mut late_loop, 1, Duration::from_secs(5)).await;
        assert_eq!(
            got.first().map(|g| (g.1.as_slice(), g.2)),
            Some((&b"offline"[..], true)),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn clean_disconnect_does_not_fire_the_will() {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = start(BrokerImpl::Embedded, "127.0.0.1:0", dir.path())
            .await
            .expect("broker");
        let mut device = options("dev-2", broker.addr);
        device.set_last_will(LastWill::new(
            "t/dev-2/status",
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = connected(device).await;
        client
            .publish("t/dev-2/status", QoS::AtLeastOnce, true, "online")
            .await
            .expect("publish");
        client.disconnect().await.expect("disconnect");
        for _ in 0..6 {
            if tokio::time::timeout(Duration::from_millis(200), eventloop.poll())
                .await
                .is_ok_and(|r| r.is_err())
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (late, mut late_loop) = connected(options("late-2", broker.addr)).await;
        late.subscribe("t/dev-2/status", QoS::AtLeastOnce)
            .await
            .expect("sub");
        let got = receive(&mut late_loop, 1, Duration::from_secs(3)).await;
        assert_eq!(
            got.first().map(|g| g.1.as_slice()),
            Some(&b"online"[..]),
            "{got:?}"
        );
    }

    /// The controller speaks MQTT 5 to the v5 listener and sees what devices publish on the
    /// v4 one (retained messages included); a publish over the broker's limit is refused, and
    /// the subscriber's connection is not touched.
    #[tokio::test]
    async fn embedded_broker_serves_mqtt5_and_refuses_oversized_publishes() {
        use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
        use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};

        let dir = tempfile::tempdir().expect("tempdir");
        let broker = start(BrokerImpl::Embedded, "127.0.0.1:0", dir.path())
            .await
            .expect("broker");
        assert_ne!(broker.url, broker.controller_url);
        let (device, mut device_loop) = connected(options("dev-3", broker.addr)).await;
        device
            .publish("t/dev-3/hello", QoS::AtLeastOnce, true, "hello")
            .await
            .expect("publish");
        for _ in 0..4 {
            let _ = tokio::time::timeout(Duration::from_millis(200), device_loop.poll()).await;
        }

        let v5_addr: SocketAddr = broker
            .controller_url
            .trim_start_matches("mqtt://")
            .parse()
            .expect("addr");
        let mut o = Options5::new("controller", v5_addr.ip().to_string(), v5_addr.port());
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        o.set_max_packet_size(Some(edgefleet_protocol::wire::MAX_PACKET_BYTES as u32));
        let (controller, mut controller_loop) = Client5::new(o, 100);
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut oversized_sent = false;
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(200), controller_loop.poll()).await {
                Ok(Ok(Event5::Incoming(Packet5::ConnAck(_)))) => controller
                    .subscribe("t/+/hello", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                    .await
                    .expect("sub"),
                Ok(Ok(Event5::Incoming(Packet5::Publish(p)))) => {
                    got.push((p.topic.to_vec(), p.payload.len(), p.retain))
                }
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(err)) => panic!("the controller's connection broke: {err}"),
            }
            if !got.is_empty() && !oversized_sent {
                oversized_sent = true;
                // A device publishes more than the limit: refused, its connection closed.
                let mut big = options("dev-big", broker.addr);
                big.set_max_packet_size(1 << 20, 1 << 20);
                let (client, mut big_loop) = connected(big).await;
                client
                    .publish(
                        "t/dev-big/hello",
                        QoS::AtLeastOnce,
                        false,
                        vec![0u8; 300 << 10],
                    )
                    .await
                    .expect("queue");
                let refused = tokio::time::timeout(Duration::from_secs(5), async {
                    loop {
                        match big_loop.poll().await {
                            Ok(Event::Incoming(Packet::PubAck(_))) => return false,
                            Ok(_) => {}
                            Err(_) => return true,
                        }
                    }
                })
                .await
                .expect("an answer");
                assert!(refused, "rumqttd accepted an oversized publish");
            }
        }
        assert_eq!(got, vec![(b"t/dev-3/hello".to_vec(), 5, true)]);
    }
}
