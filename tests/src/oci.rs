//! OCI registry helpers for the model-pull tests: artifacts pushed with a real OCI client
//! (`tests/tools/oci-push.py`, the `oras` package) to the registries `scripts/lib.sh
//! ensure_registry` runs — 127.0.0.1:5000 anonymous, 127.0.0.1:5001 basic auth — and a
//! throttling TCP proxy that makes a pull slow enough to kill an agent in the middle of it.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ANONYMOUS: &str = "127.0.0.1:5000";
pub const BASIC_AUTH: &str = "127.0.0.1:5001";
pub const USER: &str = "edgefleet";
pub const PASSWORD: &str = "edgefleet-pass";

/// What a push made.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// Lower-case hex sha256 of the one layer: the file.
    pub layer_sha256: String,
    pub size: u64,
}

impl Pushed {
    /// `oci://registry/repo@sha256:<manifest>`.
    pub fn by_digest(&self, registry: &str, repo: &str) -> String {
        format!("oci://{registry}/{repo}@{}", self.manifest_digest)
    }
}

fn tool(args: &[&str]) -> serde_json::Value {
    let script = crate::repo_root().join("tests/tools/oci-push.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "oci-push.py {args:?} failed (is the registry up? `source scripts/lib.sh && ensure_registry`): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("oci-push.py prints JSON")
}

fn credentials(registry: &str) -> Vec<&'static str> {
    if registry == BASIC_AUTH {
        vec!["--username", USER, "--password", PASSWORD]
    } else {
        Vec::new()
    }
}

/// Pushes `file` as `registry/repo:tag` (credentials for the basic-auth registry included).
pub fn push(registry: &str, repo: &str, tag: &str, file: &Path) -> Pushed {
    let file = file.display().to_string();
    let mut args = vec![
        "--registry",
        registry,
        "--repo",
        repo,
        "--tag",
        tag,
        "--file",
        &file,
    ];
    args.extend(credentials(registry));
    let answer = tool(&args);
    Pushed {
        manifest_digest: answer["manifest_digest"].as_str().unwrap().to_string(),
        layer_sha256: answer["layer_digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string(),
        size: answer["size"].as_u64().unwrap(),
    }
}

/// Deletes blob `sha256` (hex) from `registry/repo`.
pub fn delete_blob(registry: &str, repo: &str, sha256: &str) {
    let digest = format!("sha256:{sha256}");
    let mut args = vec![
        "--registry",
        registry,
        "--repo",
        repo,
        "--delete-blob",
        &digest,
    ];
    args.extend(credentials(registry));
    tool(&args);
}

/// A docker `config.json` for the basic-auth registry with `password`, written to `dir`.
pub fn auth_file(dir: &Path, password: &str) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join(format!(
        "registry-auth-{}.json",
        crate::sha256_hex(password.as_bytes())
    ));
    let body = serde_json::json!({
        "auths": {BASIC_AUTH: {"username": USER, "password": password}}
    });
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(body.to_string().as_bytes()).unwrap();
    path
}

/// A unique repository name, so parallel tests never share tags.
pub fn unique_repo(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "edgefleet-tests/{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Forwards TCP to `upstream`, sending the upstream's bytes back at `bytes_per_second`, and
/// keeps what clients sent (their HTTP requests) for the test to read.
pub struct SlowProxy {
    pub port: u16,
    requests: Arc<Mutex<Vec<u8>>>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    pub async fn start(upstream: &str, bytes_per_second: u64) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_string();
        let (seen, counted) = (requests.clone(), sent.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, seen, counted) = (upstream.clone(), seen.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = client_read.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            seen.lock().unwrap().extend_from_slice(&buf[..n]);
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let chunk = 16 * 1024;
                    let pause = Duration::from_secs_f64(chunk as f64 / bytes_per_second as f64);
                    let mut buf = vec![0u8; chunk];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 || client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        counted.fetch_add(n as u64, Ordering::Relaxed);
                        tokio::time::sleep(pause).await;
                    }
                    up.abort();
                });
            }
        });
        SlowProxy {
            port,
            requests,
            sent,
            task,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes the upstream sent through the proxy (responses, headers included).
    pub fn sent_bytes(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Every `Range: bytes=N-` the clients asked for, in order.
    pub fn range_starts(&self) -> Vec<u64> {
        let text = String::from_utf8_lossy(&self.requests.lock().unwrap()).to_lowercase();
        text.split("range: bytes=")
            .skip(1)
            .filter_map(|rest| rest.split('-').next()?.trim().parse().ok())
            .collect()
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
