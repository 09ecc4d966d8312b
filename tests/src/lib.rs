//! Harness for EdgeFleet's end-to-end tests: real processes (controller, agents, Mosquitto,
//! the Kubernetes API stand-in, kubectl) on loopback, each on a free port, killed on drop.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod netfault;
pub mod oci;
pub mod orientation;
pub mod pki;
pub mod procs;
pub mod prometheus;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use netfault::{Partition, deployment_metric, metric_sum};
pub use procs::*;
pub use prometheus::{LLM_ROW, PanelQuery, Prometheus, dashboard_queries};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn models_dir() -> PathBuf {
    std::env::var_os("EDGEFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/edgefleet/models")
        })
}

/// A model from the cache that `tests/tools/fetch-models.sh` fills; fails loudly when absent.
/// `libonnxruntime.so` from the PyPI `onnxruntime` wheel that `tests/tools/fetch-models.sh`
/// installs (its compress venv), or `EDGEFLEET_AGENT_ONNXRUNTIME_LIB`.
pub fn onnxruntime_lib() -> PathBuf {
    if let Some(lib) = std::env::var_os("EDGEFLEET_AGENT_ONNXRUNTIME_LIB") {
        return PathBuf::from(lib);
    }
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let venv_lib = home.join(".cache/edgefleet/tools/compress-venv/lib");
    let found = std::fs::read_dir(&venv_lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/onnxruntime/capi"))
        .flat_map(|capi| std::fs::read_dir(capi).into_iter().flatten().flatten())
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        });
    found.unwrap_or_else(|| {
        panic!(
            "no libonnxruntime.so under {}: run tests/tools/fetch-models.sh, or set EDGEFLEET_AGENT_ONNXRUNTIME_LIB",
            venv_lib.display()
        )
    })
}

pub fn model(name: &str) -> PathBuf {
    let path = models_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run tests/tools/fetch-models.sh",
        path.display()
    );
    path
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Whether something listens on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some`, or panics with `what` and the last observation.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(observed) => observed,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A throw-away PostgreSQL database on 127.0.0.1:5432 (or `EDGEFLEET_TEST_POSTGRES`).
pub struct TempPostgres {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TempPostgres {
    pub async fn create(purpose: &str) -> TempPostgres {
        use sqlx::Connection;
        let admin_url = std::env::var("EDGEFLEET_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("edgefleet_e2e_{purpose}_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432 (scripts/test.sh starts it)");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap();
        TempPostgres {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        }
    }

    /// Every device's desired document as the controller stored it: device → (generation, json).
    pub async fn desired_documents(&self) -> std::collections::BTreeMap<String, (i64, String)> {
        use sqlx::{Connection, Row};
        let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::query("SELECT device_id, generation, document_json FROM device_desired")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    (r.get::<i64, _>(1), r.get::<String, _>(2)),
                )
            })
            .collect()
    }

    /// Inference requests in the telemetry roll-ups every replica wrote, and the number of
    /// writers (replica runs) that wrote them.
    pub async fn rolled_up_requests(&self) -> (u64, usize) {
        use sqlx::{Connection, Row};
        let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
        let rows = sqlx::query("SELECT writer, window_json FROM cohort_rollups")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let mut writers = std::collections::BTreeSet::new();
        let mut requests = 0;
        for row in rows {
            writers.insert(row.get::<String, _>(0));
            let window: serde_json::Value = serde_json::from_str(&row.get::<String, _>(1)).unwrap();
            requests += window["requests"].as_u64().unwrap_or(0);
        }
        (requests, writers.len())
    }

    pub async fn drop(self) {
        use sqlx::Connection;
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
    }
}

/// The `variants:` entry (2-space indented YAML) of PyPI's SmolLM2-135M Q4_1 GGUF served at
/// `uri`, for deployments the language-model tests apply.
pub fn smollm2_q4_1_variant(uri: &str, sha256: &str, size_bytes: u64) -> String {
    format!(
        "  - name: q4-1
    format: gguf
    runtime: llamacpp
    precision: int4
    gguf: {{quantization: Q4_1, layers: 30, embeddingLength: 576, heads: 9, kvHeads: 3}}
    artifact: {{uri: \"{uri}\", sha256: \"{sha256}\", sizeBytes: {size_bytes}}}"
    )
}
