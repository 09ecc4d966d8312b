//! `--ingest-workers N`: `edgefleet ingest` processes beside the controller, on its database
//! and broker, sharing telemetry with it through an MQTT 5 shared subscription. Ingest figures
//! then add up every replica's counters.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::probe;

/// The share group the controller and its workers name.
pub const SHARE_GROUP: &str = "edgefleet-sim";

pub struct Worker {
    child: Child,
    metrics_url: String,
}

#[derive(Default)]
pub struct Workers(Vec<Worker>);

/// Waits up to 30 s for `base`/readyz to answer 200 while `child` (`what`) keeps running.
pub async fn wait_ready(child: &mut Child, base: &str, what: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!("{what} exited ({status})");
        }
        let ready = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} was not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Workers {
    /// Starts `count` workers and waits until each is ready.
    pub async fn start(
        count: usize,
        bin: &Path,
        database_url: &str,
        broker_port: u16,
        dir: &Path,
    ) -> anyhow::Result<Workers> {
        let mut workers = Workers::default();
        for index in 0..count {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let log: PathBuf = dir.join(format!("ingest-{index}.log"));
            let file = std::fs::File::create(&log)?;
            let child = Command::new(bin)
                .arg("ingest")
                .args(["--database-url", database_url])
                .args(["--broker", &format!("mqtt://127.0.0.1:{broker_port}")])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--mqtt-client-id", &format!("edgefleet-sim-ingest-{index}")])
                .args(["--telemetry-share-group", SHARE_GROUP])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()
                .with_context(|| format!("starting {} ingest", bin.display()))?;
            let base = format!("http://127.0.0.1:{port}");
            let mut worker = Worker {
                child,
                metrics_url: format!("{base}/metrics"),
            };
            let what = format!("ingest worker {index} (see {})", log.display());
            let ready = wait_ready(&mut worker.child, &base, &what).await;
            workers.0.push(worker); // stopped with the others even when it never became ready
            ready?;
        }
        Ok(workers)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Every worker's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<Vec<String>> {
        let mut texts = Vec::new();
        for worker in &self.0 {
            texts.push(reqwest::get(&worker.metrics_url).await?.text().await?);
        }
        Ok(texts)
    }

    /// CPU seconds of all workers together.
    pub fn cpu_seconds(&self, ticks: f64) -> f64 {
        self.0
            .iter()
            .filter_map(|w| probe::sample(w.child.id(), ticks))
            .map(|s| s.cpu_seconds)
            .sum()
    }

    pub fn stop(&mut self) {
        for worker in &mut self.0 {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}
