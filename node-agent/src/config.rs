//! Configuration: a TOML file, overridden by environment variables and flags (clap gives a
//! flag precedence over its `EDGEFLEET_AGENT_*` variable). Every error names the field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use edgefleet_crds::Runtime;
use edgefleet_crds::wire::DeviceId;

use crate::signing::TrustedKeys;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config field `{field}`: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn err(field: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

/// The TOML file's layout; every field optional so flags and env can fill in.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub device_id: Option<String>,
    pub broker: Option<String>,
    pub store: Option<PathBuf>,
    pub listen: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub telemetry_interval_secs: Option<u64>,
    pub keep_alive_secs: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub inference_threads: Option<usize>,
    /// PEM ed25519 public keys (or base64 raw keys, one per line) artifacts must be signed by.
    pub trusted_keys_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub capabilities: CapabilityOverrides,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub backoff: BackoffConfig,
    #[serde(default)]
    pub test: TestKnobs,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Replace what the agent detects, to simulate heterogeneous fleets on one machine.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityOverrides {
    pub arch: Option<String>,
    pub cores: Option<u32>,
    pub memory_mib: Option<u64>,
    pub memory_available_mib: Option<u64>,
    pub disk_free_mib: Option<u64>,
    pub cpu_features: Option<Vec<String>>,
    pub accelerators: Option<Vec<String>>,
    pub runtimes: Option<Vec<Runtime>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub max_windows: usize,
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        // A day of 10-second windows.
        Self {
            max_windows: 8640,
            max_bytes: 32 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial_ms: 250,
            max_ms: 30_000,
        }
    }
}

/// Knobs for tests (canary rollback): artificial latency added to every inference.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestKnobs {
    #[serde(default)]
    pub extra_latency_ms: u64,
    /// Per variant name, replaces the global value.
    #[serde(default)]
    pub extra_latency_ms_by_variant: BTreeMap<String, u64>,
}

impl TestKnobs {
    pub fn extra_latency(&self, variant: &str) -> Duration {
        let ms = self
            .extra_latency_ms_by_variant
            .get(variant)
            .copied()
            .unwrap_or(self.extra_latency_ms);
        Duration::from_millis(ms)
    }
}

