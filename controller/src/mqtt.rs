//! The controller's MQTT link: subscribes to every device's hello/status/state/telemetry,
//! decodes them (bad payloads are counted and dropped, never fatal) and publishes retained
//! desired documents. Reconnects by itself with jittered backoff.

use std::time::Duration;

use edgefleet_crds::presence::{encode_presence, presence_topic};
use edgefleet_crds::wire::{
    self, Channel, Desired, DeviceStatus, Hello, StateReport, Telemetry, WireError, WireMessage,
};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// A decoded message from a device.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceMessage {
    Hello(Hello),
    Status(DeviceStatus),
    State(StateReport),
    Telemetry(Telemetry),
}

/// Decodes one publish; `Ok(None)` for topics the controller itself writes (desired).
pub fn decode_device_message(
    topic: &str,
    payload: &[u8],
) -> Result<Option<DeviceMessage>, WireError> {
    let (device, channel) = wire::parse_topic(topic)?;
    Ok(Some(match channel {
        Channel::Hello => DeviceMessage::Hello(wire::decode_from(&device, payload)?),
        Channel::Status => DeviceMessage::Status(wire::decode_from(&device, payload)?),
        Channel::State => DeviceMessage::State(wire::decode_from(&device, payload)?),
        Channel::Telemetry => DeviceMessage::Telemetry(wire::decode_from(&device, payload)?),
        Channel::Desired => return Ok(None),
    }))
}

#[derive(Debug, Clone)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS to the broker.
    pub tls: bool,
}

