//! What the demo shows: a live table (device → variant, state, p95) redrawn with plain ANSI
//! on a terminal, progress lines otherwise, and the final summary (text or JSON).

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use edgefleet_core::variant::{Choice, choose_variant};
use edgefleet_crds::{ModelDeploymentSpec, ModelDeploymentStatus, Phase};
use serde_json::json;

use super::fleet::{Agent, DeviceSpec};
use super::load::{self, SharedStats};
use super::manifest::{DEPLOYMENT, MODEL};
use crate::standalone::Standalone;
use crate::standalone::args::DemoOutput;
use crate::standalone::render::table;

pub struct DeviceObservation {
    pub spec: DeviceSpec,
    pub online: bool,
    pub device_class: String,
    /// (version, variant, phase) of its assignment.
    pub assignment: Option<(String, String, String)>,
    /// Why no variant fits, when none does.
    pub no_fit: Option<String>,
}

pub struct Observation {
    pub status: ModelDeploymentStatus,
    pub online: usize,
    pub devices: Vec<DeviceObservation>,
}

impl Observation {
    pub async fn take(plane: &Standalone, agents: &[Agent]) -> anyhow::Result<Observation> {
        let store = &plane.plane.reconciler.fleet().store;
        let stored = store.get_deployment("default", DEPLOYMENT).await?;
        let spec: Option<ModelDeploymentSpec> = stored
            .as_ref()
            .and_then(|d| serde_json::from_str(&d.spec_json).ok());
        let assignments = store.assignments("default", DEPLOYMENT).await?;
        let inventory = &plane.plane.reconciler.fleet().inventory;
        let mut devices = Vec::new();
        for agent in agents {
            let id = edgefleet_protocol::wire::DeviceId::new(agent.spec.id.clone())?;
            let facts = inventory.device(&id);
            let no_fit = match (&facts, &spec) {
                (Some(facts), Some(spec)) => match choose_variant(facts, spec) {
                    Choice::NoFit { reasons } => {
                        Some(crate::standalone::api::no_fit_reason(&reasons))
                    }
                    Choice::Fits { .. } => None,
                },
                _ => None,
            };
            devices.push(DeviceObservation {
                spec: agent.spec.clone(),
                online: facts.as_ref().is_some_and(|f| f.online),
                device_class: facts
                    .as_ref()
                    .map(edgefleet_core::device_class)
                    .unwrap_or_default(),
                assignment: assignments
                    .iter()
                    .find(|r| r.device_id == agent.spec.id)
                    .map(|r| {
                        (
                            r.version().to_string(),
                            r.variant().to_string(),
                            r.phase.map_or("Assigned", |p| p.as_str()).to_string(),
                        )
                    }),
                no_fit,
            });
        }
        Ok(Observation {
            status: super::status_of(stored.as_ref()),
            online: devices.iter().filter(|d| d.online).count(),
            devices,
        })
    }

    /// `version` promoted everywhere: every device matched, every one that fits Ready.
    pub fn settled(&self, version: &str) -> bool {
        let d = &self.status.devices;
        self.status.phase == Phase::Succeeded
            && self.status.target_version.as_deref() == Some(version)
            && d.matched as usize == self.devices.len()
            && d.ready == d.matched - d.no_fit
            && self.devices.iter().all(|o| {
                o.no_fit.is_some()
                    || o.assignment
                        .as_ref()
                        .is_some_and(|(v, _, p)| v == version && p == "Ready")
            })
    }
}

pub fn conditions(status: &ModelDeploymentStatus) -> String {
    status
        .conditions
        .iter()
        .map(|c| format!("{}={} ({}: {})", c.type_, c.status, c.reason, c.message))
        .collect::<Vec<_>>()
        .join("; ")
}

pub struct View {
    output: DemoOutput,
    tty: bool,
    /// Bold headings: on a terminal without NO_COLOR.
    colour: bool,
    drawn: usize,
    stage: String,
    started: Instant,
    last_line: String,
    pub stats: Option<SharedStats>,
    pub steps_seen: Vec<u32>,
    api_url: String,
}

