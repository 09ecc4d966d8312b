//! Simulated devices behind gateways. Each gateway is one MQTT connection that speaks wire
//! protocol v1 for many leaf devices, as IoT edge gateways do: it subscribes to each leaf's
//! own `desired` topic, publishes each leaf's retained `hello` and `status`, answers desired
//! documents with `state` reports (after a simulated download and load time) and sends
//! telemetry windows. MQTT allows one last will per connection, so the last will is the
//! gateway's own `status`: when a gateway dies its leaves are not marked offline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use edgefleet_protocol::llm::LlmWindow;
use edgefleet_protocol::spec::Runtime;
use edgefleet_protocol::wire::{
    self, Channel, Desired, DeviceId, DeviceStatus, ModelPhase, ModelState, ModelWindow, Role,
    StateReport, Telemetry,
};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, SubscribeFilter};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::llm;
use crate::mix::{self, Profile};
use crate::rng::{self, Rng};

/// The deployment key (`namespace/name`) of the bench's ModelDeployment.
pub const DEPLOYMENT: &str = "sim/sim-model";

#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub host: String,
    pub port: u16,
    pub devices: usize,
    pub gateways: usize,
    pub seed: u64,
    pub telemetry_seconds: u32,
    pub requests_per_window: u64,
    /// Simulated download + load time of a new model; 0 acknowledges at once.
    pub download_ms: u64,
    /// Devices announce llama.cpp besides tract (`--llm`).
    pub llm: bool,
}

/// What the fleet observed, shared with the bench driver.
#[derive(Default)]
pub struct Observed {
    /// Devices whose current desired document runs (version, role) of [`DEPLOYMENT`].
    holding: Mutex<HashMap<(String, Role), usize>>,
    pub desired_received: AtomicU64,
    pub state_published: AtomicU64,
    pub telemetry_published: AtomicU64,
    pub announced: AtomicUsize,
    pub telemetry_on: AtomicBool,
    pub errors: AtomicU64,
    /// Set when the bench is over: the broker goes away and that is no error.
    pub finished: AtomicBool,
    /// Model windows sent with an LLM window, and those LLM windows merged.
    pub llm_windows_published: AtomicU64,
    llm_sent: Mutex<LlmWindow>,
}

impl Observed {
    /// Devices whose desired document holds `version` of the bench deployment in `role`.
    pub fn holding(&self, version: &str, role: Role) -> usize {
        self.lock()
            .get(&(version.to_string(), role))
            .copied()
            .unwrap_or(0)
    }

