//! The MQTT link: one task owns the rumqttc event loop, announces the device, forwards desired
//! documents, publishes state, and cuts, spools and forwards telemetry windows.
//!
//! Telemetry is forwarded only while a controller replica says it is online (its retained
//! presence, see `edgefleet_protocol::presence`): a broker acks a publish nobody is subscribed to,
//! so a broker restarted without its sessions would otherwise swallow the spool.
//! Telemetry leaves the spool only on the broker's PubAck. rumqttc reports a QoS 1 publish's
//! packet id as an `Outgoing::Publish` event, in the order publishes were queued; since only this
//! task queues publishes, and only while connected, a FIFO of tags maps packet ids to seqs.
//!
//! The client reads packets up to `wire::MAX_PACKET_BYTES`. A broker that forwards a larger
//! one (an oversized *retained* desired document comes again on every subscribe) breaks the
//! connection once; after that the link reads packets of any size, and the supervisor drops
//! the oversized document (`edgefleet_agent_desired_rejected_total{reason="too_large"}`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use edgefleet_protocol::presence;
use edgefleet_protocol::wire::{self, Channel, DeviceId, DeviceStatus, Hello, StateReport};

use edgefleet_mqtt::{Backoff, TlsSettingNames};

use crate::config::{Config, TlsConfig};
use crate::link::spool::Spool;
use crate::link::window::{SeqCounter, WindowStats, now_ms};
use crate::metrics::Metrics;

/// Telemetry windows in flight (sent, not yet acked) at once.
const MAX_TELEMETRY_INFLIGHT: usize = 8;

pub enum Command {
    State(StateReport),
    /// Spools the current window, publishes offline and disconnects.
    Shutdown(oneshot::Sender<()>),
}

pub struct Link {
    device: DeviceId,
    client: AsyncClient,
    hello: Arc<dyn Fn() -> Hello + Send + Sync>,
    desired_tx: mpsc::Sender<Bytes>,
    metrics: Arc<Metrics>,
    stats: Arc<WindowStats>,
    spool: Spool,
    seq: SeqCounter,
    window_seconds: u32,
    connected: bool,
    /// One entry per QoS 1 publish queued on this connection: the telemetry seq, if any.
    fifo: VecDeque<Option<u64>>,
    pkid_to_seq: HashMap<u16, u64>,
    sent: BTreeSet<u64>,
    last_state: Option<StateReport>,
    state_pending: bool,
    /// Controller replicas whose retained presence says online on this connection.
    controllers_online: BTreeSet<String>,
}

enum Step {
    Event(Result<Event, ConnectionError>),
    Retry,
    Shutdown(oneshot::Sender<()>),
}

pub fn mqtt_options(config: &Config) -> anyhow::Result<MqttOptions> {
    let broker = &config.broker;
    let mut o = MqttOptions::new(config.device_id.as_str(), broker.host.clone(), broker.port);
    o.set_keep_alive(config.keep_alive);
    o.set_clean_session(true);
    o.set_max_packet_size(wire::MAX_PACKET_BYTES, wire::MAX_PACKET_BYTES);
    let offline = wire::encode(&DeviceStatus {
        device_id: config.device_id.clone(),
        online: false,
    });
    o.set_last_will(LastWill::new(
        wire::topic(&config.device_id, Channel::Status),
        offline,
        QoS::AtLeastOnce,
        true,
    ));
    if broker.tls {
        let tls = tls_client_config(&config.tls)?;
        o.set_transport(edgefleet_mqtt::transport(Arc::new(tls)));
    }
    Ok(o)
}

const TLS_SETTING_NAMES: TlsSettingNames = TlsSettingNames {
    ca_file: "config field `tls.ca_file`",
    cert_file: "config field `tls.cert_file`",
    key_file: "config field `tls.key_file`",
};

