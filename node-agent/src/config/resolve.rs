//! Flags over file over defaults, into a validated [`Config`]; every error names its field.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_mqtt::BrokerUrl;
use edgefleet_protocol::Runtime;
use edgefleet_protocol::wire::DeviceId;

use super::*;
use crate::install::signing::TrustedKeys;

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
        let broker = BrokerUrl::parse(&broker).map_err(|e| err("broker", e))?;
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
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let inference_threads = args
            .inference_threads
            .or(file.inference_threads)
            .unwrap_or(cores);
        if inference_threads == 0 {
            return Err(err("inference_threads", "must be at least 1"));
        }
        let intra_op_threads = args
            .intra_op_threads
            .or(file.intra_op_threads)
            .unwrap_or_else(|| default_intra_op_threads(cores, inference_threads));
        if intra_op_threads == 0 {
            return Err(err("intra_op_threads", "must be at least 1"));
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
        if !broker.tls && tls != TlsConfig::default() {
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
                    "llamacpp" => Ok(Runtime::Llamacpp),
                    other => Err(err(
                        "runtimes",
                        format!(
                            "unknown runtime {other:?}; expected tract, onnxruntime or llamacpp"
                        ),
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
        let llm = file.llm.resolve(args)?;
        let distribution = file.distribution.resolve(args)?;
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
            intra_op_threads,
            onnxruntime_lib: args.onnxruntime_lib.clone().or(file.onnxruntime_lib),
            trusted_keys,
            tls,
            capabilities: caps,
            spool,
            backoff,
            llm,
            distribution,
            test,
        })
    }
}

/// The cores shared by the inferences that may run at once: one inference alone on a 4-core
/// device with `--inference-threads 1` gets 4 threads; by default (as many inferences as cores)
/// each gets 1, so a busy device is never oversubscribed.
pub fn default_intra_op_threads(cores: usize, inference_threads: usize) -> usize {
    cores.checked_div(inference_threads).unwrap_or(1).max(1)
}

fn apply<T>(slot: &mut T, value: Option<impl Into<T>>) {
    if let Some(v) = value {
        *slot = v.into();
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_file;

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
        assert!(c.broker.tls);
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
    fn intra_op_threads_share_the_cores_between_concurrent_inferences() {
        assert_eq!(default_intra_op_threads(4, 1), 4);
        assert_eq!(default_intra_op_threads(4, 2), 2);
        assert_eq!(default_intra_op_threads(2, 2), 1);
        assert_eq!(default_intra_op_threads(2, 8), 1, "never below one");
        let file = parse_file("inference_threads = 1\nintra_op_threads = 3\n").expect("valid toml");
        let c = Config::resolve(file, &args()).expect("valid");
        assert_eq!((c.inference_threads, c.intra_op_threads), (1, 3));
        let mut a = args();
        a.intra_op_threads = Some(2);
        let file = parse_file("intra_op_threads = 3\n").expect("valid toml");
        assert_eq!(
            Config::resolve(file, &a).expect("valid").intra_op_threads,
            2,
            "the flag wins"
        );
        a.intra_op_threads = Some(0);
        let e = Config::resolve(FileConfig::default(), &a).unwrap_err();
        assert_eq!(e.field, "intra_op_threads");
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
}
