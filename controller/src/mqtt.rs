//! The controller's MQTT link: subscribes to every device's hello/status/state/telemetry,
//! decodes them (bad payloads are counted and dropped, never fatal) and publishes retained
//! desired documents. Reconnects by itself with jittered backoff.
//!
//! MQTT 5, so the broker knows how large a packet the controller reads (the CONNECT property
//! Maximum Packet Size) and drops larger messages for it instead of sending them: with MQTT
//! 3.1.1, one oversized message in the persistent session (or retained on a device topic)
//! broke the connection on every redelivery. A broker that ignores the property, or stops
//! delivering after dropping such messages (Mosquitto 2.0.11: see `probe`), gets one
//! reconnect: the link then reads packets of any size and drops the oversized ones (counted
//! as `too_large`).

mod probe;

use std::time::{Duration, Instant};

use edgefleet_mqtt::{Backoff, BrokerUrl};
use edgefleet_protocol::presence::{encode_presence, presence_topic};
use edgefleet_protocol::wire::{
    self, Channel, DeviceStatus, Hello, StateReport, Telemetry, WireError, WireMessage,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::probe::{LoopbackProbe, ProbeAction};
use crate::http::LinkHealthHandle;
use crate::metrics::Metrics;
use crate::reconcile::{PublishError, Publisher};
use edgefleet_core::desired::EncodedDesired;
use futures::future::BoxFuture;

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

/// Where and how the controller connects: address, TLS client (for `mqtts://`) and optional
/// username/password (Mosquitto password file or an auth plugin).
#[derive(Clone)]
pub struct BrokerConnection {
    pub address: BrokerUrl,
    pub tls: Option<std::sync::Arc<edgefleet_mqtt::rustls::ClientConfig>>,
    pub credentials: Option<(String, String)>,
}

impl BrokerConnection {
    pub fn plain(address: BrokerUrl) -> Self {
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
    pub async fn publish_desired(
        &self,
        document: &EncodedDesired,
    ) -> Result<(), rumqttc::v5::ClientError> {
        let topic = wire::topic(&document.desired.device_id, Channel::Desired);
        self.client
            .publish(topic, QoS::AtLeastOnce, true, document.payload.clone())
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

impl Publisher for MqttLink {
    fn publish<'a>(
        &'a self,
        document: &'a EncodedDesired,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            self.publish_desired(document)
                .await
                .map_err(|e| PublishError(e.to_string()))
        })
    }
}

/// Connects and returns the link plus the stream of decoded device messages.
/// `client_id` should be stable per replica: with a persistent session the broker keeps
/// QoS 1 telemetry for the controller while it restarts.
/// `telemetry_share_group`: replicas that name the same group split telemetry between them
/// (an MQTT 5 shared subscription); without one this replica receives every window.
pub fn connect(
    broker: &BrokerConnection,
    client_id: &str,
    telemetry_share_group: Option<&str>,
    metrics: Metrics,
    health: LinkHealthHandle,
    channel_capacity: usize,
) -> (MqttLink, mpsc::Receiver<DeviceMessage>, JoinHandle<()>) {
    let address = &broker.address;
    let mut options = MqttOptions::new(client_id, &address.host, address.port);
    if let Some(tls) = &broker.tls {
        options.set_transport(edgefleet_mqtt::transport(tls.clone()));
    }
    if let Some((username, password)) = &broker.credentials {
        options.set_credentials(username, password);
    }
    options.set_keep_alive(Duration::from_secs(15));
    if telemetry_share_group.is_some() {
        // The session ends with the connection. Mosquitto 2.0 keeps handing a shared
        // subscription's messages, in turn, to a member whose persistent session outlives it
        // (a SIGKILLed replica's queue took every other window); the group's live members
        // must get them all.
        options.set_clean_start(true);
        options.set_session_expiry_interval(None);
    } else {
        // A persistent session in MQTT 5 needs both: no clean start and an expiry interval.
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(SESSION_EXPIRY_SECONDS));
    }
    let presence = presence_topic(client_id);
    options.set_last_will(LastWill::new(
        presence.clone(),
        encode_presence(false),
        QoS::AtLeastOnce,
        true,
        None,
    ));
    options.set_max_packet_size(Some(wire::MAX_PACKET_BYTES as u32));
    options.set_outgoing_inflight_upper_limit(1000);
    let (client, eventloop) = AsyncClient::new(options, 4096);
    let (tx, rx) = mpsc::channel(channel_capacity);
    let (fresh_tx, fresh_sessions) = watch::channel(0u64);
    let link = MqttLink {
        client: client.clone(),
        metrics: metrics.clone(),
        fresh_sessions,
        presence_topic: presence.clone(),
    };
    let topics = Topics {
        subscriptions: subscriptions(telemetry_share_group, &presence),
        presence,
    };
    let task = tokio::spawn(run_event_loop(
        client, eventloop, tx, fresh_tx, metrics, health, topics,
    ));
    (link, rx, task)
}

/// This replica's presence topic and the filters it subscribes to.
struct Topics {
    presence: String,
    subscriptions: Vec<String>,
}

/// The filters the controller subscribes to: every device's hello, status and state (each
/// replica keeps its own inventory), telemetry (shared by a group's members when it has one),
/// and its own loopback probe.
fn subscriptions(telemetry_share_group: Option<&str>, presence_topic: &str) -> Vec<String> {
    let telemetry = wire::subscription(Channel::Telemetry);
    let telemetry = match telemetry_share_group {
        Some(group) => format!("$share/{group}/{telemetry}"),
        None => telemetry,
    };
    [Channel::Hello, Channel::Status, Channel::State]
        .map(wire::subscription)
        .into_iter()
        .chain([telemetry, format!("{presence_topic}/probe")])
        .collect()
}