    /// Every LLM window sent so far, merged.
    pub fn llm_sent(&self) -> LlmWindow {
        self.llm_sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn sent_llm(&self, window: &LlmWindow) {
        self.llm_windows_published.fetch_add(1, Ordering::Relaxed);
        self.llm_sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .merge(window);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Role), usize>> {
        self.holding.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn moved(&self, from: Option<&(String, Role)>, to: Option<&(String, Role)>) {
        let mut holding = self.lock();
        if let Some(from) = from
            && let Some(n) = holding.get_mut(from)
        {
            *n = n.saturating_sub(1);
        }
        if let Some(to) = to {
            *holding.entry(to.clone()).or_default() += 1;
        }
    }
}

struct SimModel {
    deployment: String,
    runtime: Runtime,
    variant: String,
    version: String,
    sha256: String,
    role: Role,
    phase: ModelPhase,
    /// Variant, digest and runtime currently answering requests (the previous one while
    /// switching). Variants on llama.cpp report LLM windows.
    serving: Option<(String, String, Runtime)>,
}

struct Leaf {
    id: DeviceId,
    profile: &'static Profile,
    generation: u64,
    models: Vec<SimModel>,
    seq: u64,
}

impl Leaf {
    fn holding(&self) -> Option<(String, Role)> {
        self.models
            .iter()
            .find(|m| m.deployment == DEPLOYMENT)
            .map(|m| (m.version.clone(), m.role))
    }
}

enum Incoming {
    Connected,
    Desired(String, Vec<u8>),
}

/// Starts every gateway; `flood` asks each device for that many telemetry windows at once.
pub fn start(config: &FleetConfig, observed: Arc<Observed>, flood: watch::Receiver<u64>) {
    let per_gateway = config.devices.div_ceil(config.gateways.max(1));
    for g in 0..config.gateways.max(1) {
        let first = g * per_gateway;
        let last = ((g + 1) * per_gateway).min(config.devices);
        if first >= last {
            break;
        }
        let leaves: Vec<Leaf> = (first..last)
            .filter_map(|i| {
                let id = DeviceId::new(mix::device_id(i)).ok()?;
                Some(Leaf {
                    profile: mix::profile_of(config.seed, i),
                    id,
                    generation: 0,
                    models: Vec::new(),
                    seq: 0,
                })
            })
            .collect();
        let gateway_id = format!("sim-gw-{g}");
        let mut options = MqttOptions::new(
            format!("{gateway_id}-{}", std::process::id()),
            &config.host,
            config.port,
        );
        options.set_keep_alive(Duration::from_secs(30));
        options.set_inflight(200);
        options.set_max_packet_size(
            wire::MAX_PAYLOAD_BYTES + 4096,
            wire::MAX_PAYLOAD_BYTES + 4096,
        );
        if let Ok(id) = DeviceId::new(&gateway_id) {
            let offline = wire::encode(&DeviceStatus {
                device_id: id.clone(),
                online: false,
            });
            options.set_last_will(LastWill::new(
                wire::topic(&id, Channel::Status),
                offline,
                QoS::AtLeastOnce,
                true,
            ));
        }
        let (client, eventloop) = AsyncClient::new(options, 10_000);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(poll(eventloop, tx, observed.clone()));
        let gateway = Gateway {
            client,
            leaves,
            first,
            config: config.clone(),
            observed: observed.clone(),
            rng: Rng::new(config.seed ^ (g as u64 + 1)),
            downloads: BinaryHeap::new(),
        };
        tokio::spawn(gateway.run(rx, flood.clone()));
    }
}

async fn poll(
    mut eventloop: rumqttc::EventLoop,
    tx: mpsc::UnboundedSender<Incoming>,
    observed: Arc<Observed>,
) {
    loop {
        let sent = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => tx.send(Incoming::Connected),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                tx.send(Incoming::Desired(p.topic.clone(), p.payload.to_vec()))
            }
            Ok(_) => Ok(()),
            Err(_) if observed.finished.load(Ordering::Relaxed) => return,
            Err(err) => {
                observed.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("edgefleet-sim: gateway connection: {err}; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok(())
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

struct Gateway {
    client: AsyncClient,
    leaves: Vec<Leaf>,
    first: usize,
    config: FleetConfig,
    observed: Arc<Observed>,
    rng: Rng,
    /// (when, leaf, generation) of simulated downloads in progress.
    downloads: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

const TICK: Duration = Duration::from_millis(100);

impl Gateway {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Incoming>,
        mut flood: watch::Receiver<u64>,
    ) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let slots = u64::from(self.config.telemetry_seconds.max(1)) * 10;
        let mut tick: u64 = 0;
        let mut announced = false;
        loop {
            tokio::select! {
                incoming = rx.recv() => match incoming {
                    None => return,
                    Some(Incoming::Connected) => {
                        self.announce().await;
                        if !announced {
                            announced = true;
                            self.observed.announced.fetch_add(self.leaves.len(), Ordering::Relaxed);
                        }
                    }
                    Some(Incoming::Desired(topic, payload)) => self.desired(&topic, &payload).await,
                },
                _ = ticks.tick() => {
                    self.finish_downloads().await;
                    if self.observed.telemetry_on.load(Ordering::Relaxed) {
                        let slot = tick % slots;
                        for index in 0..self.leaves.len() {
                            if ((self.first + index) as u64) % slots == slot {
                                self.send_window(index).await;
                            }
                        }
                    }
                    tick += 1;
                }
                changed = flood.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let windows = *flood.borrow_and_update();
                    for _ in 0..windows {
                        for index in 0..self.leaves.len() {
                            self.send_window(index).await;
                        }
                    }
                }
            }
        }
    }

    /// Subscribes to every leaf's desired topic and (re)publishes its hello and status.
    async fn announce(&mut self) {
        let filters: Vec<SubscribeFilter> = self
            .leaves
            .iter()
            .map(|l| SubscribeFilter::new(wire::topic(&l.id, Channel::Desired), QoS::AtLeastOnce))
            .collect();
        for chunk in filters.chunks(500) {
            self.check(self.client.subscribe_many(chunk.to_vec()).await);
        }
        for index in 0..self.leaves.len() {
            let leaf = &self.leaves[index];
            let hello = mix::hello(
                self.config.seed,
                self.first + index,
                &leaf.id,
                self.config.llm,
            );
            let status = DeviceStatus {
                device_id: leaf.id.clone(),
                online: true,
            };
            let (hello_topic, status_topic) = (
                wire::topic(&leaf.id, Channel::Hello),
                wire::topic(&leaf.id, Channel::Status),
            );
            let r = self
                .client
                .publish(status_topic, QoS::AtLeastOnce, true, wire::encode(&status))
                .await;
            self.check(r);
            let r = self
                .client
                .publish(hello_topic, QoS::AtLeastOnce, true, wire::encode(&hello))
                .await;
            self.check(r);
        }
    }

    fn check(&self, result: Result<(), rumqttc::ClientError>) {
        if let Err(err) = result {
            self.observed.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("edgefleet-sim: publish: {err}");
        }
    }

    fn leaf_index(&self, id: &DeviceId) -> Option<usize> {
        let n: usize = id.as_str().strip_prefix("sim-")?.parse().ok()?;
        n.checked_sub(self.first).filter(|i| *i < self.leaves.len())
    }

    async fn desired(&mut self, topic: &str, payload: &[u8]) {
        let Ok((id, Channel::Desired)) = wire::parse_topic(topic) else {
            return;
        };
        let Some(index) = self.leaf_index(&id) else {
            return;
        };
        let desired: Desired = match wire::decode_from(&id, payload) {
            Ok(d) => d,
            Err(err) => {
                self.observed.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("edgefleet-sim: {id}: bad desired document: {err}");
                return;
            }
        };
        self.observed
            .desired_received
            .fetch_add(1, Ordering::Relaxed);
        let instant = self.config.download_ms == 0;
        let leaf = &mut self.leaves[index];
        if desired.generation <= leaf.generation {
            return; // a retained copy of a document already handled
        }
        let before = leaf.holding();
        let previous = std::mem::take(&mut leaf.models);
        leaf.generation = desired.generation;
        leaf.models = desired
            .assignments
            .iter()
            .map(|a| {
                let old = previous.iter().find(|m| m.deployment == a.deployment);
                let same = old.is_some_and(|m| m.sha256 == a.artifact.sha256);
                let (phase, serving) = if same || instant {
                    (
                        ModelPhase::Ready,
                        Some((a.variant.clone(), a.artifact.sha256.clone(), a.runtime)),
                    )
                } else {
                    (ModelPhase::Downloading, old.and_then(|m| m.serving.clone()))
                };
                SimModel {
                    deployment: a.deployment.clone(),
                    runtime: a.runtime,
                    variant: a.variant.clone(),
                    version: a.model.version.clone(),
                    sha256: a.artifact.sha256.clone(),
                    role: a.role,
                    phase,
                    serving,
                }
            })
            .collect();
        let after = leaf.holding();
        self.observed.moved(before.as_ref(), after.as_ref());
        if leaf
            .models
            .iter()
            .any(|m| m.phase == ModelPhase::Downloading)
        {
            let jitter = self.rng.next_f64() + 0.5; // 0.5x to 1.5x
            let delay =
                (self.config.download_ms as f64 * jitter * leaf.profile.slowness.sqrt()) as u64;
            self.downloads.push(Reverse((
                Instant::now() + Duration::from_millis(delay),
                index,
                desired.generation,
            )));
        }
        self.report(index).await;
    }

    async fn finish_downloads(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, index, generation))) = self.downloads.peek().copied() {
            if at > now {
                break;
            }
            self.downloads.pop();
            let leaf = &mut self.leaves[index];
            if leaf.generation != generation {
                continue; // superseded by a newer document
            }
            for model in &mut leaf.models {
                if model.phase == ModelPhase::Downloading {
                    model.phase = ModelPhase::Ready;
                    model.serving =
                        Some((model.variant.clone(), model.sha256.clone(), model.runtime));
                }
            }
            self.report(index).await;
        }
    }

