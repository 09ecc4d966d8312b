//! Device wire protocol v1 over MQTT.
//!
//! Topics live under `edgefleet/v1/devices/{id}/`:
//! - `hello`     device → controller, retained: capabilities ([`Hello`]);
//! - `status`    device → controller, retained, also the MQTT last will: online/offline;
//! - `desired`   controller → device, retained, QoS 1: the full assignment document ([`Desired`]);
//! - `state`     device → controller: per-model phase ([`StateReport`]);
//! - `telemetry` device → controller: latency histogram windows ([`Telemetry`]).
//!
//! Payloads are JSON objects carrying `"v": 1`. Decoding never panics: oversized, non-JSON,
//! unknown-version, malformed and semantically invalid payloads each return a typed [`WireError`].
//! Unknown fields are ignored so that v1 can grow without breaking older peers.

use std::collections::BTreeMap;
use std::fmt;

use crate::checks::{check_artifact_uri, check_http_url, check_sha256, truncate};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::histogram::LatencyHistogram;
use crate::offload::OffloadPolicy;
use crate::spec::{Artifact, ModelRef, Precision, Runtime, SelfTest};

pub const PROTOCOL_VERSION: u32 = 1;
pub const TOPIC_PREFIX: &str = "edgefleet/v1/devices";
/// Larger payloads are refused before parsing; a desired document for hundreds of models fits.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// The largest MQTT packet an EdgeFleet client reads (a maximal payload plus topic, header
/// and MQTT 5 properties). The controller advertises it as its MQTT 5 Maximum Packet Size.
pub const MAX_PACKET_BYTES: usize = MAX_PAYLOAD_BYTES + 4096;
/// The packet limit brokers we configure enforce on publishers (rumqttd, the Mosquitto of
/// `--broker-impl mosquitto` and of the Helm chart): below [`MAX_PACKET_BYTES`], so whatever
/// the broker accepts, every client reads, whatever properties the broker adds when forwarding.
pub const BROKER_MAX_PACKET_BYTES: usize = MAX_PAYLOAD_BYTES + 2048;
const MAX_DEVICE_ID_LEN: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Hello,
    Status,
    Desired,
    State,
    Telemetry,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Hello,
        Channel::Status,
        Channel::Desired,
        Channel::State,
        Channel::Telemetry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Hello => "hello",
            Channel::Status => "status",
            Channel::Desired => "desired",
            Channel::State => "state",
            Channel::Telemetry => "telemetry",
        }
    }

    fn parse(segment: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == segment)
    }
}

/// A device identifier: 1–128 of `[A-Za-z0-9_.-]`, starting with a letter or digit, so it can
/// never be an MQTT wildcard, a topic separator or a path component like `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    pub fn new(id: impl Into<String>) -> Result<Self, WireError> {
        let id = id.into();
        let valid_chars = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        let starts_alnum = id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if id.len() > MAX_DEVICE_ID_LEN || !valid_chars || !starts_alnum {
            return Err(WireError::Invalid(format!(
                "device id {:?} must be 1-{MAX_DEVICE_ID_LEN} of [A-Za-z0-9_.-] starting with a letter or digit",
                truncate(&id, 40)
            )));
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = WireError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        DeviceId::new(value)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn topic(device: &DeviceId, channel: Channel) -> String {
    format!("{TOPIC_PREFIX}/{device}/{}", channel.as_str())
}

/// The wildcard subscription for one channel of every device.
pub fn subscription(channel: Channel) -> String {
    format!("{TOPIC_PREFIX}/+/{}", channel.as_str())
}

pub fn parse_topic(topic: &str) -> Result<(DeviceId, Channel), WireError> {
    let bad = || WireError::BadTopic(truncate(topic, 200).to_string());
    let rest = topic
        .strip_prefix(TOPIC_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(bad)?;
    let (device, channel) = rest.split_once('/').ok_or_else(bad)?;
    let channel = Channel::parse(channel).ok_or_else(bad)?;
    let device = DeviceId::new(device).map_err(|_| bad())?;
    Ok((device, channel))
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("payload of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("payload is not a JSON object: {0}")]
    NotJson(String),
    #[error("payload has no numeric \"v\" protocol version")]
    MissingVersion,
    #[error("protocol version {found} is not supported (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion { found: u64 },
    #[error("malformed payload: {0}")]
    Malformed(String),
    #[error("invalid payload: {0}")]
    Invalid(String),
    #[error("topic {0:?} is not an EdgeFleet v1 device topic")]
    BadTopic(String),
    #[error("payload names device {payload} but arrived on the topic of {topic}")]
    DeviceMismatch { topic: String, payload: String },
}

impl WireError {
    /// A bounded label for metrics (`reason` on `..._rejected_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::TooLarge { .. } => "too_large",
            WireError::NotJson(_) => "not_json",
            WireError::MissingVersion => "missing_version",
            WireError::UnsupportedVersion { .. } => "unsupported_version",
            WireError::Malformed(_) => "malformed",
            WireError::Invalid(_) => "invalid",
            WireError::BadTopic(_) => "bad_topic",
            WireError::DeviceMismatch { .. } => "device_mismatch",
        }
    }
}

/// A v1 payload: which channel it travels on and what makes it semantically valid.
pub trait WireMessage: Serialize + DeserializeOwned {
    const CHANNEL: Channel;
    fn device_id(&self) -> &DeviceId;
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Serialize)]
struct Envelope<'a, M> {
    v: u32,
    #[serde(flatten)]
    body: &'a M,
}