/// Why a share group name cannot be used, if it cannot (MQTT 5: no `/`, `+` or `#`).
pub fn invalid_share_group(group: &str) -> Option<&'static str> {
    if group.is_empty() {
        Some("it is empty")
    } else if group.contains(['/', '+', '#']) {
        Some("it contains '/', '+' or '#', which a share name may not")
    } else {
        None
    }
}

/// How long the broker keeps the controller's session (and queues its QoS 1 telemetry) while
/// it is away: long enough for any restart or upgrade, short enough that a removed replica's
/// queue does not grow forever.
const SESSION_EXPIRY_SECONDS: u32 = 24 * 60 * 60;

/// How often the loopback probe goes out, and how long it may take to come back.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// MQTT's own ceiling on a packet (the largest Remaining Length plus header): the read limit
/// once a broker has shown it ignores our Maximum Packet Size.
const MQTT_MAX_PACKET_BYTES: u32 = 268_435_460;

/// True when the connection broke because the broker sent a packet over our read limit.
pub fn is_oversized_packet(err: &ConnectionError) -> bool {
    matches!(
        err,
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }
        ))
    )
}

async fn run_event_loop(
    client: AsyncClient,
    mut eventloop: EventLoop,
    tx: mpsc::Sender<DeviceMessage>,
    fresh_sessions: watch::Sender<u64>,
    metrics: Metrics,
    health: LinkHealthHandle,
    topics: Topics,
) {
    let Topics {
        presence: presence_topic,
        subscriptions,
    } = topics;
    let mut backoff = reconnect_backoff();
    let probe_topic = format!("{presence_topic}/probe");
    let mut probe = LoopbackProbe::new(PROBE_TIMEOUT);
    let mut probe_tick = tokio::time::interval(PROBE_INTERVAL);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    event = &mut poll => break Some(event),
                    _ = probe_tick.tick() => match probe.on_tick(Instant::now()) {
                        ProbeAction::Send(payload) => {
                            if let Err(err) = client.try_publish(
                                probe_topic.clone(),
                                QoS::AtLeastOnce,
                                false,
                                payload,
                            ) {
                                tracing::debug!(%err, "probe not queued");
                            }
                        }
                        ProbeAction::Wait => {}
                        ProbeAction::Stalled => break None,
                    },
                }
            }
        };
        let Some(event) = event else {
            // The broker holds our session but delivers nothing: reconnect (session kept).
            metrics.mqtt_connected.set(0);
            metrics.mqtt_stalls.inc();
            health.update(|h| h.lost(Instant::now()));
            probe.lost();
            tracing::warn!(
                timeout_s = PROBE_TIMEOUT.as_secs(),
                "the MQTT broker stopped delivering to this client (the loopback probe did \
                 not come back; Mosquitto 2.0.11 does so after 20 QoS 1 messages over our \
                 Maximum Packet Size); reconnecting, reading packets of any size from now on"
            );
            read_any_size(&mut eventloop);
            eventloop.clean();
            continue;
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                metrics.mqtt_connected.set(1);
                metrics.mqtt_connections.inc();
                health.update(|h| h.connected(Instant::now()));
                probe.connected();
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the MQTT broker"
                );
                if !ack.session_present {
                    fresh_sessions.send_modify(|n| *n = n.wrapping_add(1));
                }
                for filter in &subscriptions {
                    if let Err(err) = client.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                        tracing::warn!(%err, filter, "subscribe failed");
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
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == probe_topic => {
                probe.echoed(&publish.payload);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                probe.delivered(Instant::now());
                let topic = String::from_utf8_lossy(&publish.topic);
                match decode_device_message(&topic, &publish.payload) {
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
                        tracing::warn!(%topic, %err, "dropped a device message");
                    }
                }
            }
            Ok(_) => {}
            Err(err) => {
                metrics.mqtt_connected.set(0);
                health.update(|h| h.lost(Instant::now()));
                probe.lost();
                if is_oversized_packet(&err) {
                    // The broker ignored our Maximum Packet Size (MQTT 3.1.1-only brokers,
                    // rumqttd): it would send the same message on every reconnect. Read
                    // anything from now on and drop what is too large after reading it.
                    metrics
                        .mqtt_rejected
                        .with_label_values(&["too_large"])
                        .inc();
                    read_any_size(&mut eventloop);
                    tracing::warn!(
                        %err,
                        max_packet_bytes = wire::MAX_PACKET_BYTES,
                        "the MQTT broker sent a packet over the Maximum Packet Size this client \
                         announced; reading packets of any size from now on. Set the broker's \
                         packet limit (Mosquitto: max_packet_size) to at most max_packet_bytes"
                    );
                }
                let delay = backoff.next_random_delay();
                tracing::warn!(%err, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The fallback when the broker cannot be trusted to drop what is over our Maximum Packet
/// Size (it sent one anyway, or stalled on dropping them): from the next connection on, read
/// packets of any size; the decoder drops the oversized ones (`too_large`).
fn read_any_size(eventloop: &mut EventLoop) {
    eventloop
        .options
        .set_max_packet_size(Some(MQTT_MAX_PACKET_BYTES));
}

fn channel_of(message: &DeviceMessage) -> &'static str {
    match message {
        DeviceMessage::Hello(_) => Hello::CHANNEL.as_str(),
        DeviceMessage::Status(_) => DeviceStatus::CHANNEL.as_str(),
        DeviceMessage::State(_) => StateReport::CHANNEL.as_str(),
        DeviceMessage::Telemetry(_) => Telemetry::CHANNEL.as_str(),
    }
}

/// Reconnect delays: 400 ms doubling up to 30 s, each jittered down to half.
fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(400), Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
