//! Wiring: store, inventory, MQTT, engine, HTTP and the ModelDeployment source, started
//! together and stopped together on SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::cli::{ControlArgs, RunArgs};
use crate::engine::{Engine, Publisher};
use crate::http::{HealthState, Readiness};
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::mqtt::{self, BrokerAddress};
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
    let broker = BrokerAddress::parse(&args.broker)
        .map_err(|e| anyhow::anyhow!("--broker / EDGEFLEET_BROKER: {e}"))?;
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

    let (link, messages, _mqtt_task) =
        mqtt::connect(&broker, &args.mqtt_client_id, metrics.clone(), 10_000);
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
    crate::k8s::run(context, watch_namespace, kicks, shutdown_signal()).await;
    plane.link.disconnect().await;
    Ok(())
}

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
