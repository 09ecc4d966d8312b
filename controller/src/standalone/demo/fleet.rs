//! The demo's devices: real `edgefleet-agent` processes pretending to be a heterogeneous
//! fleet (architecture, memory, accelerators), each with its own store and log file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Capabilities an agent announces.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    pub id: String,
    pub arch: &'static str,
    pub memory_mib: u64,
    /// What the agent announces free for models.
    pub memory_available_mib: u64,
    pub accelerators: Vec<&'static str>,
}

/// The eight archetypes; larger fleets repeat them with a numeric suffix. With
/// fp32 {x86_64, >= 2 GiB}, fp32-accel {nvidia, >= 2 GiB}, fp16 {>= 512 MiB} and
/// int8 {x86_64|aarch64, >= 256 MiB}, the riscv64 device fits nothing.
const ARCHETYPES: [(&str, &str, u64, &str); 8] = [
    ("gw-x86", "x86_64", 8192, ""),
    ("jetson-arm", "aarch64", 4096, "nvidia"),
    ("pi-arm", "aarch64", 1024, ""),
    ("mcu-arm", "aarch64", 256, ""),
    ("rv-riscv", "riscv64", 256, ""),
    ("edge-x86", "x86_64", 4096, ""),
    ("cam-x86", "x86_64", 1024, ""),
    ("pi4-arm", "aarch64", 2048, ""),
];

pub fn fleet(count: usize) -> Vec<DeviceSpec> {
    (0..count.max(5))
        .map(|i| {
            let (prefix, arch, memory_mib, accel) = ARCHETYPES[i % ARCHETYPES.len()];
            DeviceSpec {
                id: format!("{prefix}-{}", i / ARCHETYPES.len() + 1),
                arch,
                memory_mib,
                memory_available_mib: memory_mib / 2,
                accelerators: accel.split(',').filter(|a| !a.is_empty()).collect(),
            }
        })
        .collect()
}

pub struct Agent {
    pub spec: DeviceSpec,
    pub api: SocketAddr,
    pub log: PathBuf,
    child: tokio::process::Child,
}

/// The agent binary next to this executable (`target/<profile>/`), unless given.
pub fn agent_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .context("locating the current executable")?
            .with_file_name("edgefleet-agent"),
    };
    if !path.is_file() {
        bail!(
            "the agent binary {} does not exist: build it (`cargo build --release -p edgefleet-agent`) or pass --agent-bin / EDGEFLEET_AGENT_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// Starts one agent per spec and waits until each serves its local API.
pub async fn start(
    binary: &Path,
    specs: &[DeviceSpec],
    broker_url: &str,
    dir: &Path,
) -> anyhow::Result<Vec<Agent>> {
    let mut agents = Vec::new();
    for spec in specs {
        let store = dir.join(&spec.id);
        std::fs::create_dir_all(&store)?;
        let _ = std::fs::remove_file(store.join("listen-addr"));
        let log = dir.join(format!("{}.log", spec.id));
        let file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(binary)
            .env("EDGEFLEET_AGENT_DEVICE_ID", &spec.id)
            .env("EDGEFLEET_AGENT_BROKER", broker_url)
            .env("EDGEFLEET_AGENT_STORE", &store)
            .env("EDGEFLEET_AGENT_LISTEN", "127.0.0.1:0")
            .env("EDGEFLEET_AGENT_LABELS", "fleet=demo")
            .env("EDGEFLEET_AGENT_ARCH", spec.arch)
            .env("EDGEFLEET_AGENT_MEMORY_MIB", spec.memory_mib.to_string())
            .env(
                "EDGEFLEET_AGENT_MEMORY_AVAILABLE_MIB",
                spec.memory_available_mib.to_string(),
            )
            .env("EDGEFLEET_AGENT_CPU_FEATURES", "")
            .env("EDGEFLEET_AGENT_ACCELERATORS", spec.accelerators.join(","))
            .env("EDGEFLEET_AGENT_TELEMETRY_INTERVAL_SECS", "1")
            .env("EDGEFLEET_AGENT_INFERENCE_THREADS", "1")
            .env("EDGEFLEET_AGENT_BACKOFF_MAX_MS", "1000")
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        agents.push(Agent {
            spec: spec.clone(),
            api: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            child,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for agent in &mut agents {
        let addr_file = dir.join(&agent.spec.id).join("listen-addr");
        agent.api = loop {
            if let Some(addr) = std::fs::read_to_string(&addr_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break addr;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                bail!(
                    "agent {} exited ({status}); see {}",
                    agent.spec.id,
                    agent.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {} did not start within 60 s; see {}",
                    agent.spec.id,
                    agent.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
    }
    Ok(agents)
}

/// Kills every agent and reaps it.
pub async fn stop(agents: &mut [Agent]) {
    for agent in agents.iter_mut() {
        let _ = agent.child.start_kill();
    }
    for agent in agents.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(5), agent.child.wait()).await;
    }
}
