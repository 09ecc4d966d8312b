//! Wiring: store, inventory, MQTT, engine, HTTP and the ModelDeployment source, started
//! together and stopped together on SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::cli::{ControlArgs, RunArgs};
use crate::engine::{Engine, Publisher};
use crate::http::{HealthState, LinkHealthHandle, Readiness};
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::mqtt::{self, BrokerAddress, BrokerConnection};
use crate::store::{Store, redact};
use crate::telemetry::Telemetry;

/// The parts every mode shares, started.
pub struct ControlPlane {
    pub engine: Arc<Engine>,
    pub kick: watch::Sender<u64>,
    pub readiness: Readiness,
    pub listen_addr: std::net::SocketAddr,
    pub link: mqtt::MqttLink,
}

pub async fn start(args: &ControlArgs, extra_routes: axum::Router) -> anyhow::Result<ControlPlane> {
    start_with(args, |_, _| extra_routes).await
}

/// Like [`start`], with routes built from the engine and the `kick` channel (the standalone
/// API reads the same store and inventory).
pub async fn start_with(
    args: &ControlArgs,
    extra_routes: impl FnOnce(&Arc<Engine>, &watch::Sender<u64>) -> axum::Router,
) -> anyhow::Result<ControlPlane> {
    let broker = broker_connection(args)?;
    let metrics = Metrics::new();
    let store = Store::connect(&args.database_url).await.with_context(|| {
        format!(
            "--database-url / EDGEFLEET_DATABASE_URL ({})",
            redact(&args.database_url)
        )
    })?;
    let inventory = Arc::new(Inventory::load(store.clone(), metrics.clone()).await?);
    let slice_ms = i64::from(args.telemetry_slice_seconds) * 1000;
    let telemetry = Arc::new(Telemetry::new(slice_ms, 60 * 60 * 1000));
    metrics
        .registry
        .register(Box::new(TelemetryHandle(telemetry.clone())))
        .context("registering telemetry metrics")?;

    let link_health = LinkHealthHandle::new(std::time::Duration::from_secs(
        args.mqtt_unready_after_seconds,
    ));
    let (link, messages, _mqtt_task) = mqtt::connect(
        &broker,
        &args.mqtt_client_id,
        metrics.clone(),
        link_health.clone(),
        10_000,
    );
    let engine = Arc::new(Engine::new(
        store,
        inventory,
        telemetry,
        metrics.clone(),
        Publisher::Mqtt(link.clone()),
    ));
    let (kick, _) = watch::channel(0u64);
    tokio::spawn(crate::ingest::run(engine.clone(), messages, kick.clone()));

    let readiness = Readiness::default();
    let app = crate::http::router(HealthState {
        metrics,
        readiness: readiness.clone(),
        link: link_health,
    })
    .merge(extra_routes(&engine, &kick));
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
        engine,
        kick,
        readiness,
        listen_addr,
        link,
    })
}

/// The broker connection the flags describe; each error names the flag at fault.
pub fn broker_connection(args: &ControlArgs) -> anyhow::Result<BrokerConnection> {
    let address = BrokerAddress::parse(&args.broker)
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
        let config = edgefleet_mqtt_tls::client_config(edgefleet_mqtt_tls::TlsFiles {
            ca_file: args.mqtt_ca_file.as_deref(),
            identity,
        })
        .map_err(|err| {
            let flag = match err.field() {
                edgefleet_mqtt_tls::TlsField::CaFile => "--mqtt-ca-file / EDGEFLEET_MQTT_CA_FILE",
                edgefleet_mqtt_tls::TlsField::CertFile => {
                    "--mqtt-cert-file / EDGEFLEET_MQTT_CERT_FILE"
                }
                edgefleet_mqtt_tls::TlsField::KeyFile => {
                    "--mqtt-key-file / EDGEFLEET_MQTT_KEY_FILE"
                }
            };
            anyhow::anyhow!("{flag}: {err}")
        })?;
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
    engine: Arc<Engine>,
    mut fresh: watch::Receiver<u64>,
    leader: watch::Receiver<bool>,
) {
    while fresh.changed().await.is_ok() {
        if !*leader.borrow() {
            continue;
        }
        match engine.republish_all().await {
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
            plane.engine.metrics.clone(),
        )
        .await
        .context("leader election (--lease-name / --lease-namespace)")?
    } else {
        plane.engine.metrics.leader.set(1);
        let (tx, rx) = watch::channel(true);
        (rx, tokio::spawn(async move { tx.closed().await }))
    };
    plane.readiness.set(true);
    tokio::spawn(republish_on_fresh_sessions(
        plane.engine.clone(),
        plane.link.fresh_sessions(),
        leader.clone(),
    ));
    let context = Arc::new(crate::k8s::Context::new(
        plane.engine.clone(),
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
