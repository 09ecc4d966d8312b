//! Wiring: store, inventory, MQTT, reconciler, HTTP and the ModelDeployment source, started
//! together and stopped together on SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::attribution::Attribution;
use crate::http::{HealthState, LinkHealthHandle, Readiness};
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::mqtt::{self, BrokerConnection};
use crate::reconcile::{Distribution, FleetState, Reconciler};
use crate::store::{Store, redact};
use crate::telemetry::Telemetry;
use edgefleet_mqtt::{BrokerUrl, TlsSettingNames};

/// The parts every mode shares, started.
pub struct ControlPlane {
    pub reconciler: Arc<Reconciler>,
    pub kick: watch::Sender<u64>,
    pub readiness: Readiness,
    pub listen_addr: std::net::SocketAddr,
    pub link: mqtt::MqttLink,
}

pub async fn start(args: &ControlArgs, extra_routes: axum::Router) -> anyhow::Result<ControlPlane> {
    start_with(args, |_, _| extra_routes).await
}

/// Like [`start`], with routes built from the reconciler and the `kick` channel (the standalone
/// API reads the same store and inventory).
pub async fn start_with(
    args: &ControlArgs,
    extra_routes: impl FnOnce(&Arc<Reconciler>, &watch::Sender<u64>) -> axum::Router,
) -> anyhow::Result<ControlPlane> {
    let broker = broker_connection(args)?;
    let distribution = args.distribution.distribution()?;
    let metrics = Metrics::new();
    let store = Store::connect(&args.database_url).await.with_context(|| {
        format!(
            "--database-url / EDGEFLEET_DATABASE_URL ({})",
            redact(&args.database_url)
        )
    })?;
    let inventory = Arc::new(Inventory::load(store.clone(), metrics.clone()).await?);
    let slice_ms = i64::from(args.timing.telemetry_slice_seconds) * 1000;
    // Unique per run: this process's roll-up rows are its own (see `Telemetry::writer`).
    let writer = format!("{}@{}", args.mqtt_client_id, crate::clock::now_ms());
    let telemetry = Arc::new(Telemetry::new(slice_ms, 60 * 60 * 1000, writer));
    metrics
        .registry
        .register(Box::new(TelemetryHandle(telemetry.clone())))
        .context("registering telemetry metrics")?;

    let link_health = LinkHealthHandle::new(std::time::Duration::from_secs(
        args.timing.mqtt_unready_after_seconds,
    ));
    if let Some(why) = args
        .telemetry_share_group
        .as_deref()
        .and_then(mqtt::invalid_share_group)
    {
        anyhow::bail!("--telemetry-share-group / EDGEFLEET_TELEMETRY_SHARE_GROUP: {why}");
    }
    let (link, messages, _mqtt_task) = mqtt::connect(
        &broker,
        &args.mqtt_client_id,
        args.telemetry_share_group.as_deref(),
        metrics.clone(),
        link_health.clone(),
        10_000,
    );
    let fleet = FleetState {
        store,
        inventory,
        telemetry,
        attribution: Arc::new(Attribution::default()),
        metrics: metrics.clone(),
    };
    fleet.inventory.set_site_label(&distribution.site_label);
    let reconciler = Arc::new(
        Reconciler::new(fleet.clone(), Arc::new(link.clone())).with_distribution(distribution),
    );
    let (kick, _) = watch::channel(0u64);
    tokio::spawn(crate::ingest::run(fleet, messages, kick.clone()));

    let readiness = Readiness::default();
    let app = crate::http::router(HealthState {
        metrics,
        readiness: readiness.clone(),
        link: link_health,
    })
    .merge(extra_routes(&reconciler, &kick));
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen / EDGEFLEET_LISTEN: cannot bind {}", args.listen))?;
    let listen_addr = listener.local_addr()?;
    tracing::info!(%listen_addr, "serving /healthz /readyz /metrics");
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "HTTP server stopped");
        }
    });
    Ok(ControlPlane {
        reconciler,
        kick,
        readiness,
        listen_addr,
        link,
    })
}

const TLS_FLAGS: TlsSettingNames = TlsSettingNames {
    ca_file: "--mqtt-ca-file / EDGEFLEET_MQTT_CA_FILE",
    cert_file: "--mqtt-cert-file / EDGEFLEET_MQTT_CERT_FILE",
    key_file: "--mqtt-key-file / EDGEFLEET_MQTT_KEY_FILE",
};

