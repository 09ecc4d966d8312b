//! Agent test support on top of the shared harness (`edgefleet_e2e`: ports, models, Mosquitto,
//! the artifact server, PKI): onnxruntime references of the real models, desired documents,
//! MQTT observers and agent processes started from this crate's binary.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

pub use edgefleet_e2e::pki::Pki;
pub use edgefleet_e2e::{
    ArtifactServer, Broker, Proc, free_port, models_dir, onnxruntime_lib, port_open,
};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::mpsc;

use edgefleet_protocol::presence;
use edgefleet_protocol::wire::{self, Assignment, Channel, Desired, DeviceId, Role};
use edgefleet_protocol::{
    Artifact, ModelRef, Precision, Runtime, SelfTest, SelfTestInput, TensorDatatype,
};

// ------------------------------------------------------------------ models

pub fn model_bytes(name: &str) -> Vec<u8> {
    std::fs::read(models_dir().join(name)).unwrap()
}

#[derive(Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    pub model: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub cases: Vec<Case>,
}

#[derive(Deserialize, Clone, Debug)]
pub struct Case {
    pub inputs: Vec<RefInput>,
    pub outputs: Vec<RefOutput>,
}

#[derive(Deserialize, Clone, Debug)]
pub struct RefInput {
    pub name: String,
    pub shape: Vec<usize>,
    pub generator: Generator,
}

#[derive(Deserialize, Clone, Debug)]
pub struct Generator {
    pub a: f64,
    pub b: f64,
    pub scale: f64,
}

#[derive(Deserialize, Clone, Debug)]
pub struct RefOutput {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl RefInput {
    /// `float32(scale * sin(a * i + b))`, exactly as reference_outputs.py generates it.
    pub fn values(&self) -> Vec<f32> {
        let n: usize = self.shape.iter().product();
        (0..n)
            .map(|i| {
                (self.generator.scale * (self.generator.a * i as f64 + self.generator.b).sin())
                    as f32
            })
            .collect()
    }
}

pub fn reference(model: &str) -> Reference {
    let path = models_dir().join(format!("{model}.reference.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub fn assert_close(name: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: {} values, reference has {}",
        got.len(),
        want.len()
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{name}[{i}] = {g}, onnxruntime reference {w} (tolerance {tol})"
        );
    }
}

/// The self-test a deployment of one of the test models carries.
pub fn self_test(model: &str) -> SelfTest {
    let r = reference(model);
    SelfTest {
        inputs: r.cases[0]
            .inputs
            .iter()
            .map(|i| SelfTestInput {
                name: i.name.clone(),
                shape: i.shape.iter().map(|d| *d as u64).collect(),
                datatype: TensorDatatype::Fp32,
                fill: Some(0.1),
                data: None,
            })
            .collect(),
    }
}

pub fn assignment(
    deployment: &str,
    model: &str,
    variant: &str,
    uri: &str,
    bytes: &[u8],
) -> Assignment {
    Assignment {
        deployment: deployment.into(),
        model: ModelRef {
            name: model.into(),
            version: "1.0.0".into(),
        },
        variant: variant.into(),
        precision: Precision::Fp32,
        runtime: Runtime::Tract,
        artifact: Artifact {
            uri: uri.into(),
            sha256: edgefleet_agent::install::pull::sha256_hex(bytes),
            size_bytes: bytes.len() as u64,
            signature: None,
        },
        role: Role::Stable,
        self_test: None,
        offload: None,
        llm: None,
        site_cache: None,
    }
}

pub fn desired(device: &str, generation: u64, assignments: Vec<Assignment>) -> Vec<u8> {
    wire::encode(&Desired {
        device_id: DeviceId::new(device).unwrap(),
        generation,
        assignments,
    })
}

pub fn unique_device(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}

// ------------------------------------------------------------------ brokers

/// The shared broker at 127.0.0.1:1883 when it runs, else a private one.
pub enum TestBroker {
    Shared,
    Private(Broker),
}

impl TestBroker {
    pub fn get() -> TestBroker {
        if port_open(1883) {
            TestBroker::Shared
        } else {
            TestBroker::Private(Broker::start())
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            TestBroker::Shared => 1883,
            TestBroker::Private(b) => b.port,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port())
    }
}

/// An MQTT client that records every message on a device's topics.
pub struct Observer {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Bytes, bool)>,
    pub seen: Vec<(String, Bytes, bool)>,
    presence: String,
}

