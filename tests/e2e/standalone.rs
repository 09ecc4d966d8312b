//! Standalone mode end to end: `edgefleet demo --short` (embedded broker, SQLite, artifact
//! server, real agents, the real CNN in three variants, a canary rollout), `demo --llm` (the
//! chat model in two quantizations on real llama.cpp agents), and the CLI verbs
//! against `edgefleet up`, including refused manifests.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use edgefleet_e2e::*;

/// The variant each demo device's capabilities call for (fp32 on x86_64 with >= 2 GiB, the
/// fp32 build on an nvidia accelerator, fp16 from 512 MiB, int8 on x86_64/aarch64 from 256 MiB).
fn expected_variant(arch: &str, memory_mib: u64, accelerators: &[&str]) -> Option<&'static str> {
    match (arch, memory_mib) {
        ("x86_64", m) if m >= 2048 => Some("fp32"),
        (_, m) if m >= 2048 && accelerators.contains(&"nvidia") => Some("fp32-accel"),
        (_, m) if m >= 512 => Some("fp16"),
        ("x86_64" | "aarch64", m) if m >= 256 => Some("int8"),
        _ => None,
    }
}

#[test]
fn demo_short_rolls_out_every_variant_and_reports_the_no_fit_device() {
    model("orientation.onnx");
    let (edgefleet, agent) = binaries();
    let out = Command::new(edgefleet)
        .args([
            "demo",
            "--short",
            "--output",
            "json",
            "--timeout-seconds",
            "300",
        ])
        .arg("--agent-bin")
        .arg(agent)
        .env("EDGEFLEET_MODELS", models_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    assert_eq!(summary["deployment"]["phase"], "Succeeded", "{summary:#}");
    assert_eq!(
        summary["deployment"]["targetVersion"], "2.0.0",
        "{summary:#}"
    );
    let steps: Vec<u64> = summary["stepsObserved"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_u64())
        .collect();
    assert!(
        steps.contains(&1) && steps.contains(&2),
        "both canary steps observed: {steps:?}"
    );

    let devices = summary["devices"].as_array().unwrap();
    assert!(devices.len() >= 5, "{summary:#}");
    let mut no_fit = 0;
    for device in devices {
        let accelerators: Vec<&str> = device["accelerators"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let expected = expected_variant(
            device["arch"].as_str().unwrap(),
            device["memoryMib"].as_u64().unwrap(),
            &accelerators,
        );
        match expected {
            Some(variant) => {
                assert_eq!(device["variant"], variant, "{device:#}");
                assert_eq!(device["state"], "Ready", "{device:#}");
                assert_eq!(device["version"], "2.0.0", "{device:#}");
                assert!(
                    device["requests"].as_u64().unwrap() > 0,
                    "load reached {device:#}"
                );
            }
            None => {
                no_fit += 1;
                assert_eq!(device["noFit"], true, "{device:#}");
                assert!(
                    device["noFitReason"]
                        .as_str()
                        .unwrap()
                        .contains("no variant fits"),
                    "{device:#}"
                );
                assert!(device["variant"].is_null(), "{device:#}");
            }
        }
    }
    assert_eq!(no_fit, 1, "exactly one device fits nothing: {summary:#}");
    assert_eq!(summary["deployment"]["devices"]["noFit"], 1);
}

/// `edgefleet demo --llm`: the chat model in two quantizations split by memory class, a
/// canary judged on time to first token and decode speed, one streamed answer.
#[test]
fn demo_llm_splits_quantizations_by_memory_and_reports_ttft_per_cohort() {
    model("smollm2-135m-instruct-q4_1.gguf");
    let (edgefleet, agent) = binaries();
    let out = Command::new(edgefleet)
        .args(["demo", "--llm", "--short", "--output", "json"])
        .args(["--timeout-seconds", "300"])
        .arg("--agent-bin")
        .arg(agent)
        .env("EDGEFLEET_MODELS", models_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo --llm failed: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"]["phase"], "Succeeded", "{summary:#}");
    assert_eq!(summary["status"]["targetVersion"], "0.1.3", "{summary:#}");
    for device in summary["devices"].as_array().unwrap() {
        let runs = device["runs"][0].as_str().unwrap();
        let want = if device["memoryMib"].as_u64().unwrap() >= 4096 {
            "q4-1"
        } else {
            "q2-k"
        };
        assert!(runs.contains(&format!("0.1.3 {want} Ready")), "{device}");
    }
    let cohorts = summary["canaryCohorts"].as_array().unwrap();
    assert_eq!(cohorts.len(), 2, "one canary cohort per class: {cohorts:?}");
    for cohort in cohorts {
        assert_eq!(cohort["verdict"], "Pass", "{cohort}");
        assert!(cohort["p95TtftMs"].as_f64().unwrap() > 0.0, "{cohort}");
        assert!(
            cohort["decodeTokensPerSecond"].as_f64().unwrap() > 10.0,
            "{cohort}"
        );
    }
    let streamed = &summary["streamed"];
    assert!(streamed["tokens"].as_u64().unwrap() > 8, "{streamed}");
    assert!(!streamed["text"].as_str().unwrap().is_empty(), "{streamed}");
    assert!(stderr.contains("streaming one answer from"), "{stderr}");
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "edgefleet up did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cli(data_dir: &Path, server: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let (edgefleet, _) = binaries();
    let mut child = Command::new(edgefleet)
        .args(args)
        .env("EDGEFLEET_SERVER", server)
        .env("EDGEFLEET_DATA_DIR", data_dir)
        .env_remove("EDGEFLEET_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

const VALID: &str = r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {name: cli-demo}
spec:
  model: {name: m, version: "1.0.0"}
  variants:
  - name: fp32
    precision: fp32
    artifact: {uri: "http://127.0.0.1:1/m.onnx", sha256: "0000000000000000000000000000000000000000000000000000000000000000", sizeBytes: 10}
"#;

#[test]
fn cli_refuses_bad_manifests_naming_the_field_and_stores_nothing() {
    let data = tempfile::tempdir().unwrap();
    let (edgefleet, _) = binaries();
    let port = free_port();
    let mut command = Command::new(edgefleet);
    command
        .arg("up")
        .env("EDGEFLEET_DATA_DIR", data.path())
        .env("EDGEFLEET_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "EDGEFLEET_MQTT_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        );
    let up = Proc::spawn("edgefleet-up", &mut command, data.path());
    wait_port(port);
    let server = format!("http://127.0.0.1:{port}");
    let fail = |what: &str| format!("{what}\n{}", up.log_tail());

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "token is private");
    }

    let cases = [
        ("spec: [unclosed", "not valid YAML"),
        (
            &*VALID.replace("  variants:", "  replicas: 3\n  variants:"),
            "replicas",
        ),
        (
            &*format!("{VALID}  rollout:\n    steps: [{{percent: 150}}]\n"),
            "spec.rollout.steps[0].percent",
        ),
    ];
    for (manifest, field) in cases {
        let out = cli(data.path(), &server, &["apply", "-f", "-"], Some(manifest));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{}",
            fail(&format!("accepted: {manifest}"))
        );
        assert!(
            stderr.contains(field),
            "{}",
            fail(&format!("error does not name {field}: {stderr}"))
        );
        assert!(stderr.contains("nothing was stored"), "{stderr}");
    }
    let out = cli(data.path(), &server, &["get", "md"], None);
    assert!(
        out.status.success(),
        "{}",
        fail(&String::from_utf8_lossy(&out.stderr))
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "nothing stored"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("No resources found"));

    // a wrong token is refused
    let out = cli(
        data.path(),
        &server,
        &["get", "md", "--token", "nope"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));

    // `get md -w` watches it come and go
    let mut watcher = Watcher::start(&server, data.path());
    watcher.wait_for("the table's header", |out| out.starts_with("NAME"));

    // the good manifest goes in, shows up, and goes away
    let file = data.path().join("md.yaml");
    std::fs::write(&file, VALID).unwrap();
    let out = cli(
        data.path(),
        &server,
        &["apply", "-f", file.to_str().unwrap()],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        fail(&String::from_utf8_lossy(&out.stderr))
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("modeldeployment.edgefleet.io/cli-demo created")
    );
    // (the CLI calls below take milliseconds: without this the row could come and go
    // between two polls)
    watcher.wait_for("cli-demo", |out| out.contains("\ncli-demo"));
    let out = cli(data.path(), &server, &["get", "md"], None);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("NAME") && table.contains("cli-demo"),
        "{table}"
    );
    for column in [
        "PHASE", "STEP", "MATCHED", "UPDATED", "READY", "FAILED", "AGE",
    ] {
        assert!(table.contains(column), "{table}");
    }
    let out = cli(
        data.path(),
        &server,
        &["get", "md", "cli-demo", "-o", "json"],
        None,
    );
    let md: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(md["metadata"]["generation"], 1);
    let out = cli(data.path(), &server, &["describe", "md", "cli-demo"], None);
    assert!(
        out.status.success(),
        "{}",
        fail(&String::from_utf8_lossy(&out.stderr))
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Rollout history:"));
    let out = cli(data.path(), &server, &["get", "devices"], None);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ID"));
    let out = cli(data.path(), &server, &["delete", "md", "cli-demo"], None);
    assert!(
        out.status.success(),
        "{}",
        fail(&String::from_utf8_lossy(&out.stderr))
    );
    watcher.wait_for("cli-demo deleted", |out| out.contains("Deleted"));
    watcher.saw_it_come_and_go();
    let out = cli(data.path(), &server, &["get", "md", "cli-demo"], None);
    assert!(!out.status.success(), "deleted");
}

/// `edgefleet get md -w` running, its output collected as it comes.
struct Watcher {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Vec<u8>>,
    out: String,
    stderr: std::path::PathBuf,
}

impl Watcher {
    fn start(server: &str, data_dir: &Path) -> Watcher {
        let mut child = Command::new(&binaries().0)
            .args(["get", "md", "-w", "--watch-interval-ms", "100"])
            .env("EDGEFLEET_SERVER", server)
            .env("EDGEFLEET_DATA_DIR", data_dir)
            .env_remove("EDGEFLEET_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(data_dir.join("watch.err")).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buffer) {
                if n == 0 || tx.send(buffer[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Watcher {
            child,
            lines,
            out: String::new(),
            stderr: data_dir.join("watch.err"),
        }
    }

    fn wait_for(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&self.out) {
            assert!(
                Instant::now() < deadline,
                "watch: no {what} in {:?}; its stderr: {}",
                self.out,
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
            if let Ok(bytes) = self.lines.recv_timeout(Duration::from_millis(200)) {
                self.out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }

    /// The table, a line when cli-demo appeared and one when it was deleted, and nothing for
    /// the polls in between when nothing changed.
    fn saw_it_come_and_go(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let out = &self.out;
        let lines: Vec<&str> = out.lines().collect();
        let appeared = lines
            .iter()
            .position(|l| l.starts_with("cli-demo") && !l.contains("Deleted"));
        let deleted = lines
            .iter()
            .position(|l| l.starts_with("cli-demo") && l.contains("Deleted"));
        assert!(
            matches!((appeared, deleted), (Some(a), Some(d)) if a < d),
            "appeared, then deleted: {out}"
        );
        assert!(lines.len() <= 8, "phase changes only: {out}");
    }
}

/// A large model's download, as `edgefleet get devices` shows it while it runs: the agent
/// reports bytes of total, the controller keeps the latest, the table says how far along it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_devices_shows_how_far_a_large_download_is() {
    let data = tempfile::tempdir().unwrap();
    let (edgefleet, _) = binaries();
    let (port, mqtt) = (free_port(), free_port());
    let mut command = Command::new(edgefleet);
    command
        .arg("up")
        .env("EDGEFLEET_DATA_DIR", data.path())
        .env("EDGEFLEET_LISTEN", format!("127.0.0.1:{port}"))
        .env("EDGEFLEET_MQTT_LISTEN", format!("127.0.0.1:{mqtt}"));
    let up = Proc::spawn("edgefleet-up", &mut command, data.path());
    wait_port(port);
    let server = format!("http://127.0.0.1:{port}");
    let artifacts = ArtifactServer::start().await;
    let (uri, sha, size) = artifacts.put(
        "chat.gguf",
        &std::fs::read(model("smollm2-135m-instruct-q4_1.gguf")).unwrap(),
    );
    // 98.4 MB at 10 MB/s: about ten seconds of download to watch.
    artifacts.throttle(10_000_000);
    let device = DeviceSpec {
        id: "pi-1".into(),
        arch: "x86_64",
        memory_mib: 4096,
        labels: "site=a",
        extra_latency_ms: 0,
    };
    let _agent = AgentProc::start(&device, &format!("mqtt://127.0.0.1:{mqtt}"), data.path());
    let variant = smollm2_q4_1_variant(&uri, &sha, size);
    let manifest = format!(
        r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {{name: chat}}
spec:
  model: {{name: smollm2, version: "0.1.2"}}
  llm: {{contextTokens: 512, slots: 1}}
  variants:
{variant}
"#
    );
    let out = cli(data.path(), &server, &["apply", "-f", "-"], Some(&manifest));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut progress = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = cli(data.path(), &server, &["get", "devices"], None);
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = table.lines().find(|l| l.contains("Downloading")) {
            let percent = line
                .split("Downloading ")
                .nth(1)
                .and_then(|rest| rest.split('%').next())
                .and_then(|p| p.parse::<u32>().ok());
            assert!(line.contains("% of 98.4 MB"), "{line}");
            progress.extend(percent);
        }
        if table.contains("q4-1 Ready") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not Ready: {table}\n{}",
            up.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("download progress seen by `get devices`: {progress:?}%");
    assert!(
        progress.iter().any(|p| (1..100).contains(p)),
        "a download part-way through: {progress:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "never backwards: {progress:?}"
    );
}