/// The broker connection the flags describe; each error names the flag at fault.
pub fn broker_connection(args: &ControlArgs) -> anyhow::Result<BrokerConnection> {
    let address = BrokerUrl::parse(&args.broker)
        .map_err(|e| anyhow::anyhow!("--broker / EDGEFLEET_BROKER: {e}"))?;
    let tls_flags_set = args.mqtt_ca_file.is_some() || args.mqtt_cert_file.is_some();
    if tls_flags_set && !address.tls {
        anyhow::bail!(
            "--broker / EDGEFLEET_BROKER: TLS files are set but {:?} is not mqtts://",
            args.broker
        );
    }
    let tls = if address.tls {
        let identity = args
            .mqtt_cert_file
            .as_deref()
            .zip(args.mqtt_key_file.as_deref());
        let config = edgefleet_mqtt::client_config(edgefleet_mqtt::TlsFiles {
            ca_file: args.mqtt_ca_file.as_deref(),
            identity,
        })
        .map_err(|err| anyhow::anyhow!(err.for_setting(&TLS_FLAGS)))?;
        Some(Arc::new(config))
    } else {
        None
    };
    let credentials = match (&args.mqtt_username, &args.mqtt_password_file) {
        (Some(username), Some(file)) => {
            let password = std::fs::read_to_string(file).with_context(|| {
                format!(
                    "--mqtt-password-file / EDGEFLEET_MQTT_PASSWORD_FILE: reading {}",
                    file.display()
                )
            })?;
            Some((
                username.clone(),
                password.trim_end_matches(['\r', '\n']).to_string(),
            ))
        }
        _ => None,
    };
    Ok(BrokerConnection {
        address,
        tls,
        credentials,
    })
}

/// After a connection on which the broker had no session for us, the retained desired
/// documents may be gone too (a broker restarted without its state): publish them again.
/// Only the leader publishes; a standby's documents would be the same, but it must not write.
pub async fn republish_on_fresh_sessions(
    reconciler: Arc<Reconciler>,
    mut fresh: watch::Receiver<u64>,
    leader: watch::Receiver<bool>,
) {
    while fresh.changed().await.is_ok() {
        if !*leader.borrow() {
            continue;
        }
        match reconciler.republish_all().await {
            Ok(count) => tracing::info!(
                count,
                "republished desired documents on a fresh MQTT session"
            ),
            Err(err) => tracing::warn!(%err, "republishing desired documents failed"),
        }
    }
}

/// Kubernetes mode.
pub async fn kubernetes(args: RunArgs) -> anyhow::Result<()> {
    let plane = start(&args.control, axum::Router::new()).await?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let (leader, _lease_task) = if args.leader_election {
        crate::k8s::leadership(
            client.clone(),
            &args.lease_name,
            &args.lease_namespace,
            &args.identity,
            plane.reconciler.fleet().metrics.clone(),
        )
        .await
        .context("leader election (--lease-name / --lease-namespace)")?
    } else {
        plane.reconciler.fleet().metrics.leader.set(1);
        let (tx, rx) = watch::channel(true);
        (rx, tokio::spawn(async move { tx.closed().await }))
    };
    plane.readiness.set(true);
    tokio::spawn(republish_on_fresh_sessions(
        plane.reconciler.clone(),
        plane.link.fresh_sessions(),
        leader.clone(),
    ));
    let context = Arc::new(crate::k8s::Context::new(
        plane.reconciler.clone(),
        client,
        leader.clone(),
    ));
    let watch_namespace = Some(args.watch_namespace.clone()).filter(|ns| !ns.is_empty());
    // Reconcile everything when devices change and when this replica becomes leader.
    let kicks = futures::stream::select(
        WatchStream::from_changes(plane.kick.subscribe()).map(|_| ()),
        WatchStream::from_changes(leader).map(|_| ()),
    );
    let (signalled_tx, mut signalled) = watch::channel(false);
    let trigger = async move {
        shutdown_signal().await;
        let _ = signalled_tx.send(true);
    };
    let graceful = async {
        crate::k8s::run(context, watch_namespace, kicks, trigger).await;
        plane.link.disconnect().await;
    };
    tokio::pin!(graceful);
    tokio::select! {
        () = &mut graceful => return Ok(()),
        _ = signalled.wait_for(|signalled| *signalled) => {}
    }
    // In-flight reconciles wait on the API server, the MQTT disconnect on the broker: either
    // may be gone. Past the grace the process exits anyway (main drops the runtime with a
    // timeout too, so no blocked task keeps it alive).
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful)
        .await
        .is_err()
    {
        tracing::warn!(
            grace_seconds = SHUTDOWN_GRACE.as_secs(),
            "shutdown grace passed with reconciles or the MQTT disconnect unfinished \
             (API server or broker unreachable?); exiting anyway"
        );
    }
    Ok(())
}

/// How long SIGTERM waits for in-flight work before the process exits regardless; well
/// under Kubernetes' default 30 s termination grace.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

use futures::StreamExt;

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

/// Lets the shared telemetry aggregate be registered with the Prometheus registry.
struct TelemetryHandle(Arc<Telemetry>);