impl BrokerAddress {
    /// `mqtt://host:port` (port defaults to 1883) or `mqtts://host:port` (8883).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (rest, true, 8883)
        } else if let Some(rest) = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
        {
            (rest, false, 1883)
        } else {
            return Err(format!(
                "broker URL {url:?} must start with mqtt:// or mqtts://"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse()
                    .map_err(|_| format!("broker URL {url:?} has an invalid port {port:?}"))?;
                (host, port)
            }
            None => (rest, default_port),
        };
        if host.is_empty() {
            return Err(format!("broker URL {url:?} has no host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

/// Where and how the controller connects: address, TLS client (for `mqtts://`) and optional
/// username/password (Mosquitto password file or an auth plugin).
#[derive(Clone)]
pub struct BrokerConnection {
    pub address: BrokerAddress,
    pub tls: Option<std::sync::Arc<edgefleet_mqtt_tls::rustls::ClientConfig>>,
    pub credentials: Option<(String, String)>,
}

impl BrokerConnection {
    pub fn plain(address: BrokerAddress) -> Self {
        Self {
            address,
            tls: None,
            credentials: None,
        }
    }
}

/// Publishing side of the link; cheap to clone.
#[derive(Clone)]
pub struct MqttLink {
    client: AsyncClient,
    metrics: Metrics,
    fresh_sessions: watch::Receiver<u64>,
    presence_topic: String,
}

impl MqttLink {
    /// Bumped on every connection where the broker held no session for us (first start, or a
    /// broker that lost its state): retained desired documents may be gone with it.
    pub fn fresh_sessions(&self) -> watch::Receiver<u64> {
        self.fresh_sessions.clone()
    }

    /// Publishes a device's full desired document, retained, QoS 1.
    pub async fn publish_desired(&self, desired: &Desired) -> Result<(), rumqttc::ClientError> {
        let topic = wire::topic(&desired.device_id, Channel::Desired);
        self.client
            .publish(topic, QoS::AtLeastOnce, true, wire::encode(desired))
            .await?;
        self.metrics
            .mqtt_published
            .with_label_values(&[Channel::Desired.as_str()])
            .inc();
        Ok(())
    }

    /// Says `offline` first: a clean disconnect does not fire the last will.
    pub async fn disconnect(&self) {
        let _ = self
            .client
            .publish(
                self.presence_topic.clone(),
                QoS::AtLeastOnce,
                true,
                encode_presence(false),
            )
            .await;
        let _ = self.client.disconnect().await;
    }
}

/// Connects and returns the link plus the stream of decoded device messages.
/// `client_id` should be stable per replica: with a persistent session the broker keeps
/// QoS 1 telemetry for the controller while it restarts.
pub fn connect(
    broker: &BrokerConnection,
    client_id: &str,
    metrics: Metrics,
    channel_capacity: usize,
) -> (MqttLink, mpsc::Receiver<DeviceMessage>, JoinHandle<()>) {
    let address = &broker.address;
    let mut options = MqttOptions::new(client_id, &address.host, address.port);
    if let Some(tls) = &broker.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    if let Some((username, password)) = &broker.credentials {
        options.set_credentials(username, password);
    }
    options.set_keep_alive(Duration::from_secs(15));
    options.set_clean_session(false);
    let presence = presence_topic(client_id);
    options.set_last_will(LastWill::new(
        presence.clone(),
        encode_presence(false),
        QoS::AtLeastOnce,
        true,
    ));
    options.set_max_packet_size(
        wire::MAX_PAYLOAD_BYTES + 4096,
        wire::MAX_PAYLOAD_BYTES + 4096,
    );
    options.set_inflight(1000);
    let (client, eventloop) = AsyncClient::new(options, 4096);
    let (tx, rx) = mpsc::channel(channel_capacity);
    let (fresh_tx, fresh_sessions) = watch::channel(0u64);
    let link = MqttLink {
        client: client.clone(),
        metrics: metrics.clone(),
        fresh_sessions,
        presence_topic: presence.clone(),
    };
    let task = tokio::spawn(run_event_loop(
        client, eventloop, tx, fresh_tx, metrics, presence,
    ));
    (link, rx, task)
}

async fn run_event_loop(
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    tx: mpsc::Sender<DeviceMessage>,
    fresh_sessions: watch::Sender<u64>,
    metrics: Metrics,
    presence_topic: String,
) {
    let mut failures: u32 = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                failures = 0;
                metrics.mqtt_connected.set(1);
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the MQTT broker"
                );
                if !ack.session_present {
                    fresh_sessions.send_modify(|n| *n = n.wrapping_add(1));
                }
                for channel in [
                    Channel::Hello,
                    Channel::Status,
                    Channel::State,
                    Channel::Telemetry,
                ] {
                    if let Err(err) = client
                        .subscribe(wire::subscription(channel), QoS::AtLeastOnce)
                        .await
                    {
                        tracing::warn!(%err, channel = channel.as_str(), "subscribe failed");
                    }
                }
                // Queued after the subscriptions, so the broker holds them before agents
                // see us online and release their spooled telemetry.
                if let Err(err) = client
                    .publish(
                        presence_topic.clone(),
                        QoS::AtLeastOnce,
                        true,
                        encode_presence(true),
                    )
                    .await
                {
                    tracing::warn!(%err, "presence not published");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                match decode_device_message(&publish.topic, &publish.payload) {
                    Ok(Some(message)) => {
                        metrics
                            .mqtt_received
                            .with_label_values(&[channel_of(&message)])
                            .inc();
                        if tx.send(message).await.is_err() {
                            return; // the controller is shutting down
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        metrics.mqtt_rejected.with_label_values(&[err.kind()]).inc();
                        tracing::warn!(topic = %publish.topic, %err, "dropped a device message");
                    }
                }
            }
            Ok(_) => {}
            Err(err) => {
                metrics.mqtt_connected.set(0);
                failures = failures.saturating_add(1);
                let delay = backoff(failures);
                tracing::warn!(%err, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn channel_of(message: &DeviceMessage) -> &'static str {
    match message {
        DeviceMessage::Hello(_) => Hello::CHANNEL.as_str(),
        DeviceMessage::Status(_) => DeviceStatus::CHANNEL.as_str(),
        DeviceMessage::State(_) => StateReport::CHANNEL.as_str(),
        DeviceMessage::Telemetry(_) => Telemetry::CHANNEL.as_str(),
    }
}

/// Exponential backoff from 200 ms to 30 s with full jitter, so a fleet of controllers and
/// agents does not reconnect in lock-step after a broker restart.
pub fn backoff(failures: u32) -> Duration {
    let ceiling_ms = 200u64.saturating_mul(1 << failures.min(8)).min(30_000);
    Duration::from_millis(rand::random_range(ceiling_ms / 2..=ceiling_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_or_say_why_not() {
        let a = BrokerAddress::parse("mqtt://127.0.0.1:1884").expect("valid");
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 1884));
        assert_eq!(
            BrokerAddress::parse("mqtt://broker").expect("valid").port,
            1883
        );
        let tls = BrokerAddress::parse("mqtts://broker").expect("valid");
        assert_eq!((tls.port, tls.tls), (8883, true));
        assert!(!BrokerAddress::parse("mqtt://broker").expect("valid").tls);
        assert!(
            BrokerAddress::parse("http://x")
                .expect_err("scheme")
                .contains("mqtts://")
        );
        assert!(
            BrokerAddress::parse("mqtt://x:port")
                .expect_err("port")
                .contains("invalid port")
        );
    }

    #[test]
    fn device_messages_decode_by_topic() {
        let status = DeviceStatus {
            device_id: wire::DeviceId::new("d1").expect("id"),
            online: true,
        };
        let topic = wire::topic(&status.device_id, Channel::Status);
        assert_eq!(
            decode_device_message(&topic, &wire::encode(&status)),
            Ok(Some(DeviceMessage::Status(status.clone())))
        );
        // our own desired documents come back on the wildcard-free topics we do not subscribe to
        assert_eq!(
            decode_device_message("edgefleet/v1/devices/d1/desired", b"{}"),
            Ok(None)
        );
        // a payload on another device's topic is refused
        let other = wire::topic(&wire::DeviceId::new("d2").expect("id"), Channel::Status);
        assert_eq!(
            decode_device_message(&other, &wire::encode(&status))
                .expect_err("mismatch")
                .kind(),
            "device_mismatch"
        );
        assert_eq!(
            decode_device_message("nope", b"{}")
                .expect_err("topic")
                .kind(),
            "bad_topic"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(400));
        for failures in 0..50 {
            assert!(backoff(failures) <= Duration::from_secs(30));
        }
        assert!(backoff(20) >= Duration::from_secs(15));
    }
}
