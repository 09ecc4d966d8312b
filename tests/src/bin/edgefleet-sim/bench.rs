//! The benchmark phases: start the controller, bring the fleet online, roll out a first
//! version (plan and publish), roll out a second one through canary steps (time to 100 %),
//! then flood telemetry and compare the controller's ingest with a bare subscriber's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use edgefleet_protocol::llm::LlmWindow;
use edgefleet_protocol::wire::{self, Channel, Role};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::fleet::{self, FleetConfig, Observed};
use crate::probe::{self, ProcSample};
use crate::workers::Workers;
use crate::{Args, Output, StopAfter, mix};

#[derive(Serialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct PhasePeaks {
    pub hello: u64,
    pub publish: u64,
    pub rollout: u64,
}

#[derive(Serialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub devices: usize,
    pub fitting: usize,
    pub gateways: usize,
    pub database: String,
    pub telemetry_seconds: u32,
    /// Fleet start until the controller counts every device online.
    pub hello_ingest_seconds: f64,
    /// Apply of v1 until every fitting device holds its desired document.
    pub plan_publish_seconds: f64,
    /// Apply of v1 until the controller's status counts every device Ready.
    pub first_ready_seconds: f64,
    /// Apply of v2 until every device holds v2 as stable and the status says Succeeded.
    pub rollout_to_100_seconds: f64,
    pub steady_windows_published: u64,
    pub steady_windows_received: u64,
    pub flood_windows_published: u64,
    pub flood_broker_received: u64,
    pub flood_broker_per_second: f64,
    pub flood_controller_received: u64,
    pub flood_controller_per_second: f64,
    pub flood_ratio: f64,
    pub flood_windows_lost: u64,
    pub idle_rss_kib: u64,
    pub online_rss_kib: u64,
    pub peak_rss_kib: u64,
    /// The peak (`VmHWM`) as it stood at the end of the hello, publish and rollout phases:
    /// the highest RSS up to each.
    pub peak_rss_kib_by_phase: PhasePeaks,
    pub peak_rss_bytes_per_device: f64,
    pub marginal_rss_bytes_per_device: f64,
    pub cpu_seconds_hello: f64,
    pub cpu_seconds_plan_publish: f64,
    pub cpu_seconds_rollout: f64,
    pub cpu_seconds_flood: f64,
    /// `--ingest-workers`, and their CPU in the flood (the controller's is `cpu_seconds_flood`).
    pub ingest_workers: usize,
    pub workers_cpu_seconds_flood: f64,
    pub broker_cpu_seconds: f64,
    pub sim_errors: u64,
    /// With `--llm`: model windows that carried an LLM window, and all of those merged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm_windows_published: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm_sent: Option<LlmWindow>,
}

struct Controller {
    child: Child,
    workers: Workers,
    api: String,
    token: String,
    broker_port: u16,
    http: reqwest::Client,
    ticks: f64,
    log: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn default_edgefleet_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the sim binary has no directory")?;
    Ok(dir.join("edgefleet"))
}