/// The TLS client for `mqtts://`, errors naming the config field at fault.
pub fn tls_client_config(tls: &TlsConfig) -> anyhow::Result<rustls::ClientConfig> {
    let identity = tls.cert_file.as_deref().zip(tls.key_file.as_deref());
    edgefleet_mqtt::client_config(edgefleet_mqtt::TlsFiles {
        ca_file: tls.ca_file.as_deref(),
        identity,
    })
    .map_err(|err| anyhow::anyhow!(err.for_setting(&TLS_SETTING_NAMES)))
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: Config,
    hello: Arc<dyn Fn() -> Hello + Send + Sync>,
    desired_tx: mpsc::Sender<Bytes>,
    mut commands: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    stats: Arc<WindowStats>,
    spool: Spool,
    seq: SeqCounter,
) -> anyhow::Result<()> {
    let options = mqtt_options(&config)?;
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    eventloop.network_options.set_connection_timeout(5);
    metrics.spool_windows.set(spool.len() as i64);
    let mut link = Link {
        device: config.device_id.clone(),
        client,
        hello,
        desired_tx,
        metrics,
        stats,
        spool,
        seq,
        window_seconds: config
            .telemetry_interval
            .as_secs()
            .clamp(1, u64::from(u32::MAX)) as u32,
        connected: false,
        fifo: VecDeque::new(),
        pkid_to_seq: HashMap::new(),
        sent: BTreeSet::new(),
        last_state: None,
        state_pending: false,
        controllers_online: BTreeSet::new(),
    };
    let mut backoff = Backoff::new(
        Duration::from_millis(config.backoff.initial_ms),
        Duration::from_millis(config.backoff.max_ms),
    );
    let mut tick = tokio::time::interval_at(
        Instant::now() + config.telemetry_interval,
        config.telemetry_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_at: Option<Instant> = None;

    loop {
        let step = if let Some(at) = retry_at {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => break Step::Retry,
                    _ = tick.tick() => link.on_tick(),
                    cmd = commands.recv() => match cmd {
                        Some(Command::Shutdown(done)) => break Step::Shutdown(done),
                        Some(Command::State(report)) => link.on_state(report),
                        None => return Ok(()),
                    },
                }
            }
        } else {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    biased;
                    event = &mut poll => break Step::Event(event),
                    _ = tick.tick() => link.on_tick(),
                    cmd = commands.recv() => match cmd {
                        Some(Command::Shutdown(done)) => break Step::Shutdown(done),
                        Some(Command::State(report)) => link.on_state(report),
                        None => return Ok(()),
                    },
                }
            }
        };
        match step {
            Step::Retry => retry_at = None,
            Step::Shutdown(done) => {
                link.on_tick();
                link.shutdown(&mut eventloop).await;
                let _ = done.send(());
                return Ok(());
            }
            Step::Event(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                // Anything buffered belongs to the previous connection (clean session).
                eventloop.state.events.clear();
                eventloop.pending.clear();
                backoff.reset();
                link.on_connect();
            }
            Step::Event(Ok(event)) => link.on_event(event),
            Step::Event(Err(e)) => {
                eventloop.state.events.clear();
                if is_oversized_packet(&e) {
                    link.metrics
                        .desired_rejected
                        .with_label_values(&["too_large"])
                        .inc();
                    eventloop
                        .mqtt_options
                        .set_max_packet_size(MQTT_MAX_PACKET_BYTES, wire::MAX_PACKET_BYTES);
                    tracing::warn!(error = %e, max_packet_bytes = wire::MAX_PACKET_BYTES,
                        "the broker sent a packet over this client's limit; reading packets of \
                         any size from now on (set the broker's packet limit to at most \
                         max_packet_bytes)");
                }
                let delay = backoff.next_delay(fastrand::f64());
                if link.connected {
                    tracing::warn!(error = %e, ?delay, "lost the broker connection; reconnecting");
                } else {
                    tracing::warn!(error = %e, ?delay, "cannot reach the broker; retrying");
                }
                link.on_disconnect();
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
}

/// MQTT's own ceiling on a packet: the read limit once a broker has sent an oversized one.
const MQTT_MAX_PACKET_BYTES: usize = 268_435_460;

/// True when the connection broke because the broker sent a packet over our read limit.
pub fn is_oversized_packet(err: &ConnectionError) -> bool {
    matches!(
        err,
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

impl Link {
    fn topic(&self, channel: Channel) -> String {
        wire::topic(&self.device, channel)
    }

    fn publish(
        &mut self,
        channel: Channel,
        retain: bool,
        payload: Vec<u8>,
        tag: Option<u64>,
    ) -> bool {
        let topic = self.topic(channel);
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                self.fifo.push_back(tag);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "publish queue full; will retry");
                false
            }
        }
    }

    fn on_connect(&mut self) {
        tracing::info!(device = %self.device, "connected to the broker");
        self.connected = true;
        self.metrics.mqtt_connected.set(1);
        self.metrics.mqtt_reconnects.inc();
        self.fifo.clear();
        self.pkid_to_seq.clear();
        self.sent.clear();
        let online = wire::encode(&DeviceStatus {
            device_id: self.device.clone(),
            online: true,
        });
        self.publish(Channel::Status, true, online, None);
        let hello = wire::encode(&(self.hello)());
        self.publish(Channel::Hello, true, hello, None);
        self.controllers_online.clear();
        self.metrics.controllers_online.set(0);
        for filter in [
            self.topic(Channel::Desired),
            presence::presence_subscription(),
        ] {
            if let Err(e) = self.client.try_subscribe(&filter, QoS::AtLeastOnce) {
                tracing::error!(error = %e, filter, "cannot subscribe");
            }
        }
        self.state_pending = self.last_state.is_some();
        self.flush_state();
        self.pump();
    }

    fn on_disconnect(&mut self) {
        self.connected = false;
        self.metrics.mqtt_connected.set(0);
        self.fifo.clear();
        self.pkid_to_seq.clear();
        self.sent.clear();
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::Publish(p)) => self.on_publish(p),
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if let Some(Some(seq)) = self.fifo.pop_front() {
                    self.pkid_to_seq.insert(pkid, seq);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = self.pkid_to_seq.remove(&ack.pkid) {
                    self.sent.remove(&seq);
                    if let Err(e) = self.spool.ack(seq) {
                        tracing::error!(seq, error = %e, "cannot remove an acked window from the spool");
                    }
                    self.metrics.telemetry_acked.inc();
                    self.metrics.spool_windows.set(self.spool.len() as i64);
                }
                self.flush_state();
                self.pump();
            }
            _ => {}
        }
    }

    fn on_publish(&mut self, p: rumqttc::Publish) {
        if let Some(replica) = presence::replica_of(&p.topic) {
            self.on_presence(replica.to_string(), &p.payload);
            return;
        }
        if p.topic != self.topic(Channel::Desired) {
            return;
        }
        if self.desired_tx.try_send(p.payload).is_err() {
            tracing::warn!("desired queue full; dropping a desired message");
        }
    }

    fn on_presence(&mut self, replica: String, payload: &[u8]) {
        match presence::decode_presence(payload) {
            Ok(Some(true)) => {
                if self.controllers_online.insert(replica) {
                    tracing::info!("a controller is online; forwarding telemetry");
                }
            }
            Ok(Some(false) | None) => {
                self.controllers_online.remove(&replica);
            }
            Err(e) => {
                tracing::warn!(replica, error = %e, "ignored a malformed controller presence")
            }
        }
        self.metrics
            .controllers_online
            .set(self.controllers_online.len() as i64);
        self.pump();
    }

    fn on_state(&mut self, report: StateReport) {
        self.last_state = Some(report);
        self.state_pending = true;
        self.flush_state();
    }

    fn flush_state(&mut self) {
        if !self.connected || !self.state_pending {
            return;
        }
        if let Some(report) = &self.last_state {
            let payload = wire::encode(report);
            if self.publish(Channel::State, false, payload, None) {
                self.state_pending = false;
            }
        }
    }

    /// Cuts the current window into the spool, then forwards what the broker may take.
    fn on_tick(&mut self) {
        let seq = match self.seq.take() {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!(error = %e, "cannot persist the telemetry sequence number");
                return;
            }
        };
        let window = self
            .stats
            .cut(&self.device, seq, now_ms(), self.window_seconds);
        match self.spool.push(seq, &wire::encode(&window)) {
            Ok(dropped) => {
                if dropped > 0 {
                    tracing::warn!(dropped, "telemetry spool full; dropped the oldest windows");
                    self.metrics.spool_dropped.inc_by(dropped);
                }
            }
            Err(e) => tracing::error!(seq, error = %e, "cannot spool a telemetry window"),
        }
        self.metrics.spool_windows.set(self.spool.len() as i64);
        self.pump();
    }

    /// Sends spooled windows in seq order, oldest first, up to the in-flight limit.
    fn pump(&mut self) {
        if !self.connected || self.controllers_online.is_empty() {
            return;
        }
        let budget = MAX_TELEMETRY_INFLIGHT.saturating_sub(self.sent.len());
        let next: Vec<u64> = self
            .spool
            .seqs()
            .filter(|s| !self.sent.contains(s))
            .take(budget)
            .collect();
        for seq in next {
            let payload = match self.spool.read(seq) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(seq, error = %e, "unreadable spooled window; dropping it");
                    let _ = self.spool.ack(seq);
                    continue;
                }
            };
            if !self.publish(Channel::Telemetry, false, payload, Some(seq)) {
                break;
            }
            self.sent.insert(seq);
        }
    }

    async fn shutdown(&mut self, eventloop: &mut EventLoop) {
        if !self.connected {
            return;
        }
        let offline = wire::encode(&DeviceStatus {
            device_id: self.device.clone(),
            online: false,
        });
        self.publish(Channel::Status, true, offline, None);
        let _ = self.client.try_disconnect();
        // Nothing more is queued: what is unacked stays spooled for the next start.
        self.connected = false;
        let drain = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(event) => self.on_event(event),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
        tracing::info!("disconnected from the broker");
    }
}