impl prometheus::core::Collector for TelemetryHandle {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

// ------------------------------------------------------------ flags

/// Settings shared by every mode that runs the control loop.
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    /// Fleet state database: sqlite://PATH (embedded) or postgres://... (production).
    #[arg(
        long,
        env = "EDGEFLEET_DATABASE_URL",
        default_value = "sqlite://edgefleet.db"
    )]
    pub database_url: String,
    /// MQTT broker devices connect to.
    #[arg(
        long,
        env = "EDGEFLEET_BROKER",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    pub broker: String,
    /// CA certificate (PEM) of an `mqtts://` broker; the platform roots when unset.
    #[arg(long, env = "EDGEFLEET_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for brokers that authenticate clients by certificate.
    #[arg(long, env = "EDGEFLEET_MQTT_CERT_FILE", requires = "mqtt_key_file")]
    pub mqtt_cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM) of --mqtt-cert-file.
    #[arg(long, env = "EDGEFLEET_MQTT_KEY_FILE", requires = "mqtt_cert_file")]
    pub mqtt_key_file: Option<std::path::PathBuf>,
    /// MQTT username (with --mqtt-password-file).
    #[arg(long, env = "EDGEFLEET_MQTT_USERNAME", requires = "mqtt_password_file")]
    pub mqtt_username: Option<String>,
    /// File holding the MQTT password (a file, so the secret never shows in `ps` or logs).
    #[arg(long, env = "EDGEFLEET_MQTT_PASSWORD_FILE", requires = "mqtt_username")]
    pub mqtt_password_file: Option<std::path::PathBuf>,
    /// MQTT client id; keep it stable per replica so the broker holds telemetry across restarts.
    #[arg(
        long,
        env = "EDGEFLEET_MQTT_CLIENT_ID",
        default_value = "edgefleet-controller"
    )]
    pub mqtt_client_id: String,
    /// MQTT 5 shared subscription group for telemetry: replicas naming the same group split
    /// the windows between them (each counted once, through the fleet store). Unset: this
    /// replica receives every window. With a group, this replica's MQTT session ends with
    /// its connection, so a dead replica's share goes to the live ones.
    #[arg(long, env = "EDGEFLEET_TELEMETRY_SHARE_GROUP")]
    pub telemetry_share_group: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "EDGEFLEET_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub timing: LoopTiming,
    #[command(flatten)]
    pub distribution: DistributionArgs,
}

/// Where artifacts come from besides plain URLs, the same flags for `run` and `up`.
#[derive(Args, Debug, Clone)]
pub struct DistributionArgs {
    /// Registry credentials for `oci://` artifacts, as a docker `config.json` (in Kubernetes,
    /// the `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson` Secret mounted as a file).
    /// The controller uses them to resolve tags; they never travel to devices.
    #[arg(long, env = "EDGEFLEET_REGISTRY_AUTH_FILE")]
    pub registry_auth_file: Option<std::path::PathBuf>,
    /// Comma-separated `host:port`s of registries reached over plain HTTP.
    #[arg(long, env = "EDGEFLEET_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// The device label whose value names a device's site: devices of a site download
    /// through the site's cache (a device that announces one).
    #[arg(long, env = "EDGEFLEET_SITE_LABEL", default_value = "site")]
    pub site_label: String,
}

impl DistributionArgs {
    pub fn distribution(&self) -> anyhow::Result<Distribution> {
        let credentials = match &self.registry_auth_file {
            Some(path) => {
                let bytes = std::fs::read(path).with_context(|| {
                    format!(
                        "--registry-auth-file / EDGEFLEET_REGISTRY_AUTH_FILE: cannot read {}",
                        path.display()
                    )
                })?;
                edgefleet_oci::Credentials::from_docker_config(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "--registry-auth-file / EDGEFLEET_REGISTRY_AUTH_FILE ({}): {e}",
                        path.display()
                    )
                })?
            }
            None => edgefleet_oci::Credentials::default(),
        };
        if self.site_label.is_empty() {
            anyhow::bail!("--site-label / EDGEFLEET_SITE_LABEL: must not be empty");
        }
        let insecure: Vec<String> = self
            .insecure_registries
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Distribution {
            registry: Arc::new(edgefleet_oci::Registry::new(&insecure, credentials)),
            site_label: self.site_label.clone(),
        })
    }
}

/// Timing of the control loop, the same flags for `edgefleet run` and `edgefleet up`.
#[derive(Args, Debug, Clone)]
pub struct LoopTiming {
    /// Width in seconds of the telemetry slices canary analysis reads.
    #[arg(long, env = "EDGEFLEET_TELEMETRY_SLICE_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub telemetry_slice_seconds: u32,
    /// Seconds the MQTT link may be down (or keep dropping) before /readyz answers 503.
    #[arg(
        long,
        env = "EDGEFLEET_MQTT_UNREADY_AFTER_SECONDS",
        default_value_t = 30
    )]
    pub mqtt_unready_after_seconds: u64,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    /// Only watch this namespace (empty: all namespaces).
    #[arg(long, env = "EDGEFLEET_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,
    /// Take part in leader election through a coordination.k8s.io Lease.
    #[arg(long, env = "EDGEFLEET_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    #[arg(
        long,
        env = "EDGEFLEET_LEASE_NAME",
        default_value = "edgefleet-controller"
    )]
    pub lease_name: String,
    #[arg(long, env = "EDGEFLEET_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(
        long,
        env = "EDGEFLEET_IDENTITY",
        default_value = "edgefleet-controller-0"
    )]
    pub identity: String,
}
