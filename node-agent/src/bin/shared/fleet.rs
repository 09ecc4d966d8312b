//! Running agents for the bench binaries (included with `#[path]`; not a binary of its own):
//! a broker, a file server, agents with fresh stores, an MQTT client that plays the controller.
// each bench uses part of it
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use rumqttc::{AsyncClient, MqttOptions};

pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The given broker, the usual local one, or a private Mosquitto (killed with the guard).
pub async fn broker(given: Option<String>, work: &Path) -> anyhow::Result<(String, Option<Kill>)> {
    if let Some(b) = given {
        return Ok((b, None));
    }
    if std::net::TcpStream::connect("127.0.0.1:1883").is_ok() {
        return Ok(("mqtt://127.0.0.1:1883".into(), None));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = work.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )?;
    let private = Kill(
        Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((format!("mqtt://127.0.0.1:{port}"), Some(private)))
}

/// Serves `files` by name over HTTP, as a model repository would.
pub async fn serve_files(
    files: std::sync::Arc<std::collections::HashMap<String, Bytes>>,
) -> anyhow::Result<std::net::SocketAddr> {
    let app = axum::Router::new().route(
        "/{name}",
        axum::routing::get(
            move |axum::extract::Path(name): axum::extract::Path<String>| {
                let files = files.clone();
                async move {
                    files
                        .get(&name)
                        .cloned()
                        .ok_or(axum::http::StatusCode::NOT_FOUND)
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// A bench agent with an empty store: killed when dropped.
pub struct BenchAgent {
    /// Kills the agent when dropped.
    pub process: Kill,
    pub pid: u32,
    /// Its local API, `host:port`.
    pub addr: String,
}

/// Starts `edgefleet-agent` as `device` on `broker` with a fresh `store`, waits for its API.
pub async fn start_agent(
    agent: &Path,
    intra_op_threads: usize,
    device: &str,
    broker: &str,
    store: &Path,
    extra: &[&std::ffi::OsStr],
) -> anyhow::Result<BenchAgent> {
    let process = Kill(
        Command::new(agent)
            .args([
                "--device-id",
                device,
                "--broker",
                broker,
                "--listen",
                "127.0.0.1:0",
                "--intra-op-threads",
                &intra_op_threads.to_string(),
            ])
            .args(extra)
            .arg("--store")
            .arg(store)
            .env("EDGEFLEET_AGENT_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let pid = process.0.id();
    let addr = loop {
        if let Ok(s) = std::fs::read_to_string(store.join("listen-addr")) {
            break s.trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(BenchAgent { process, pid, addr })
}

/// An MQTT client that plays the controller for `device` (its event loop polled in the
/// background until the returned task is aborted or the broker goes away).
pub fn control_client(
    device: &str,
    broker: &str,
) -> anyhow::Result<(AsyncClient, tokio::task::JoinHandle<()>)> {
    let port: u16 = broker.rsplit(':').next().unwrap_or("1883").parse()?;
    let mut o = MqttOptions::new(format!("{device}-ctl"), "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    Ok((client, poller))
}

/// Waits up to two minutes for the agent at `addr` to serve `model`.
pub async fn wait_ready(http: &reqwest::Client, addr: &str, model: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = http
            .get(format!("http://{addr}/v2/models/{model}"))
            .send()
            .await?;
        if r.status().is_success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{model} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