#[derive(Deserialize)]
struct VersionProbe {
    v: Option<serde_json::Value>,
}

pub fn encode<M: WireMessage>(message: &M) -> Vec<u8> {
    let envelope = Envelope {
        v: PROTOCOL_VERSION,
        body: message,
    };
    // Serializing plain structs with string keys cannot fail.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// [`encode`] as a `String`, for payloads that are also stored as text.
pub fn encode_to_string<M: WireMessage>(message: &M) -> String {
    let envelope = Envelope {
        v: PROTOCOL_VERSION,
        body: message,
    };
    serde_json::to_string(&envelope).unwrap_or_default()
}

/// Refuses a payload over [`MAX_PAYLOAD_BYTES`] before anything parses it.
pub fn check_size(bytes: &[u8]) -> Result<(), WireError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(())
}

pub fn decode<M: WireMessage>(bytes: &[u8]) -> Result<M, WireError> {
    check_size(bytes)?;
    let probe: VersionProbe =
        serde_json::from_slice(bytes).map_err(|e| WireError::NotJson(e.to_string()))?;
    match probe.v.as_ref().and_then(serde_json::Value::as_u64) {
        None => return Err(WireError::MissingVersion),
        Some(v) if v != u64::from(PROTOCOL_VERSION) => {
            return Err(WireError::UnsupportedVersion { found: v });
        }
        Some(_) => {}
    }
    let message: M =
        serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    message.check().map_err(WireError::Invalid)?;
    Ok(message)
}

/// Decodes a payload received on `topic` and checks the payload speaks for that topic's device.
pub fn decode_from<M: WireMessage>(topic_device: &DeviceId, bytes: &[u8]) -> Result<M, WireError> {
    let message: M = decode(bytes)?;
    if message.device_id() != topic_device {
        return Err(WireError::DeviceMismatch {
            topic: topic_device.to_string(),
            payload: message.device_id().to_string(),
        });
    }
    Ok(message)
}

// ---------------------------------------------------------------- payloads

/// Capabilities a device announces (retained on `hello`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub device_id: DeviceId,
    pub agent_version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// As Rust's `std::env::consts::ARCH` names it: `x86_64`, `aarch64`, `arm`, ...
    pub arch: String,
    pub cores: u32,
    #[serde(default)]
    pub cpu_features: Vec<String>,
    pub memory_total_mib: u64,
    pub memory_available_mib: u64,
    pub disk_free_mib: u64,
    #[serde(default)]
    pub accelerators: Vec<String>,
    #[serde(default)]
    pub runtimes: Vec<Runtime>,
    /// Set when this device serves verified artifacts to the devices of its site: the base URL
    /// they reach it at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_cache_url: Option<String>,
}

impl WireMessage for Hello {
    const CHANNEL: Channel = Channel::Hello;
    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }
    fn check(&self) -> Result<(), String> {
        if self.arch.is_empty() || self.arch.len() > 32 {
            return Err("arch must be 1-32 characters".into());
        }
        if self.labels.len() > 64 {
            return Err(format!(
                "{} labels exceed the limit of 64",
                self.labels.len()
            ));
        }
        if let Some(url) = &self.site_cache_url {
            check_http_url("siteCacheUrl", url)?;
        }
        Ok(())
    }
}

/// Online/offline; the agent registers `online: false` as its MQTT last will.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    pub device_id: DeviceId,
    pub online: bool,
}

impl WireMessage for DeviceStatus {
    const CHANNEL: Channel = Channel::Status;
    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }
}

/// Whether a device runs a deployment's new version as part of a canary step or as the
/// settled (stable) assignment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Canary,
    Stable,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Canary, Role::Stable];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Canary => "canary",
            Role::Stable => "stable",
        }
    }

    /// The role `as_str` names, if any.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// Everything a device should run: the full document, never a delta, so a retained message
/// alone brings a device that was away up to date. `generation` only grows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Desired {
    pub device_id: DeviceId,
    pub generation: u64,
    #[serde(default)]
    pub assignments: Vec<Assignment>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// `namespace/name` of the ModelDeployment.
    pub deployment: String,
    pub model: ModelRef,
    pub variant: String,
    pub precision: Precision,
    pub runtime: Runtime,
    pub artifact: Artifact,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_test: Option<SelfTest>,
    /// The deployment's offload policy; sent only when it allows inputs to leave the device.
    /// Agents that predate it ignore the field and answer everything locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<OffloadPolicy>,
    /// Language models: the context and slots the deployment declares (agents without it use
    /// their own `--llm-*` settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<crate::llm::LlmRun>,
    /// Base URL of the site cache to try before the artifact's origin (`GET
    /// {siteCache}/v1/blobs/{sha256}`); the agent falls back to the origin when it fails, and
    /// checks the digest whichever served it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_cache: Option<String>,
}

