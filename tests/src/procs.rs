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
        let file = std::fs::File::create(&log).unwrap();
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
            .args([
                "build",
                "--quiet",
                "--bin",
                "edgefleet",
                "--bin",
                "edgefleet-agent",
            ])
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
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker {
            port: free_port(),
            proc: None,
            dir,
        };
        broker.restart();
        broker
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    /// Starts again on the same port (persistence on, like a production broker).
    pub fn restart(&mut self) {
        self.stop();
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "allow_anonymous true\npersistence true\npersistence_location {}/\nlistener {} 127.0.0.1\nmax_queued_messages 100000\n",
                self.dir.path().display(),
                self.port
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
    _proc: Proc,
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
            _proc: proc,
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
            .env("RUST_LOG", "info,kube=warn,edgefleet_controller=debug");
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
        let store = tempfile::tempdir().unwrap();
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
            .envs(env.iter().copied());
        let proc = Proc::spawn(&format!("agent-{}", device.id), &mut command, log_dir);
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
        AgentProc {
            proc,
            device: device.clone(),
            api,
            store,
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

/// Serves a directory over HTTP (with Range, for resumable downloads) on a free port.
pub struct ArtifactServer {
    pub base_url: String,
    pub dir: TempDir,
}

impl ArtifactServer {
    pub async fn start() -> ArtifactServer {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app =
            axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir.path()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ArtifactServer {
            base_url: format!("http://{addr}"),
            dir,
        }
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
