//! Language-model telemetry to Prometheus: the device simulator (`edgefleet-sim --llm`) runs
//! the real standalone controller and Mosquitto and rolls out a deployment whose variants run
//! on llama.cpp; its devices report LLM windows (time to first token 40–90 ms, 7–10 ms between
//! tokens, 100–150 tokens/s). A real Prometheus scrapes the controller: every panel of the
//! dashboard's "Language models" row returns data, and the p95 time to first token Prometheus
//! computes lies in the bucket of the p95 of what the simulator sent.

#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use edgefleet_e2e::*;
use edgefleet_protocol::histogram::LATENCY_BUCKETS_SECONDS;
use edgefleet_protocol::llm::LlmWindow;

/// The simulator, holding its fleet online until [`Sim::finish`] closes its standard input.
/// Dropped early (a failed assertion), it is asked to finish too, so that it stops the
/// controller and the broker it started; killed only if it does not.
struct Sim {
    child: Child,
    stdin: Option<ChildStdin>,
    log: std::path::PathBuf,
}

impl Sim {
    fn start(edgefleet: &Path, api: SocketAddr, dir: &Path) -> Sim {
        let log = dir.join("edgefleet-sim.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgefleet-sim"))
            .args(["--devices", "20", "--gateways", "1"])
            .args(["--telemetry-seconds", "1", "--requests-per-window", "10"])
            .args(["--stop-after", "publish", "--phase-timeout-seconds", "60"])
            .args(["--llm", "--hold", "-o", "json"])
            .arg("--api-listen")
            .arg(api.to_string())
            .arg("--edgefleet-bin")
            .arg(edgefleet)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        Sim { child, stdin, log }
    }

    /// Panics with the simulator's log when it stopped before being told to.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "edgefleet-sim exited early ({status}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// Ends the hold and returns the simulator's report.
    fn finish(mut self) -> serde_json::Value {
        self.stdin = None;
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "edgefleet-sim failed ({status}):\n{log}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{log}"))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(lower, upper]` of the latency bucket holding `seconds`.
fn bucket_of(seconds: f64) -> (f64, f64) {
    let index = LATENCY_BUCKETS_SECONDS.partition_point(|bound| *bound < seconds);
    let lower = if index == 0 {
        0.0
    } else {
        LATENCY_BUCKETS_SECONDS[index - 1]
    };
    let upper = LATENCY_BUCKETS_SECONDS
        .get(index)
        .copied()
        .unwrap_or(f64::INFINITY);
    (lower, upper)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_simulated_llm_telemetry_and_every_llm_panel_has_data() {
    let (edgefleet, _) = binaries();
    let work = tempfile::tempdir().unwrap();
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prometheus = Prometheus::start(api);
    let mut sim = Sim::start(edgefleet, api, work.path());

    // 1. Every query of the "Language models" row returns data, a number for each.
    let queries: Vec<PanelQuery> = dashboard_queries()
        .into_iter()
        .filter(|q| q.row == LLM_ROW)
        .collect();
    let panels: std::collections::BTreeSet<&str> =
        queries.iter().map(|q| q.panel.as_str()).collect();
    assert!(panels.len() >= 7, "{panels:?}");
    for q in &queries {
        sim.assert_running();
        let promql = q.promql();
        eventually(Duration::from_secs(120), &q.panel, || async {
            prometheus.has_data(&promql).await
        })
        .await;
    }

    // 2. What Prometheus computes from the controller's merged histograms.
    let ttft_p95 = prometheus
        .value("histogram_quantile(0.95, sum by (le) (rate(edgefleet_llm_time_to_first_token_seconds_bucket[1m])))")
        .await
        .unwrap();
    let decode_p50 = prometheus
        .value("histogram_quantile(0.5, sum by (le) (rate(edgefleet_llm_decode_tokens_per_second_bucket[1m])))")
        .await
        .unwrap();
    let generated = prometheus
        .value("sum(rate(edgefleet_llm_completion_tokens_total[1m]))")
        .await
        .unwrap();
    let llm_cohorts = prometheus
        .query("edgefleet_llm_completion_tokens_total")
        .await
        .unwrap();
    let latency_cohorts = prometheus
        .query("edgefleet_inference_requests_total")
        .await
        .unwrap();
    sim.assert_running();

    // 3. ...against what the simulator sent.
    let report = sim.finish();
    assert_eq!(report["simErrors"], 0, "{report}");
    assert!(
        report["llmWindowsPublished"].as_u64().unwrap() > 0,
        "{report}"
    );
    let sent: LlmWindow = serde_json::from_value(report["llmSent"].clone()).unwrap();
    let sent_p95 = sent.time_to_first_token.quantile(0.95).unwrap();
    let (lower, upper) = bucket_of(sent_p95);
    eprintln!(
        "time to first token p95: Prometheus {:.1} ms, sent {:.1} ms (bucket {lower}..{upper} s); decode p50 {decode_p50:.0} tokens/s; {generated:.0} tokens/s generated",
        ttft_p95 * 1000.0,
        sent_p95 * 1000.0,
    );
    assert!(
        (0.04..=0.1).contains(&sent_p95),
        "the simulator sends 40–90 ms: {sent_p95}"
    );
    assert!(
        (lower..=upper).contains(&ttft_p95),
        "Prometheus p95 {ttft_p95} s outside the bucket ({lower}, {upper}] of the sent p95 {sent_p95} s"
    );
    assert!(
        (100.0..=200.0).contains(&decode_p50),
        "decode p50 {decode_p50} tokens/s (sent 100–150)"
    );
    assert!(generated > 0.0);
    // LLM series for exactly the cohorts with latency series: every variant is a language model.
    assert_eq!(llm_cohorts.len(), latency_cohorts.len(), "{llm_cohorts:?}");
    assert!(
        llm_cohorts
            .iter()
            .all(|r| r["metric"].get("device_id").is_none() && r["metric"]["role"] == "stable"),
        "{llm_cohorts:?}"
    );
}