impl Observer {
    /// An observer that is also an online controller.
    pub async fn connect(port: u16, device: &str) -> Observer {
        let observer = Self::connect_without_presence(port, device).await;
        observer.announce(true).await;
        observer
    }

    /// Says whether the controller this observer plays is online (retained).
    pub async fn announce(&self, online: bool) {
        self.client
            .publish(
                self.presence.clone(),
                QoS::AtLeastOnce,
                true,
                presence::encode_presence(online),
            )
            .await
            .unwrap();
    }

    /// An observer no agent takes for a controller until it [`Observer::announce`]s.
    pub async fn connect_without_presence(port: u16, device: &str) -> Observer {
        let id = unique_device("observer");
        // The observer plays the controller: agents forward telemetry only while one is
        // online. An empty retained will clears that presence if the test dies.
        let presence = presence::presence_topic(&id);
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_last_will(LastWill::new(
            presence.clone(),
            Vec::new(),
            QoS::AtLeastOnce,
            true,
        ));
        o.set_keep_alive(Duration::from_secs(10));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.clone(), p.retain));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let topic = format!("{}/{device}/#", wire::TOPIC_PREFIX);
        client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), sub_rx.recv())
            .await
            .expect("observer subscribed");
        Observer {
            client,
            rx,
            seen: Vec::new(),
            presence,
        }
    }

    /// Waits for a message on `channel` satisfying `pred`; returns its payload.
    pub async fn wait_for(
        &mut self,
        channel: Channel,
        timeout: Duration,
        mut pred: impl FnMut(&[u8]) -> bool,
    ) -> Bytes {
        let suffix = format!("/{}", channel.as_str());
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some((_, p, _)) = self
            .seen
            .iter()
            .find(|(t, p, _)| t.ends_with(&suffix) && pred(p))
        {
            return p.clone();
        }
        loop {
            let msg = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out waiting for a matching {} message; saw {:?}",
                        channel.as_str(),
                        self.seen
                            .iter()
                            .map(|(t, p, _)| format!("{t}: {}", String::from_utf8_lossy(p)))
                            .collect::<Vec<_>>()
                    )
                })
                .expect("observer running");
            self.seen.push(msg.clone());
            if msg.0.ends_with(&suffix) && pred(&msg.1) {
                return msg.1;
            }
        }
    }

    /// Drains what arrived so far into `seen`.
    pub fn drain(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            self.seen.push(msg);
        }
    }

    pub async fn publish_desired(&self, device: &str, payload: Vec<u8>) {
        let topic = wire::topic(&DeviceId::new(device).unwrap(), Channel::Desired);
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
    }

    /// Clears the retained desired message (and the observer's presence) so the shared
    /// broker does not keep them.
    pub async fn clear_retained(&self, device: &str) {
        let mut topics: Vec<String> = [Channel::Desired, Channel::Hello, Channel::Status]
            .into_iter()
            .map(|channel| wire::topic(&DeviceId::new(device).unwrap(), channel))
            .collect();
        topics.push(self.presence.clone());
        for topic in topics {
            let _ = self
                .client
                .publish(topic, QoS::AtLeastOnce, true, Vec::new())
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------------ agent process

pub struct AgentProcess {
    pub proc: Proc,
    pub store: PathBuf,
    pub addr: SocketAddr,
}

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_edgefleet-agent")
}

impl AgentProcess {
    /// This crate's agent on `store`, its log appended to `<store>.log`.
    pub fn spawn(store: &Path, args: &[&str]) -> AgentProcess {
        std::fs::create_dir_all(store).unwrap();
        let _ = std::fs::remove_file(store.join("listen-addr"));
        let mut command = Command::new(agent_bin());
        command
            .arg("--store")
            .arg(store)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(args)
            .env("EDGEFLEET_AGENT_LOG", "info,edgefleet_agent=debug");
        let proc = Proc::spawn_appending("agent", &mut command, &store.with_extension("log"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(s) = std::fs::read_to_string(store.join("listen-addr"))
                && let Ok(addr) = s.trim().parse()
            {
                break addr;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not start; log:\n{}",
                std::fs::read_to_string(&proc.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        AgentProcess {
            proc,
            store: store.to_path_buf(),
            addr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        if self
            .proc
            .sigterm_exit_time(Duration::from_secs(20))
            .is_err()
        {
            panic!("agent ignored SIGTERM; log:\n{}", self.log());
        }
        self.proc.child.wait().unwrap()
    }
}

/// This crate's agent as `device` on `broker`, with `extra` flags.
pub fn start(store: &Path, device: &str, broker: &str, extra: &[&str]) -> AgentProcess {
    let mut args = vec!["--device-id", device, "--broker", broker];
    args.extend_from_slice(extra);
    AgentProcess::spawn(store, &args)
}

/// Polls `GET /v2/models/{name}` until it reports `sha256`.
pub async fn wait_serving(
    agent: &AgentProcess,
    name: &str,
    sha256: &str,
    timeout: Duration,
) -> serde_json::Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client
            .get(agent.url(&format!("/v2/models/{name}")))
            .send()
            .await
            && r.status().is_success()
        {
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            if v["sha256"] == sha256 {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "model {name} with sha {sha256} not serving in time; agent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// JSON inference request for a reference case.
pub fn infer_json(case: &Case) -> serde_json::Value {
    serde_json::json!({
        "inputs": case.inputs.iter().map(|i| serde_json::json!({
            "name": i.name,
            "shape": i.shape,
            "datatype": "FP32",
            "data": i.values(),
        })).collect::<Vec<_>>()
    })
}

/// Binary-extension inference request for a reference case: (header length, body).
pub fn infer_binary(case: &Case) -> (usize, Vec<u8>) {
    let header = serde_json::json!({
        "inputs": case.inputs.iter().map(|i| serde_json::json!({
            "name": i.name,
            "shape": i.shape,
            "datatype": "FP32",
            "parameters": {"binary_data_size": i.values().len() * 4},
        })).collect::<Vec<_>>(),
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let len = body.len();
    for i in &case.inputs {
        for v in i.values() {
            body.extend_from_slice(&v.to_le_bytes());
        }
    }
    (len, body)
}

/// Parses a binary-extension response into output name -> f32 values.
pub fn parse_binary_response(header_len: usize, body: &[u8]) -> HashMap<String, Vec<f64>> {
    let header: serde_json::Value = serde_json::from_slice(&body[..header_len]).unwrap();
    let mut offset = header_len;
    let mut out = HashMap::new();
    for o in header["outputs"].as_array().unwrap() {
        let name = o["name"].as_str().unwrap().to_string();
        if let Some(data) = o.get("data") {
            out.insert(
                name,
                data.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect(),
            );
            continue;
        }
        let size = o["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        let values = body[offset..offset + size]
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        offset += size;
        out.insert(name, values);
    }
    assert_eq!(offset, body.len(), "binary response has trailing bytes");
    out
}

// ------------------------------------------------------------------ state reports

pub fn state_report(payload: &[u8]) -> edgefleet_protocol::wire::StateReport {
    wire::decode(payload).expect("agent publishes valid state reports")
}

/// Waits for a state report of `generation` where `deployment` is in `phase`.
pub async fn wait_phase(
    obs: &mut Observer,
    generation: u64,
    deployment: &str,
    phase: edgefleet_protocol::wire::ModelPhase,
    timeout: Duration,
) -> edgefleet_protocol::wire::ModelState {
    let payload = obs
        .wait_for(Channel::State, timeout, |p| {
            let r = state_report(p);
            r.generation == generation
                && r.models
                    .iter()
                    .any(|m| m.deployment == deployment && m.phase == phase)
        })
        .await;
    state_report(&payload)
        .models
        .into_iter()
        .find(|m| m.deployment == deployment)
        .unwrap()
}

// ------------------------------------------------------------------ TCP proxy

/// Forwards connections to a broker; `cut` makes the broker unreachable (live connections are
/// dropped, new ones closed at once) until `restore`.
pub struct Proxy {
    pub port: u16,
    enabled: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let enabled = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (en, cs) = (enabled.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !en.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                cs.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy {
            port,
            enabled,
            conns,
        }
    }

    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// Reads one metric's value from the agent's `/metrics`.
pub async fn metric(agent: &AgentProcess, series: &str) -> Option<f64> {
    let text = reqwest::get(agent.url("/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
