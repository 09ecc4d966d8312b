//! The processes an end-to-end test runs, each killed when its guard drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, repo_root};

/// A child process with its output in a log file, killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        std::fs::File::create(&log).unwrap();
        Proc::spawn_appending(name, command, &log)
    }

    /// Like [`Proc::spawn`], appending stdout and stderr to `log` (a restarted process keeps
    /// its earlier lines).
    pub fn spawn_appending(name: &str, command: &mut Command, log: &Path) -> Proc {
        let log = log.to_path_buf();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            log,
            name: name.into(),
        }
    }

    /// A finished `true`, standing in until the real process is spawned.
    fn placeholder() -> Proc {
        let mut child = Command::new("true").spawn().unwrap();
        let _ = child.wait();
        Proc {
            child,
            log: PathBuf::new(),
            name: "placeholder".into(),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `grace` before killing.
    pub fn terminate(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// SIGTERM, then how long the process took to exit; `Err` (and a kill) past `limit`.
    pub fn sigterm_exit_time(&mut self, limit: Duration) -> Result<Duration, String> {
        let sent = Instant::now();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        while sent.elapsed() < limit {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return Ok(sent.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!(
            "{} still running {limit:?} after SIGTERM",
            self.name
        ))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} (last lines) ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Builds the binaries under test once per test process and returns their paths.
pub fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINARIES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(repo_root())
            // The same selection as the test script's `cargo build --workspace --bins`, so the
            // dependency features match and this is a no-op there (a narrower selection
            // would rebuild much of the tree with other features).
            .args(["build", "--quiet", "--workspace", "--bins"])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "building edgefleet and edgefleet-agent failed"
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        (
            target.join("debug/edgefleet"),
            target.join("debug/edgefleet-agent"),
        )
    })
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private Mosquitto, so retained messages of other tests never leak in.
pub struct Broker {
    pub port: u16,
    proc: Option<Proc>,
    dir: TempDir,
    /// Listener and security settings; the default is one anonymous plain listener.
    config: Option<String>,
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker {
            port: free_port(),
            proc: None,
            dir,
            config: None,
        };
        broker.restart();
        broker
    }

    /// A broker whose listeners and security come from `config` (persistence is added);
    /// `port` is the one waited for and reported.
    pub fn start_with_config(port: u16, config: &str) -> Broker {
        let mut broker = Broker {
            port,
            proc: None,
            dir: tempfile::tempdir().unwrap(),
            config: Some(config.to_string()),
        };
        broker.restart();
        broker
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// Starts again on the same port (persistence on and saved every second, like a
    /// production broker that must survive a crash with its sessions and retained messages).
    pub fn restart(&mut self) {
        self.stop();
        let conf = self.dir.path().join("mosquitto.conf");
        let listeners = self
            .config
            .clone()
            .unwrap_or_else(|| format!("allow_anonymous true\nlistener {} 127.0.0.1\n", self.port));
        std::fs::write(
            &conf,
            format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\n{listeners}",
                self.dir.path().display(),
            ),
        )
        .unwrap();
        let mut command = Command::new("/usr/sbin/mosquitto");
        command.arg("-c").arg(&conf);
        self.proc = Some(Proc::spawn("mosquitto", &mut command, self.dir.path()));
        wait_port(self.port, "mosquitto");
    }
}

/// The Kubernetes API stand-in (tests/kube-standin) with the real kubectl pointed at it.
pub struct StandIn {
    pub kubeconfig: PathBuf,
    pub port: u16,
    kubectl_bin: PathBuf,
    proc: Proc,
    dir: TempDir,
}

impl StandIn {
    pub fn start() -> StandIn {
        let root = repo_root();
        let python =
            run_stdout(Command::new("bash").arg(root.join("tests/kube-standin/ensure-venv.sh")));
        let tools =
            run_stdout(Command::new("bash").arg(root.join("tests/tools/install-k8s-tools.sh")));
        let kubectl_bin =
            PathBuf::from(tools.lines().last().unwrap_or_default().trim()).join("kubectl");
        assert!(
            kubectl_bin.is_file(),
            "kubectl not installed at {}",
            kubectl_bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let kubeconfig = dir.path().join("kubeconfig");
        let mut command = Command::new(python.trim());
        command
            .arg(root.join("tests/kube-standin/standin.py"))
            .args(["--port", "0", "--port-file"])
            .arg(&port_file)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--log-requests")
            .arg(dir.path().join("requests.jsonl"));
        let proc = Proc::spawn("kube-standin", &mut command, dir.path());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(port_file.is_file() && kubeconfig.is_file()) {
            assert!(
                Instant::now() < deadline,
                "stand-in did not start\n{}",
                proc.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = std::fs::read_to_string(&port_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        StandIn {
            kubeconfig,
            port,
            kubectl_bin,
            proc,
            dir,
        }
    }

    /// Starts the stand-in and registers the project's generated ModelDeployment CRD.
    pub fn start_with_crd() -> StandIn {
        let standin = StandIn::start();
        let crd = repo_root().join("crds/modeldeployment.yaml");
        standin.kubectl_ok(&["apply", "-f", &crd.to_string_lossy()], None);
        standin.kubectl_ok(
            &[
                "wait",
                "--for=condition=Established",
                "crd/modeldeployments.edgefleet.io",
            ],
            None,
        );
        standin
    }

    /// Kills the API server (it does not come back).
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl_bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("kcache"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl and returns stdout; panics with stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Makes every API request fail with 503 for `seconds` (watches already open stay open).
    pub async fn outage(&self, seconds: u64) {
        let response = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/__standin/outage?seconds={seconds}",
                self.port
            ))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    /// The API requests made so far (the stand-in's --log-requests file).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn run_stdout(command: &mut Command) -> String {
    let out = command.stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "{command:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// An `edgefleet run` process against the stand-in.
pub struct ControllerProc {
    pub proc: Proc,
    pub listen: SocketAddr,
}

impl ControllerProc {
    pub fn start(
        standin: &StandIn,
        database_url: &str,
        broker: &str,
        identity: &str,
        log_dir: &Path,
    ) -> ControllerProc {
        Self::start_with_env(standin, database_url, broker, identity, log_dir, &[])
    }

    /// Like `start`, with extra environment (TLS files, leader election timing, ...).
    pub fn start_with_env(
        standin: &StandIn,
        database_url: &str,
        broker: &str,
        identity: &str,
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> ControllerProc {
        let (edgefleet, _) = crate::binaries();
        let port = free_port();
        let mut command = Command::new(edgefleet);
        command
            .arg("run")
            .env("KUBECONFIG", &standin.kubeconfig)
            .env("EDGEFLEET_DATABASE_URL", database_url)
            .env("EDGEFLEET_BROKER", broker)
            .env("EDGEFLEET_LISTEN", format!("127.0.0.1:{port}"))
            .env("EDGEFLEET_MQTT_CLIENT_ID", format!("controller-{identity}"))
            .env("EDGEFLEET_IDENTITY", identity)
            .env("EDGEFLEET_TELEMETRY_SLICE_SECONDS", "1")
            .env("RUST_LOG", "info,kube=warn,edgefleet_controller=debug")
            .envs(env.iter().copied());
        let proc = Proc::spawn(&format!("controller-{identity}"), &mut command, log_dir);
        wait_port(port, "controller");
        ControllerProc {
            proc,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.listen))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Capabilities an agent pretends to have.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    pub id: String,
    pub arch: &'static str,
    pub memory_mib: u64,
    pub labels: &'static str,
    pub extra_latency_ms: u64,
}

/// An `edgefleet-agent` process with its own model store.
pub struct AgentProc {
    pub proc: Proc,
    pub device: DeviceSpec,
    pub api: SocketAddr,
    pub store: TempDir,
    broker: String,
    log_dir: PathBuf,
    env: Vec<(String, String)>,
    starts: u32,
}

impl AgentProc {
    pub fn start(device: &DeviceSpec, broker: &str, log_dir: &Path) -> AgentProc {
        Self::start_with_env(device, broker, log_dir, &[])
    }

    /// Like `start`, with extra environment (e.g. the agent's latency test knobs).
    pub fn start_with_env(
        device: &DeviceSpec,
        broker: &str,
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> AgentProc {
        let mut agent = AgentProc {
            proc: Proc::placeholder(),
            device: device.clone(),
            api: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: tempfile::tempdir().unwrap(),
            broker: broker.to_string(),
            log_dir: log_dir.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts: 0,
        };
        agent.spawn();
        agent
    }

    /// SIGKILL (no chance to clean up), then start again on the same model store.
    pub fn kill_and_restart(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_file(self.store.path().join("listen-addr"));
        self.spawn();
    }

    /// SIGKILL and stay down.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let (device, broker, log_dir) = (&self.device, &self.broker, &self.log_dir);
        let store = &self.store;
        let (_, agent) = crate::binaries();
        let mut command = Command::new(agent);
        command
            .env("EDGEFLEET_AGENT_DEVICE_ID", &device.id)
            .env("EDGEFLEET_AGENT_BROKER", broker)
            .env("EDGEFLEET_AGENT_STORE", store.path())
            .env("EDGEFLEET_AGENT_LISTEN", "127.0.0.1:0")
            .env("EDGEFLEET_AGENT_LABELS", device.labels)
            .env("EDGEFLEET_AGENT_ARCH", device.arch)
            .env("EDGEFLEET_AGENT_MEMORY_MIB", device.memory_mib.to_string())
            .env(
                "EDGEFLEET_AGENT_MEMORY_AVAILABLE_MIB",
                (device.memory_mib / 2).to_string(),
            )
            .env("EDGEFLEET_AGENT_CPU_FEATURES", "")
            .env("EDGEFLEET_AGENT_ACCELERATORS", "")
            .env("EDGEFLEET_AGENT_TELEMETRY_INTERVAL_SECS", "1")
            .env("EDGEFLEET_AGENT_BACKOFF_MAX_MS", "1000")
            .env(
                "EDGEFLEET_AGENT_EXTRA_LATENCY_MS",
                device.extra_latency_ms.to_string(),
            )
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let name = match self.starts {
            1 => format!("agent-{}", device.id),
            n => format!("agent-{}-{n}", device.id),
        };
        let proc = Proc::spawn(&name, &mut command, log_dir);
        let addr_file = store.path().join("listen-addr");
        let deadline = Instant::now() + Duration::from_secs(30);
        let api = loop {
            if let Some(addr) = std::fs::read_to_string(&addr_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break addr;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} did not start\n{}",
                device.id,
                proc.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        self.proc = proc;
        self.api = api;
    }

    /// The agent's own Prometheus metrics (empty when it does not answer).
    pub async fn metrics(&self) -> String {
        match reqwest::get(format!("http://{}/metrics", self.api)).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// `GET /v2/models/{name}` on the agent's local API, if it serves the model.
    pub async fn model(&self, name: &str) -> Option<serde_json::Value> {
        let response = reqwest::get(format!("http://{}/v2/models/{name}", self.api))
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// One inference through the local API with every input element set to `fill`.
    pub async fn infer(
        &self,
        name: &str,
        input: &str,
        shape: &[usize],
        fill: f32,
    ) -> Result<serde_json::Value, String> {
        let count: usize = shape.iter().product();
        let body = serde_json::json!({
            "inputs": [{"name": input, "shape": shape, "datatype": "FP32", "data": vec![fill; count]}]
        });
        let client = reqwest::Client::new();
        let response = client
            .post(format!("http://{}/v2/models/{name}/infer", self.api))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let value: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!("{status}: {value}"))
        }
    }
}

/// (path, Range header) of each request an [`ArtifactServer`] received.
type RequestLog = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

/// Serves a directory over HTTP (with Range, for resumable downloads) on a free port. Every
/// request's path and Range header is logged; `throttle` slows bodies down so a test can
/// interrupt a download halfway.
pub struct ArtifactServer {
    pub base_url: String,
    pub dir: TempDir,
    requests: RequestLog,
    bytes_per_second: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cuts: Cuts,
    sent_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Per file name: drop the connection after this many body bytes, once.
type Cuts = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

impl ArtifactServer {
    pub async fn start() -> ArtifactServer {
        use futures_util::StreamExt as _;
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: RequestLog = Default::default();
        let bytes_per_second = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let cuts: Cuts = Default::default();
        let sent_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (log, rate, cut) = (requests.clone(), bytes_per_second.clone(), cuts.clone());
        let sent = sent_bytes.clone();
        let app = axum::Router::new()
            .fallback_service(tower_http::services::ServeDir::new(dir.path()))
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let name = request.uri().path().trim_start_matches('/').to_string();
                    let after = cut.lock().unwrap().remove(&name);
                    let sent = sent.clone();
                    async move { cut_body(next.run(request).await, after, sent) }
                },
            ))
            .layer(axum::middleware::map_request(
                move |request: axum::extract::Request| {
                    let range = request
                        .headers()
                        .get("range")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    log.lock()
                        .unwrap()
                        .push((request.uri().path().to_string(), range));
                    std::future::ready(request)
                },
            ))
            .layer(axum::middleware::map_response(
                move |response: axum::response::Response| {
                    let rate = rate.load(Ordering::Relaxed);
                    std::future::ready(if rate == 0 {
                        response
                    } else {
                        let (parts, body) = response.into_parts();
                        let slow = body.into_data_stream().then(move |chunk| async move {
                            if let Ok(bytes) = &chunk {
                                let secs = bytes.len() as f64 / rate as f64;
                                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                            }
                            chunk
                        });
                        axum::response::Response::from_parts(
                            parts,
                            axum::body::Body::from_stream(slow),
                        )
                    })
                },
            ));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ArtifactServer {
            base_url: format!("http://{addr}"),
            dir,
            requests,
            bytes_per_second,
            cuts,
            sent_bytes,
        }
    }

    /// Body bytes sent so far, of every response (cut ones up to the cut).
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The next response for `name` sends `after` body bytes, then drops the connection.
    pub fn cut_once(&self, name: &str, after: usize) {
        self.cuts.lock().unwrap().insert(name.to_string(), after);
    }

    /// Requests served so far, of any file.
    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Publishes `bytes` as `name`; returns its URI.
    pub fn add(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
        self.put(name, bytes.as_ref()).0
    }

    /// Limits every response body to about `bytes_per_second` (0: unlimited).
    pub fn throttle(&self, bytes_per_second: u64) {
        self.bytes_per_second
            .store(bytes_per_second, std::sync::atomic::Ordering::Relaxed);
    }

    /// Range headers of the requests for `name` so far (None: a whole-file request).
    pub fn ranges(&self, name: &str) -> Vec<Option<String>> {
        let path = format!("/{name}");
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, range)| range.clone())
            .collect()
    }

    /// Publishes `bytes` as `name`; returns (uri, sha256, size).
    pub fn put(&self, name: &str, bytes: &[u8]) -> (String, String, u64) {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        (
            format!("{}/{name}", self.base_url),
            crate::sha256_hex(bytes),
            bytes.len() as u64,
        )
    }
}

/// `response` with its body bytes counted into `sent` and, with `after`, cut after that many
/// bytes by an error, which drops the connection.
fn cut_body(
    response: axum::response::Response,
    after: Option<usize>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> axum::response::Response {
    use futures_util::StreamExt as _;
    let (parts, body) = response.into_parts();
    let mut left = after.unwrap_or(usize::MAX);
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        if left == 0 {
            return Err(std::io::Error::other("injected connection drop"));
        }
        let take = left.min(chunk.len());
        left -= take;
        sent.fetch_add(take as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(chunk.slice(..take))
    });
    // stop after the first error: the body ends there, short of its Content-Length
    let stream = stream.scan(false, |failed, item| {
        let emit = !*failed;
        *failed |= item.is_err();
        std::future::ready(emit.then_some(item))
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from_stream(stream))
}