impl Controller {
    async fn start(args: &Args, dir: &Path) -> anyhow::Result<Controller> {
        let bin = match &args.edgefleet_bin {
            Some(bin) => bin.clone(),
            None => default_edgefleet_bin()?,
        };
        anyhow::ensure!(
            bin.is_file(),
            "--edgefleet-bin: {} does not exist (cargo build --release -p edgefleet-controller)",
            bin.display()
        );
        let api = match args.api_listen {
            Some(addr) => addr,
            None => std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        let broker_port = free_port()?;
        let log = dir.join("controller.log");
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(&bin);
        command
            .arg("up")
            .args(["--broker-impl", "mosquitto"])
            .args(["--listen", &api.to_string()])
            .args(["--mqtt-listen", &format!("127.0.0.1:{broker_port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if let Some(url) = &args.database_url {
            command.args(["--database-url", url]);
        }
        if args.ingest_workers > 0 {
            command.args(["--telemetry-share-group", crate::workers::SHARE_GROUP]);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let ticks = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        let mut controller = Controller {
            child,
            workers: Workers::default(),
            api: format!("http://{api}"),
            token: String::new(),
            broker_port,
            http: reqwest::Client::new(),
            ticks,
            log,
        };
        let what = format!("the controller (see {})", controller.log.display());
        crate::workers::wait_ready(&mut controller.child, &controller.api, &what).await?;
        controller.token = std::fs::read_to_string(dir.join("data/token"))
            .context("reading the controller's token")?;
        if args.ingest_workers > 0 {
            let database_url = args
                .database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", dir.join("data/fleet.db").display()));
            controller.workers =
                Workers::start(args.ingest_workers, &bin, &database_url, broker_port, dir).await?;
        }
        Ok(controller)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sample(&self) -> ProcSample {
        probe::sample(self.pid(), self.ticks).unwrap_or_default()
    }

    fn broker_cpu(&self) -> f64 {
        probe::children(self.pid())
            .into_iter()
            .filter_map(|pid| probe::sample(pid, self.ticks))
            .map(|s| s.cpu_seconds)
            .sum()
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.api))
            .send()
            .await?
            .text()
            .await?)
    }

    async fn apply(&self, yaml: String) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/api/v1/apply", self.api))
            .bearer_auth(&self.token)
            .body(yaml)
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(status.is_success(), "apply failed ({status}): {body}");
        Ok(())
    }

    async fn deployment(&self) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!(
                "{}/api/v1/namespaces/sim/deployments/sim-model",
                self.api
            ))
            .bearer_auth(&self.token)
            .send()
            .await?
            .json()
            .await?)
    }

    /// SIGTERM, so that it stops its Mosquitto child; SIGKILL after 60 s (a profiler may
    /// take that long to write its output).
    fn stop(&mut self) {
        self.workers.stop();
        let children = probe::children(self.pid());
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in children {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

/// Counts every telemetry window the broker delivers to a plain subscriber: the broker's own
/// throughput next to the controller's.
struct BrokerCounter {
    count: Arc<AtomicU64>,
    /// Milliseconds since `origin` of the last window received.
    last_ms: Arc<AtomicU64>,
    origin: Instant,
    finished: Arc<AtomicBool>,
}

impl BrokerCounter {
    async fn start(port: u16) -> anyhow::Result<BrokerCounter> {
        let mut options = MqttOptions::new(
            format!("sim-counter-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(
            wire::MAX_PAYLOAD_BYTES + 4096,
            wire::MAX_PAYLOAD_BYTES + 4096,
        );
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client
            .subscribe(wire::subscription(Channel::Telemetry), QoS::AtLeastOnce)
            .await?;
        let counter = BrokerCounter {
            count: Arc::default(),
            last_ms: Arc::default(),
            origin: Instant::now(),
            finished: Arc::default(),
        };
        let (count, last_ms, origin) = (
            counter.count.clone(),
            counter.last_ms.clone(),
            counter.origin,
        );
        let finished = counter.finished.clone();
        let (subscribed_tx, mut subscribed) = watch::channel(false);
        tokio::spawn(async move {
            let _client = client; // dropping it would end the event loop
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        last_ms.store(origin.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) if finished.load(Ordering::Relaxed) => return,
                    Err(err) => {
                        eprintln!("edgefleet-sim: counter connection: {err}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed.wait_for(|s| *s))
            .await
            .context("the counting subscriber got no SUBACK")??;
        Ok(counter)
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let mut controller = Controller::start(&args, work.path()).await?;
    let result = phases(&args, &controller).await;
    controller.stop();
    if result.is_err() {
        let log = std::fs::read_to_string(&controller.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!("--- controller log (last lines) ---");
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
    let report = result?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print_text(&report),
    }
    Ok(())
}

/// Polls `check` every 20 ms until it holds; returns the elapsed time since `since`.
async fn until<F, Fut>(
    what: &str,
    since: Instant,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Result<(), String>>>,
{
    loop {
        match check().await? {
            Ok(()) => return Ok(since.elapsed().as_secs_f64()),
            Err(last) => {
                if since.elapsed() > timeout {
                    bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn device_counts(deployment: &Value) -> (u64, u64, String) {
    let status = &deployment["status"];
    (
        status["devices"]["assigned"].as_u64().unwrap_or(0),
        status["devices"]["ready"].as_u64().unwrap_or(0),
        status["phase"].as_str().unwrap_or("").to_string(),
    )
}

const RECEIVED: [&str; 6] = [
    "counted",
    "duplicate",
    "stale",
    "unknown_device",
    "unknown_model",
    "not_stored",
];

/// Windows the controller and its ingest workers received, together.
async fn windows_received(controller: &Controller) -> anyhow::Result<u64> {
    let mut texts = controller.workers.metrics().await?;
    texts.push(controller.metrics().await?);
    Ok(texts
        .iter()
        .flat_map(|text| {
            RECEIVED.iter().map(move |r| {
                probe::metric(
                    text,
                    &format!("edgefleet_telemetry_windows_total{{result=\"{r}\"}}"),
                ) as u64
            })
        })
        .sum())
}

async fn phases(args: &Args, controller: &Controller) -> anyhow::Result<Report> {
    let timeout = Duration::from_secs(args.phase_timeout_seconds);
    let fitting = mix::fitting(args.seed, args.devices);
    let mut report = Report {
        devices: args.devices,
        fitting,
        gateways: args.gateways,
        database: match &args.database_url {
            Some(url) if url.starts_with("postgres") => "postgresql".into(),
            _ => "sqlite".into(),
        },
        telemetry_seconds: args.telemetry_seconds,
        ingest_workers: controller.workers.len(),
        ..Report::default()
    };
    let idle = controller.sample();
    report.idle_rss_kib = idle.rss_kib;
    let counter = BrokerCounter::start(controller.broker_port).await?;

    // 1. the fleet says hello
    progress(
        args,
        &format!(
            "{} devices connect through {} gateways",
            args.devices, args.gateways
        ),
    );
    let observed = Arc::new(Observed::default());
    let (flood_tx, flood_rx) = watch::channel(0u64);
    let config = FleetConfig {
        host: "127.0.0.1".into(),
        port: controller.broker_port,
        devices: args.devices,
        gateways: args.gateways,
        seed: args.seed,
        telemetry_seconds: args.telemetry_seconds,
        requests_per_window: args.requests_per_window,
        download_ms: args.download_ms,
        llm: args.llm,
    };
    let start = Instant::now();
    fleet::start(&config, observed.clone(), flood_rx);
    let devices = args.devices as f64;
    report.hello_ingest_seconds = until(
        "every device online at the controller",
        start,
        timeout,
        || async {
            let online = probe::metric(
                &controller.metrics().await?,
                "edgefleet_devices{state=\"online\"}",
            );
            Ok(if online >= devices {
                Ok(())
            } else {
                Err(format!("{online} online"))
            })
        },
    )
    .await?;
    let online = controller.sample();
    report.online_rss_kib = online.rss_kib;
    report.peak_rss_kib_by_phase.hello = online.peak_rss_kib;
    report.cpu_seconds_hello = online.cpu_seconds - idle.cpu_seconds;
    observed.telemetry_on.store(true, Ordering::Relaxed);
    let windows_before = observed.telemetry_published.load(Ordering::Relaxed);
    let received_before = windows_received(controller).await?;

    // 2. first version: plan and publish to every device
    progress(
        args,
        "apply v1 (first deployment: every fitting device at once)",
    );
    let before = controller.sample();
    let start = Instant::now();
    controller
        .apply(mix::deployment_yaml("1.0.0", &args.steps, 10, args.llm))
        .await?;
    report.plan_publish_seconds = until(
        "every fitting device holding v1",
        start,
        timeout,
        || async {
            let n = observed.holding("1.0.0", Role::Stable);
            Ok(if n >= fitting {
                Ok(())
            } else {
                Err(format!("{n} of {fitting}"))
            })
        },
    )
    .await?;
    let after = controller.sample();
    report.cpu_seconds_plan_publish = after.cpu_seconds - before.cpu_seconds;
    report.peak_rss_kib_by_phase.publish = after.peak_rss_kib;
    if args.stop_after == StopAfter::Publish {
        return Ok(finish(args, report, controller, &observed, &counter, idle).await);
    }
    report.first_ready_seconds = until(
        "the status counting every device Ready",
        start,
        timeout,
        || async {
            let (assigned, ready, phase) = device_counts(&controller.deployment().await?);
            Ok(if ready as usize >= fitting && phase == "Succeeded" {
                Ok(())
            } else {
                Err(format!(
                    "assigned {assigned}, ready {ready}, phase {phase:?}"
                ))
            })
        },
    )
    .await?;
    let (assigned, _, _) = device_counts(&controller.deployment().await?);
    anyhow::ensure!(
        assigned as usize == fitting,
        "the controller assigned {assigned} devices, the sim expected {fitting} to fit"
    );
    progress(
        args,
        &format!(
            "v1 published in {:.2} s, Ready in {:.2} s",
            report.plan_publish_seconds, report.first_ready_seconds
        ),
    );

    // 3. second version through zero-pause canary steps, devices acknowledging at once
    progress(
        args,
        &format!("apply v2 (canary steps {:?}, no pauses)", args.steps),
    );
    let before = controller.sample();
    let start = Instant::now();
    controller
        .apply(mix::deployment_yaml("2.0.0", &args.steps, 10, args.llm))
        .await?;
    report.rollout_to_100_seconds =
        until("v2 promoted on every device", start, timeout, || async {
            let n = observed.holding("2.0.0", Role::Stable);
            if n < fitting {
                return Ok(Err(format!("{n} of {fitting} hold v2 as stable")));
            }
            let (_, ready, phase) = device_counts(&controller.deployment().await?);
            Ok(if ready as usize >= fitting && phase == "Succeeded" {
                Ok(())
            } else {
                Err(format!("ready {ready}, phase {phase:?}"))
            })
        })
        .await?;
    let rolled_out = controller.sample();
    report.cpu_seconds_rollout = rolled_out.cpu_seconds - before.cpu_seconds;
    report.peak_rss_kib_by_phase.rollout = rolled_out.peak_rss_kib;
    progress(
        args,
        &format!("v2 at 100 % in {:.2} s", report.rollout_to_100_seconds),
    );
    if args.stop_after == StopAfter::Rollout {
        return Ok(finish(args, report, controller, &observed, &counter, idle).await);
    }

    // steady telemetry so far: every window must arrive once the stream stops
    observed.telemetry_on.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let steady_published = observed.telemetry_published.load(Ordering::Relaxed) - windows_before;
    let drained = quiet(controller, Duration::from_secs(3), timeout).await?;
    report.steady_windows_published = steady_published;
    report.steady_windows_received = drained - received_before;

    // 4. telemetry flood: controller ingest next to the broker's own delivery
    if args.flood_windows > 0 {
        progress(
            args,
            &format!(
                "telemetry flood: {} windows per serving device",
                args.flood_windows
            ),
        );
        let (sub0, ctl0, pub0) = (
            counter.count(),
            drained,
            observed.telemetry_published.load(Ordering::Relaxed),
        );
        let expected = args.flood_windows * fitting as u64;
        let before = controller.sample();
        let workers_before = controller.workers.cpu_seconds(controller.ticks);
        let start = Instant::now();
        let origin_offset = start.duration_since(counter.origin).as_millis() as u64;
        flood_tx.send_replace(args.flood_windows);
        let mut ctl_last = (ctl0, start);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let received = windows_received(controller).await?;
            if received > ctl_last.0 {
                ctl_last = (received, Instant::now());
            }
            let broker_done = counter.count() >= sub0 + expected;
            let controller_done = received >= ctl0 + expected;
            if (broker_done && controller_done) || ctl_last.1.elapsed() > Duration::from_secs(10) {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "the flood did not finish within {timeout:?}"
            );
        }
        report.cpu_seconds_flood = controller.sample().cpu_seconds - before.cpu_seconds;
        report.workers_cpu_seconds_flood =
            controller.workers.cpu_seconds(controller.ticks) - workers_before;
        report.flood_windows_published =
            observed.telemetry_published.load(Ordering::Relaxed) - pub0;
        report.flood_broker_received = counter.count() - sub0;
        let broker_seconds = (counter
            .last_ms
            .load(Ordering::Relaxed)
            .saturating_sub(origin_offset)) as f64
            / 1000.0;
        report.flood_broker_per_second =
            report.flood_broker_received as f64 / broker_seconds.max(0.001);
        report.flood_controller_received = ctl_last.0 - ctl0;
        let controller_seconds = ctl_last.1.duration_since(start).as_secs_f64();
        report.flood_controller_per_second =
            report.flood_controller_received as f64 / controller_seconds.max(0.001);
        report.flood_ratio =
            report.flood_controller_per_second / report.flood_broker_per_second.max(0.001);
        report.flood_windows_lost = report
            .flood_windows_published
            .saturating_sub(report.flood_controller_received);
    }

    Ok(finish(args, report, controller, &observed, &counter, idle).await)
}

/// With `--hold`, telemetry until standard input closes; then memory and CPU at the end of
/// the run, and what the fleet sent. Tells the fleet that the broker will go away.
async fn finish(
    args: &Args,
    mut report: Report,
    controller: &Controller,
    observed: &Observed,
    counter: &BrokerCounter,
    idle: ProcSample,
) -> Report {
    if args.hold {
        progress(args, "holding: telemetry on until standard input closes");
        observed.telemetry_on.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
        })
        .await;
        observed.telemetry_on.store(false, Ordering::Relaxed);
    }
    if args.llm {
        report.llm_windows_published = Some(observed.llm_windows_published.load(Ordering::Relaxed));
        report.llm_sent = Some(observed.llm_sent());
    }
    let devices = report.devices.max(1) as f64;
    let end = controller.sample();
    report.peak_rss_kib = end.peak_rss_kib;
    report.peak_rss_bytes_per_device = end.peak_rss_kib as f64 * 1024.0 / devices;
    report.marginal_rss_bytes_per_device =
        end.peak_rss_kib.saturating_sub(idle.rss_kib) as f64 * 1024.0 / devices;
    report.broker_cpu_seconds = controller.broker_cpu();
    report.sim_errors = observed.errors.load(Ordering::Relaxed);
    observed.finished.store(true, Ordering::Relaxed);
    counter.finished.store(true, Ordering::Relaxed);
    report
}

/// Waits until the controller's telemetry counters stop moving for `still`; returns them.
async fn quiet(controller: &Controller, still: Duration, timeout: Duration) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut last = (windows_received(controller).await?, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = windows_received(controller).await?;
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= still {
            return Ok(now);
        }
        anyhow::ensure!(start.elapsed() < timeout, "telemetry never went quiet");
    }
}

fn progress(args: &Args, message: &str) {
    if args.output == Output::Text {
        eprintln!("edgefleet-sim: {message}");
    }
}

fn print_text(r: &Report) {
    println!(
        "| devices | gateways | db | hello ingest s | plan+publish s | first Ready s | to 100 % s | steady windows lost | flood broker/s | flood controller/s | ratio | flood lost | peak RSS MiB | peak RSS B/device | marginal B/device | CPU s (hello/publish/rollout/flood) | broker CPU s |"
    );
    println!(
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
    );
    println!(
        "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} of {} | {:.0} | {:.0} | {:.0} % | {} of {} | {:.1} | {:.0} | {:.0} | {:.1} / {:.1} / {:.1} / {:.1} | {:.1} |",
        r.devices,
        r.gateways,
        r.database,
        r.hello_ingest_seconds,
        r.plan_publish_seconds,
        r.first_ready_seconds,
        r.rollout_to_100_seconds,
        r.steady_windows_published
            .saturating_sub(r.steady_windows_received),
        r.steady_windows_published,
        r.flood_broker_per_second,
        r.flood_controller_per_second,
        r.flood_ratio * 100.0,
        r.flood_windows_lost,
        r.flood_windows_published,
        r.peak_rss_kib as f64 / 1024.0,
        r.peak_rss_bytes_per_device,
        r.marginal_rss_bytes_per_device,
        r.cpu_seconds_hello,
        r.cpu_seconds_plan_publish,
        r.cpu_seconds_rollout,
        r.cpu_seconds_flood,
        r.broker_cpu_seconds,
    );
    let per_device = |kib: u64| kib as f64 * 1024.0 / r.devices.max(1) as f64;
    let peaks = &r.peak_rss_kib_by_phase;
    println!(
        "peak RSS B/device up to the end of hello / publish / rollout: {:.0} / {:.0} / {:.0}",
        per_device(peaks.hello),
        per_device(peaks.publish),
        per_device(peaks.rollout),
    );
    if let (Some(windows), Some(llm)) = (r.llm_windows_published, &r.llm_sent) {
        let ms = |q: Option<f64>| q.map_or(f64::NAN, |s| s * 1000.0);
        println!(
            "LLM windows: {windows}; time to first token p95 {:.1} ms, inter-token p95 {:.1} ms, decode p50 {:.0} tokens/s, {} completion tokens",
            ms(llm.time_to_first_token.quantile(0.95)),
            ms(llm.inter_token_latency.quantile(0.95)),
            llm.decode_tokens_per_second
                .quantile(0.5)
                .unwrap_or(f64::NAN),
            llm.completion_tokens,
        );
    }
    if r.ingest_workers > 0 {
        println!(
            "ingest: the controller and {} `edgefleet ingest` worker(s) sharing telemetry; flood CPU s controller {:.1}, workers {:.1}",
            r.ingest_workers, r.cpu_seconds_flood, r.workers_cpu_seconds_flood
        );
    }
    if r.sim_errors > 0 {
        println!(
            "(the simulator saw {} connection or publish errors)",
            r.sim_errors
        );
    }
}