impl WireMessage for Desired {
    const CHANNEL: Channel = Channel::Desired;
    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }
    fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.assignments {
            if !seen.insert(a.deployment.as_str()) {
                return Err(format!("deployment {:?} is assigned twice", a.deployment));
            }
            check_sha256(&a.artifact.sha256)?;
            check_artifact_uri(&a.artifact.uri)?;
            if let Some(cache) = &a.site_cache {
                check_http_url("siteCache", cache)?;
            }
            if a.artifact.size_bytes == 0 {
                return Err("artifact sizeBytes must be positive".into());
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelPhase {
    Downloading,
    Verifying,
    Loading,
    Ready,
    Failed,
    Removed,
}

impl ModelPhase {
    pub const ALL: [ModelPhase; 6] = [
        ModelPhase::Downloading,
        ModelPhase::Verifying,
        ModelPhase::Loading,
        ModelPhase::Ready,
        ModelPhase::Failed,
        ModelPhase::Removed,
    ];

    /// The name on the wire and in the fleet store.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelPhase::Downloading => "Downloading",
            ModelPhase::Verifying => "Verifying",
            ModelPhase::Loading => "Loading",
            ModelPhase::Ready => "Ready",
            ModelPhase::Failed => "Failed",
            ModelPhase::Removed => "Removed",
        }
    }

    /// The phase `as_str` names, if any.
    pub fn parse(name: &str) -> Option<ModelPhase> {
        ModelPhase::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// The agent's view of each assignment it was given.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StateReport {
    pub device_id: DeviceId,
    /// The desired generation these states answer.
    pub generation: u64,
    #[serde(default)]
    pub models: Vec<ModelState>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelState {
    pub deployment: String,
    pub variant: String,
    pub version: String,
    pub sha256: String,
    pub phase: ModelPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// sha256 of the artifact currently answering requests, which during a switch or after a
    /// failure is the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_sha256: Option<String>,
    /// Bytes this device fetched for the artifact, by where they came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched: Option<FetchedBytes>,
}

/// Download bytes by source, for the per-site view of what crossed the uplink.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FetchedBytes {
    #[serde(default)]
    pub origin: u64,
    #[serde(default)]
    pub site_cache: u64,
}

impl WireMessage for StateReport {
    const CHANNEL: Channel = Channel::State;
    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }
    fn check(&self) -> Result<(), String> {
        self.models.iter().try_for_each(|m| check_sha256(&m.sha256))
    }
}

/// One telemetry window: aggregates only, never inputs or outputs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    pub device_id: DeviceId,
    /// Per-device sequence number; a replayed window has the same one, so it is counted once.
    pub seq: u64,
    pub window_start_ms: i64,
    pub window_seconds: u32,
    #[serde(default)]
    pub models: Vec<ModelWindow>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelWindow {
    pub deployment: String,
    pub variant: String,
    pub requests: u64,
    pub errors: u64,
    /// End to end through the local API, cloud time included for offloaded requests.
    pub latency: LatencyHistogram,
    /// Only from agents applying an offload policy; older controllers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<OffloadWindow>,
    /// Only from agents serving a language model; older controllers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<crate::llm::LlmWindow>,
}

/// What the offload policy did in one window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OffloadWindow {
    /// Requests sent to the cloud endpoint (answered by it or not).
    pub requests: u64,
    /// Of those, answered with the local result because the cloud failed or timed out.
    pub fallbacks: u64,
    /// Cloud round trips, failed ones included (a timeout counts as its full duration).
    pub cloud_latency: LatencyHistogram,
}

impl WireMessage for Telemetry {
    const CHANNEL: Channel = Channel::Telemetry;
    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }
    fn check(&self) -> Result<(), String> {
        if self.window_seconds == 0 {
            return Err("windowSeconds must be positive".into());
        }
        for m in &self.models {
            if !m.latency.has_shared_layout() {
                return Err(format!(
                    "latency histogram of {:?} does not have the shared bucket layout",
                    m.deployment
                ));
            }
            if m.errors > m.requests {
                return Err(format!(
                    "{:?} reports more errors than requests",
                    m.deployment
                ));
            }
            if let Some(llm) = &m.llm {
                llm.check()
                    .map_err(|e| format!("{:?}: {e}", m.deployment))?;
            }
            if let Some(offload) = &m.offload {
                if !offload.cloud_latency.has_shared_layout() {
                    return Err(format!(
                        "cloud latency histogram of {:?} does not have the shared bucket layout",
                        m.deployment
                    ));
                }
                if offload.fallbacks > offload.requests || offload.requests > m.requests {
                    return Err(format!(
                        "{:?} reports more fallbacks than offloads or more offloads than requests",
                        m.deployment
                    ));
                }
            }
        }
        Ok(())
    }
}