    async fn report(&mut self, index: usize) {
        let leaf = &self.leaves[index];
        let report = StateReport {
            device_id: leaf.id.clone(),
            generation: leaf.generation,
            models: leaf
                .models
                .iter()
                .map(|m| ModelState {
                    deployment: m.deployment.clone(),
                    variant: m.variant.clone(),
                    version: m.version.clone(),
                    sha256: m.sha256.clone(),
                    phase: m.phase,
                    bytes_done: None,
                    bytes_total: None,
                    reason: None,
                    serving_sha256: m.serving.as_ref().map(|(_, sha, _)| sha.clone()),
                    fetched: None,
                })
                .collect(),
        };
        let topic = wire::topic(&leaf.id, Channel::State);
        let r = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, wire::encode(&report))
            .await;
        self.check(r);
        self.observed
            .state_published
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One telemetry window for a device that serves something.
    async fn send_window(&mut self, index: usize) {
        let window_seconds = self.config.telemetry_seconds.max(1);
        let requests = self.config.requests_per_window;
        let leaf = &mut self.leaves[index];
        let serving: Vec<(String, String, Runtime)> = leaf
            .models
            .iter()
            .filter_map(|m| {
                let (variant, _, runtime) = m.serving.as_ref()?;
                Some((m.deployment.clone(), variant.clone(), *runtime))
            })
            .collect();
        if serving.is_empty() {
            return;
        }
        leaf.seq += 1;
        let profile = leaf.profile;
        let mut models = Vec::with_capacity(serving.len());
        for (deployment, variant, runtime) in serving {
            let (latency, errors, llm) = if runtime == Runtime::Llamacpp {
                let (latency, refused, window) = llm::window(&mut self.rng, requests);
                self.observed.sent_llm(&window);
                (latency, refused, Some(window))
            } else {
                let (median_ms, sigma) = mix::variant_latency(&variant, profile);
                let (latency, errors) =
                    rng::window(&mut self.rng, requests, median_ms, sigma, 0.001);
                (latency, errors, None)
            };
            models.push(ModelWindow {
                deployment,
                variant,
                requests,
                errors,
                latency,
                offload: None,
                llm,
            });
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let leaf = &self.leaves[index];
        let window = Telemetry {
            device_id: leaf.id.clone(),
            seq: leaf.seq,
            window_start_ms: now_ms - i64::from(window_seconds) * 1000,
            window_seconds,
            models,
        };
        let topic = wire::topic(&leaf.id, Channel::Telemetry);
        let r = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, wire::encode(&window))
            .await;
        self.check(r);
        self.observed
            .telemetry_published
            .fetch_add(1, Ordering::Relaxed);
    }
}