impl View {
    pub fn new(output: DemoOutput, plane: &Standalone, _agents: &[Agent]) -> View {
        View {
            output,
            tty: output == DemoOutput::Text && std::io::stdout().is_terminal(),
            colour: edgefleet_protocol::terminal::use_colour(
                std::io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ),
            drawn: 0,
            stage: String::new(),
            started: Instant::now(),
            last_line: String::new(),
            stats: None,
            steps_seen: Vec::new(),
            api_url: plane.api_url.clone(),
        }
    }

    pub fn stage(&mut self, stage: &str) {
        self.stage = stage.to_string();
        match (self.output, self.tty) {
            (DemoOutput::Json, _) => eprintln!("demo: {stage}"),
            (DemoOutput::Text, false) => println!("== {stage}"),
            (DemoOutput::Text, true) => {}
        }
    }

    pub fn show(&mut self, o: &Observation) {
        if o.status.target_version.as_deref() == Some("2.0.0")
            && self.steps_seen.last() != Some(&o.status.current_step)
        {
            self.steps_seen.push(o.status.current_step);
        }
        let line = format!(
            "phase {:?}, target {}, step {}, ready {}/{} (no fit {})",
            o.status.phase,
            o.status.target_version.as_deref().unwrap_or("-"),
            o.status.current_step,
            o.status.devices.ready,
            o.status.devices.matched,
            o.status.devices.no_fit
        );
        if !self.tty {
            if line != self.last_line {
                match self.output {
                    DemoOutput::Json => eprintln!("demo:   {line}"),
                    DemoOutput::Text => println!("   {line}"),
                }
                self.last_line = line;
            }
            return;
        }
        let mut text = format!(
            "{}  {}  ({:.0}s)\n{DEPLOYMENT}: {line}\n\n",
            self.bold("EdgeFleet demo"),
            self.stage,
            self.started.elapsed().as_secs_f64()
        );
        text.push_str(&self.device_table(o, false));
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}F\x1b[J", self.drawn);
        }
        let _ = write!(out, "{text}");
        let _ = out.flush();
        self.drawn = text.lines().count();
    }

    fn bold(&self, text: &str) -> String {
        if self.colour {
            format!("\x1b[1m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn p95(&self, device: &str, version: &str) -> Option<f64> {
        self.stats
            .as_ref()
            .and_then(|s| load::lock(s).p95_ms(device, version))
    }

    fn requests(&self, device: &str) -> u64 {
        self.stats
            .as_ref()
            .map_or(0, |s| load::lock(s).requests(device))
    }

    fn device_table(&self, o: &Observation, with_reason: bool) -> String {
        let rows: Vec<Vec<String>> = o
            .devices
            .iter()
            .map(|d| {
                let caps = format!(
                    "{} {}Mi{}",
                    d.spec.arch,
                    d.spec.memory_mib,
                    if d.spec.accelerators.is_empty() {
                        String::new()
                    } else {
                        format!(" +{}", d.spec.accelerators.join(","))
                    }
                );
                let (version, variant, state) = match (&d.assignment, &d.no_fit) {
                    (Some((v, var, p)), _) => (v.clone(), var.clone(), p.clone()),
                    (None, Some(_)) => ("-".into(), "-".into(), "no fit".into()),
                    (None, None) if d.online => ("-".into(), "-".into(), "online".into()),
                    (None, None) => ("-".into(), "-".into(), "offline".into()),
                };
                let p95 = self
                    .p95(&d.spec.id, &version)
                    .map_or_else(|| "-".into(), |p| format!("{p:.1} ms"));
                let mut row = vec![
                    d.spec.id.clone(),
                    caps,
                    variant,
                    version,
                    state,
                    p95,
                    self.requests(&d.spec.id).to_string(),
                ];
                if with_reason {
                    row.push(d.no_fit.clone().unwrap_or_default());
                }
                row
            })
            .collect();
        let mut header = vec![
            "DEVICE",
            "CAPABILITIES",
            "VARIANT",
            "VERSION",
            "STATE",
            "P95 (client)",
            "REQUESTS",
        ];
        if with_reason {
            header.push("NOTE");
        }
        table(&header, &rows)
    }

    /// Prints the summary: JSON on stdout, or the final table with where to look next.
    pub async fn finish(
        &mut self,
        plane: &Standalone,
        o: &Observation,
        elapsed: Duration,
    ) -> anyhow::Result<()> {
        if self.output == DemoOutput::Json {
            let devices: Vec<serde_json::Value> = o
                .devices
                .iter()
                .map(|d| {
                    let (version, variant, state) = d.assignment.clone().unzip3();
                    json!({
                        "id": d.spec.id,
                        "arch": d.spec.arch,
                        "memoryMib": d.spec.memory_mib,
                        "accelerators": d.spec.accelerators,
                        "deviceClass": d.device_class,
                        "online": d.online,
                        "variant": variant,
                        "version": version,
                        "state": state.unwrap_or_else(|| if d.no_fit.is_some() { "NoFit".into() } else { "Unassigned".into() }),
                        "noFit": d.no_fit.is_some(),
                        "noFitReason": d.no_fit,
                        "p95Ms": version.as_deref().and_then(|v| self.p95(&d.spec.id, v)),
                        "requests": self.requests(&d.spec.id),
                        "failedRequests": self.stats.as_ref().map_or(0, |s| load::lock(s).errors(&d.spec.id)),
                    })
                })
                .collect();
            let summary = json!({
                "deployment": {
                    "namespace": "default",
                    "name": DEPLOYMENT,
                    "model": MODEL,
                    "phase": o.status.phase,
                    "targetVersion": o.status.target_version,
                    "currentStep": o.status.current_step,
                    "devices": o.status.devices,
                    "variants": o.status.variants,
                },
                "stepsObserved": self.steps_seen,
                "devices": devices,
                "p95Source": "client-side: wall time of the demo's POST /v2/models/{model}/infer requests to each agent (binary FP32 tensor), for the version in `version`; deployment.variants[].p95LatencyMs is the agents' own telemetry per variant",
                "wallSeconds": elapsed.as_secs_f64(),
                "apiUrl": plane.api_url,
                "pageUrl": plane.page_url(),
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
            return Ok(());
        }
        let description = super::super::client::Client::with_token(&plane.api_url, &plane.token)
            .describe("default", DEPLOYMENT)
            .await?;
        println!();
        println!(
            "{}  ({:.0} s, canary steps observed for v2.0.0: {:?})",
            self.bold("Summary"),
            elapsed.as_secs_f64(),
            self.steps_seen
        );
        print!("{}", self.device_table(o, true));
        println!(
            "P95 (client) is the demo's own timing of its inference requests to each agent's local API.\n"
        );
        print!("{}", crate::standalone::render::describe(&description));
        println!(
            "\nWhere to look next (while the demo runs with --hold, or after `edgefleet up`):\n  fleet page {page}\n  metrics    {api}/metrics\n  describe   edgefleet describe md {DEPLOYMENT} --server {api} --token <{data}/token>\n  devices    edgefleet get devices --server {api}\n  your model edgefleet compress ... then edgefleet apply -f your-deployment.yaml (see controller/STANDALONE.md)",
            page = plane.page_url(),
            api = self.api_url,
            data = plane.data_dir.display(),
        );
        Ok(())
    }
}

trait Unzip3 {
    fn unzip3(self) -> (Option<String>, Option<String>, Option<String>);
}

impl Unzip3 for Option<(String, String, String)> {
    fn unzip3(self) -> (Option<String>, Option<String>, Option<String>) {
        match self {
            Some((a, b, c)) => (Some(a), Some(b), Some(c)),
            None => (None, None, None),
        }
    }
}
