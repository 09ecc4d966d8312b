//! Wiring: the store, the local API, the supervisor and the MQTT link, and their shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use edgefleet_protocol::Runtime;
use edgefleet_protocol::wire::Hello;

use crate::capabilities;
use edgefleet_oci::Registry as OciRegistry;

use crate::config::{Config, SiteCacheConfig};
use crate::install::fetch::Sources;
use crate::install::memory::Announced;
use crate::install::repository::InstallStates;
use crate::install::store::Store;
use crate::install::supervisor::{InstallContext, Supervisor};
use crate::link::mqtt::{self, Command};
use crate::link::spool::Spool;
use crate::link::window::{SeqCounter, WindowStats, now_ms};
use crate::metrics::Metrics;
use crate::offload::OffloadRuntime;
use crate::registry::Registry;
use crate::serve::{self, ApiInner};
use crate::site_cache::{self, SiteCache};

/// Runs the agent until `shutdown` completes, then drains in-flight requests, spools the last
/// telemetry window, publishes offline and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let store = Store::open(&config.store).with_context(|| {
        format!(
            "config field `store`: cannot use {}",
            config.store.display()
        )
    })?;
    // Fail fast on TLS files that do not load.
    mqtt::mqtt_options(&config)?;
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::default());
    let stats = Arc::new(WindowStats::new(now_ms()));
    let backends = crate::backends::available_backends(&config);
    let runtimes: Vec<Runtime> = backends.iter().map(|b| b.runtime()).collect();
    let hello: Arc<dyn Fn() -> Hello + Send + Sync> = {
        let root = store.root().to_path_buf();
        let (device, labels, overrides) = (
            config.device_id.clone(),
            config.labels.clone(),
            config.capabilities.clone(),
        );
        let site_cache_url = config
            .distribution
            .site_cache
            .as_ref()
            .map(|c| c.url.clone());
        Arc::new(move || {
            let detected = capabilities::detect(&root, runtimes.clone());
            let mut hello = capabilities::hello(&device, &labels, detected, &overrides);
            hello.site_cache_url = site_cache_url.clone();
            hello
        })
    };

    let install_states = Arc::new(InstallStates::default());
    let api_state = Arc::new(ApiInner {
        registry: registry.clone(),
        install_states: install_states.clone(),
        metrics: metrics.clone(),
        stats: stats.clone(),
        ready: AtomicBool::new(false),
        permits: Arc::new(Semaphore::new(config.inference_threads)),
        test: config.test.clone(),
        max_body_bytes: config.max_body_bytes,
        offload: OffloadRuntime::new(config.inference_threads)
            .context("building the offload HTTP client")?,
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("config field `listen`: cannot bind {}", config.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    crate::atomic_file::write_atomic(
        &store.root().join("listen-addr"),
        addr.to_string().as_bytes(),
    )?;
    tracing::info!(%addr, device = %config.device_id, "local inference API listening");
    println!("edgefleet-agent listening on http://{addr}");
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server = tokio::spawn(
        axum::serve(listener, serve::router(api_state.clone()))
            .with_graceful_shutdown(async move {
                let _ = stop_rx.changed().await;
            })
            .into_future(),
    );

    let persisted = store.load_state().unwrap_or_else(|e| {
        tracing::error!(error = %e, "persisted state is unreadable; starting empty");
        Default::default()
    });
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let sources = Arc::new(Sources {
        http,
        registry: OciRegistry::new(
            &config.distribution.insecure_registries,
            config.distribution.credentials.clone(),
        ),
    });
    let site_cache = match &config.distribution.site_cache {
        Some(cache) => {
            Some(serve_site_cache(cache, &store, &sources, &metrics, stop_tx.subscribe()).await?)
        }
        None => None,
    };
    let ctx = Arc::new(InstallContext {
        store: store.clone(),
        registry,
        metrics: metrics.clone(),
        sources,
        fetched: Default::default(),
        backends,
        free_limit: config.capabilities.disk_free_mib.map(|mib| mib << 20),
        memory: match config
            .capabilities
            .memory_available_mib
            .or(config.capabilities.memory_mib)
        {
            Some(mib) => Announced::Fixed(mib),
            None => Announced::Detected(capabilities::available_memory_mib),
        },
        trusted_keys: config.trusted_keys.clone(),
        install_states,
    });
    let (events_tx, mut events_rx) = mpsc::channel(256);
    let (desired_tx, mut desired_rx) = mpsc::channel(16);
    let (mqtt_tx, mqtt_rx) = mpsc::channel(64);
    let mut supervisor = Supervisor::new(
        config.device_id.clone(),
        ctx,
        persisted,
        events_tx,
        mqtt_tx.clone(),
    );
    supervisor.restore().await;
    api_state.ready.store(true, Ordering::Release);

    let spool = Spool::open(
        &store.spool_dir(),
        config.spool.max_windows,
        config.spool.max_bytes,
    )
    .context("opening the telemetry spool")?;
    let seq = SeqCounter::open(
        store.root().join("telemetry-seq"),
        spool.max_seq().map_or(0, |s| s + 1),
    )?;
    let link = tokio::spawn(mqtt::run(
        config.clone(),
        hello,
        desired_tx,
        mqtt_rx,
        metrics,
        stats,
        spool,
        seq,
    ));
    supervisor.resume();

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(payload) = desired_rx.recv() => supervisor.on_desired(&payload),
            Some(event) = events_rx.recv() => supervisor.on_event(event),
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within 10s");
    }
    supervisor.abort_all();
    let (done_tx, done_rx) = oneshot::channel();
    if mqtt_tx.send(Command::Shutdown(done_tx)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
    }
    link.abort();
    if let Some(site_cache) = site_cache {
        let _ = tokio::time::timeout(Duration::from_secs(5), site_cache).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves this device's site from `<store>/site-cache` until `stop` turns true.
async fn serve_site_cache(
    config: &SiteCacheConfig,
    store: &Store,
    sources: &Arc<Sources>,
    metrics: &Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let dir = store.root().join("site-cache");
    let cache_store = Store::open(&dir).with_context(|| {
        format!(
            "config field `site_cache_listen`: cannot use {}",
            dir.display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "config field `site_cache_listen`: cannot bind {}",
                config.listen
            )
        })?;
    tracing::info!(listen = %config.listen, url = %config.url, "serving the site cache");
    let cache = SiteCache::new(cache_store, sources.clone(), metrics.clone());
    Ok(tokio::spawn(
        axum::serve(listener, site_cache::router(cache))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .into_future(),
    ))
}