#[derive(Parser, Debug, Default, Clone)]
#[command(name = "edgefleet-agent", version, about = "EdgeFleet node agent")]
pub struct Args {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "EDGEFLEET_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_AGENT_DEVICE_ID")]
    pub device_id: Option<String>,
    /// mqtt://host:port or mqtts://host:port
    #[arg(long, env = "EDGEFLEET_AGENT_BROKER")]
    pub broker: Option<String>,
    /// Model store directory (artifacts, persisted state, telemetry spool).
    #[arg(long, env = "EDGEFLEET_AGENT_STORE")]
    pub store: Option<PathBuf>,
    /// Local inference API address; port 0 picks a free one (written to <store>/listen-addr).
    #[arg(long, env = "EDGEFLEET_AGENT_LISTEN")]
    pub listen: Option<String>,
    /// k=v,k2=v2 (added to the file's labels)
    #[arg(long, env = "EDGEFLEET_AGENT_LABELS")]
    pub labels: Option<String>,
    #[arg(long, env = "EDGEFLEET_AGENT_TELEMETRY_INTERVAL_SECS")]
    pub telemetry_interval_secs: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_KEEP_ALIVE_SECS")]
    pub keep_alive_secs: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    #[arg(long, env = "EDGEFLEET_AGENT_INFERENCE_THREADS")]
    pub inference_threads: Option<usize>,
    /// Artifacts must carry an ed25519 signature by one of these keys (PEM or base64 lines).
    #[arg(long, env = "EDGEFLEET_AGENT_TRUSTED_KEYS_FILE")]
    pub trusted_keys_file: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_AGENT_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_AGENT_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_AGENT_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_AGENT_ARCH")]
    pub arch: Option<String>,
    #[arg(long, env = "EDGEFLEET_AGENT_CORES")]
    pub cores: Option<u32>,
    #[arg(long, env = "EDGEFLEET_AGENT_MEMORY_MIB")]
    pub memory_mib: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_MEMORY_AVAILABLE_MIB")]
    pub memory_available_mib: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_DISK_FREE_MIB")]
    pub disk_free_mib: Option<u64>,
    /// Comma-separated; an empty value announces none.
    #[arg(long, env = "EDGEFLEET_AGENT_CPU_FEATURES")]
    pub cpu_features: Option<String>,
    #[arg(long, env = "EDGEFLEET_AGENT_ACCELERATORS")]
    pub accelerators: Option<String>,
    /// Comma-separated of tract, onnxruntime.
    #[arg(long, env = "EDGEFLEET_AGENT_RUNTIMES")]
    pub runtimes: Option<String>,
    #[arg(long, env = "EDGEFLEET_AGENT_SPOOL_MAX_WINDOWS")]
    pub spool_max_windows: Option<usize>,
    #[arg(long, env = "EDGEFLEET_AGENT_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_BACKOFF_INITIAL_MS")]
    pub backoff_initial_ms: Option<u64>,
    #[arg(long, env = "EDGEFLEET_AGENT_BACKOFF_MAX_MS")]
    pub backoff_max_ms: Option<u64>,
    /// Test knob: artificial latency added to every inference.
    #[arg(long, env = "EDGEFLEET_AGENT_EXTRA_LATENCY_MS")]
    pub extra_latency_ms: Option<u64>,
    /// Test knob per variant: variant=ms,variant2=ms
    #[arg(long, env = "EDGEFLEET_AGENT_EXTRA_LATENCY_MS_BY_VARIANT")]
    pub extra_latency_ms_by_variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BrokerTransport {
    Tcp,
    Tls,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Broker {
    pub transport: BrokerTransport,
    pub host: String,
    pub port: u16,
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub device_id: DeviceId,
    pub broker: Broker,
    pub store: PathBuf,
    pub listen: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub telemetry_interval: Duration,
    pub keep_alive: Duration,
    pub max_body_bytes: usize,
    pub inference_threads: usize,
    pub trusted_keys: TrustedKeys,
    pub tls: TlsConfig,
    pub capabilities: CapabilityOverrides,
    pub spool: SpoolConfig,
    pub backoff: BackoffConfig,
    pub test: TestKnobs,
}

impl Config {
    /// Reads the file named by `args.config` (if any) and applies `args` over it.
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err("config", format!("cannot read {}: {e}", path.display())))?;
                parse_file(&text)?
            }
            None => FileConfig::default(),
        };
        Config::resolve(file, args)
    }

    pub fn resolve(mut file: FileConfig, args: &Args) -> Result<Config, ConfigError> {
        let device_id = args
            .device_id
            .clone()
            .or(file.device_id)
            .ok_or_else(|| err("device_id", "is required (--device-id)"))?;
        let device_id = DeviceId::new(device_id).map_err(|e| err("device_id", e))?;
        let broker = args
            .broker
            .clone()
            .or(file.broker)
            .unwrap_or_else(|| "mqtt://127.0.0.1:1883".into());
        let broker = parse_broker(&broker).map_err(|e| err("broker", e))?;
        let store = args
            .store
            .clone()
            .or(file.store)
            .ok_or_else(|| err("store", "is required (--store DIR)"))?;
        if store.as_os_str().is_empty() {
            return Err(err("store", "must not be empty"));
        }
        let listen = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen
            .parse()
            .map_err(|e| err("listen", format!("{listen:?} is not host:port ({e})")))?;
        if let Some(labels) = &args.labels {
            file.labels.extend(parse_pairs("labels", labels)?);
        }
        for key in file.labels.keys() {
            if key.is_empty() {
                return Err(err("labels", "label keys must not be empty"));
            }
        }
        let interval = args
            .telemetry_interval_secs
            .or(file.telemetry_interval_secs)
            .unwrap_or(10);
        if interval == 0 || interval > u64::from(u32::MAX) {
            return Err(err("telemetry_interval_secs", "must be a positive number"));
        }
        let keep_alive = args.keep_alive_secs.or(file.keep_alive_secs).unwrap_or(30);
        if !(5..=3600).contains(&keep_alive) {
            return Err(err("keep_alive_secs", "must be between 5 and 3600"));
        }
        let max_body_bytes = args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(32 << 20);
        if max_body_bytes < 1024 {
            return Err(err("max_body_bytes", "must be at least 1024"));
        }
        let inference_threads = args
            .inference_threads
            .or(file.inference_threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if inference_threads == 0 {
            return Err(err("inference_threads", "must be at least 1"));
        }
        let trusted_keys = match args
            .trusted_keys_file
            .as_ref()
            .or(file.trusted_keys_file.as_ref())
        {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    err(
                        "trusted_keys_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                TrustedKeys::parse(&text)
                    .map_err(|e| err("trusted_keys_file", format!("{}: {e}", path.display())))?
            }
            None => TrustedKeys::default(),
        };
        let mut tls = file.tls;
        tls.ca_file = args.tls_ca_file.clone().or(tls.ca_file);
        tls.cert_file = args.tls_cert_file.clone().or(tls.cert_file);
        tls.key_file = args.tls_key_file.clone().or(tls.key_file);
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(err(
                "tls.cert_file",
                "a client certificate needs both cert_file and key_file",
            ));
        }
        if broker.transport == BrokerTransport::Tcp && tls != TlsConfig::default() {
            return Err(err(
                "tls",
                "TLS files are set but the broker URL is mqtt://",
            ));
        }
        let mut caps = file.capabilities;
        apply(&mut caps.arch, args.arch.clone());
        apply(&mut caps.cores, args.cores);
        apply(&mut caps.memory_mib, args.memory_mib);
        apply(&mut caps.memory_available_mib, args.memory_available_mib);
        apply(&mut caps.disk_free_mib, args.disk_free_mib);
        apply(
            &mut caps.cpu_features,
            args.cpu_features.as_deref().map(list),
        );
        apply(
            &mut caps.accelerators,
            args.accelerators.as_deref().map(list),
        );
        if let Some(runtimes) = &args.runtimes {
            let parsed = list(runtimes)
                .iter()
                .map(|r| match r.as_str() {
                    "tract" => Ok(Runtime::Tract),
                    "onnxruntime" => Ok(Runtime::Onnxruntime),
                    other => Err(err(
                        "runtimes",
                        format!("unknown runtime {other:?}; expected tract or onnxruntime"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            caps.runtimes = Some(parsed);
        }
        if let Some(arch) = &caps.arch
            && (arch.is_empty() || arch.len() > 32)
        {
            return Err(err("capabilities.arch", "must be 1-32 characters"));
        }
        let mut spool = file.spool;
        apply(&mut spool.max_windows, args.spool_max_windows);
        apply(&mut spool.max_bytes, args.spool_max_bytes);
        if spool.max_windows == 0 || spool.max_bytes < 4096 {
            return Err(err(
                "spool",
                "max_windows must be positive and max_bytes at least 4096",
            ));
        }
        let mut backoff = file.backoff;
        apply(&mut backoff.initial_ms, args.backoff_initial_ms);
        apply(&mut backoff.max_ms, args.backoff_max_ms);
        if backoff.initial_ms == 0 || backoff.max_ms < backoff.initial_ms {
            return Err(err(
                "backoff",
                "initial_ms must be positive and not above max_ms",
            ));
        }
        let mut test = file.test;
        apply(&mut test.extra_latency_ms, args.extra_latency_ms);
        if let Some(pairs) = &args.extra_latency_ms_by_variant {
            for (variant, ms) in parse_pairs("extra_latency_ms_by_variant", pairs)? {
                let ms = ms.parse().map_err(|_| {
                    err(
                        "extra_latency_ms_by_variant",
                        format!("{ms:?} is not a number of milliseconds"),
                    )
                })?;
                test.extra_latency_ms_by_variant.insert(variant, ms);
            }
        }
        Ok(Config {
            device_id,
            broker,
            store,
            listen,
            labels: file.labels,
            telemetry_interval: Duration::from_secs(interval),
            keep_alive: Duration::from_secs(keep_alive),
            max_body_bytes,
            inference_threads,
            trusted_keys,
            tls,
            capabilities: caps,
            spool,
            backoff,
            test,
        })
    }
}

fn apply<T>(slot: &mut T, value: Option<impl Into<T>>) {
    if let Some(v) = value {
        *slot = v.into();
    }
}

pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let field = e
            .span()
            .and_then(|span| text.get(span))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "config".into());
        err(&field, e.message())
    })
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_pairs(field: &str, s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    list(s)
        .into_iter()
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| err(field, format!("{pair:?} is not key=value")))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

pub fn parse_broker(url: &str) -> Result<Broker, String> {
    let (transport, rest, default_port) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (BrokerTransport::Tcp, rest, 1883)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (BrokerTransport::Tls, rest, 8883)
    } else {
        return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("port {port:?} is not a number in 1-65535"))?;
            (host, port)
        }
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(format!("{url:?} has no valid host"));
    }
    if port == 0 {
        return Err("port must not be 0".into());
    }
    Ok(Broker {
        transport,
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            device_id: Some("dev-1".into()),
            store: Some("/tmp/x".into()),
            ..Args::default()
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file = parse_file(
            "device_id = \"from-file\"\nbroker = \"mqtt://b:1\"\nstore = \"/s\"\n\
             [capabilities]\narch = \"aarch64\"\n[test]\nextra_latency_ms = 5\n",
        )
        .expect("valid toml");
        let a = Args {
            broker: Some("mqtts://broker.local:8884".into()),
            labels: Some("zone=a, tier=edge".into()),
            cpu_features: Some("neon,dotprod".into()),
            extra_latency_ms_by_variant: Some("int8=40".into()),
            ..Args::default()
        };
        let c = Config::resolve(file, &a).expect("valid");
        assert_eq!(c.device_id.as_str(), "from-file");
        assert_eq!(c.broker.transport, BrokerTransport::Tls);
        assert_eq!(
            (c.broker.host.as_str(), c.broker.port),
            ("broker.local", 8884)
        );
        assert_eq!(c.labels.get("tier").map(String::as_str), Some("edge"));
        assert_eq!(c.capabilities.arch.as_deref(), Some("aarch64"));
        assert_eq!(
            c.capabilities.cpu_features,
            Some(vec!["neon".to_string(), "dotprod".to_string()])
        );
        assert_eq!(c.test.extra_latency("int8"), Duration::from_millis(40));
        assert_eq!(c.test.extra_latency("fp32"), Duration::from_millis(5));
    }

    #[test]
    fn the_local_api_binds_loopback_unless_told_otherwise() {
        let c = Config::resolve(FileConfig::default(), &args()).expect("valid");
        assert!(c.listen.ip().is_loopback(), "{}", c.listen);
        assert!(c.trusted_keys.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let mut a = args();
        a.broker = Some("http://x".into());
        assert_eq!(
            Config::resolve(FileConfig::default(), &a)
                .unwrap_err()
                .field,
            "broker"
        );
        let mut a = args();
        a.device_id = Some("../etc".into());
        assert_eq!(
            Config::resolve(FileConfig::default(), &a)
                .unwrap_err()
                .field,
            "device_id"
        );
        let mut a = args();
        a.listen = Some("nope".into());
        assert_eq!(
            Config::resolve(FileConfig::default(), &a)
                .unwrap_err()
                .field,
            "listen"
        );
        let mut a = args();
        a.runtimes = Some("tract,tensorrt".into());
        assert_eq!(
            Config::resolve(FileConfig::default(), &a)
                .unwrap_err()
                .field,
            "runtimes"
        );
        let mut a = args();
        a.telemetry_interval_secs = Some(0);
        let e = Config::resolve(FileConfig::default(), &a).unwrap_err();
        assert_eq!(e.field, "telemetry_interval_secs");
        assert!(e.to_string().contains("telemetry_interval_secs"));
        let e = parse_file("device_idd = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("device_idd"), "{e}");
        let e = parse_file("telemetry_interval_secs = \"ten\"\n").unwrap_err();
        assert!(
            e.to_string().contains("ten") || e.to_string().contains("integer"),
            "{e}"
        );
    }

    #[test]
    fn broker_urls() {
        let b = parse_broker("mqtt://127.0.0.1").expect("valid");
        assert_eq!(b.port, 1883);
        let b = parse_broker("mqtts://[::1]:8883").expect("valid");
        assert_eq!((b.host.as_str(), b.port), ("::1", 8883));
        assert!(parse_broker("mqtt://:1883").is_err());
        assert!(parse_broker("mqtt://h:99999").is_err());
    }
}
