//! Issue 20: a chat model rolled out to a mixed fleet of real agents on llama.cpp. Two
//! quantizations (the PyPI SmolLM2 Q4_1 and a Q2_K made from it with llama.cpp's quantizer)
//! split by memory class; then a 2.0.0 canary, gated on time to first token, whose Q2_K is
//! 600 ms slower to start on the small devices: that class is demoted and keeps 1.0.0 while
//! the large class promotes, and every device keeps answering chats. A real Prometheus scrapes
//! the controller meanwhile: every panel of the dashboard's "Language models" row has data
//! from the real agents.

#![allow(clippy::unwrap_used)] // test code: a failed step should panic with its location
use std::time::Duration;

use edgefleet_e2e::*;
use edgefleet_gguf_quantize::{Quantization, quantize};

const MODEL: &str = "smollm2";
const GGUF: &str = "smollm2-135m-instruct-q4_1.gguf";

struct Files {
    q4_1: (String, String, u64),
    q2_k: (String, String, u64),
}

fn publish(artifacts: &ArtifactServer, version: &str, dir: &std::path::Path) -> Files {
    let source = models_dir().join(GGUF);
    let small = dir.join("q2_k.gguf");
    if !small.exists() {
        quantize(&source, &small, Quantization::Q2K, 2).unwrap();
    }
    Files {
        q4_1: artifacts.put(
            &format!("{version}/q4_1.gguf"),
            &std::fs::read(&source).unwrap(),
        ),
        q2_k: artifacts.put(
            &format!("{version}/q2_k.gguf"),
            &std::fs::read(&small).unwrap(),
        ),
    }
}

/// Context 512 tokens, one slot: Q4_1 needs 144 MiB, Q2_K (88.2 MB) 134 MiB. Drift as
/// `edgefleet compress` measured it (BENCHMARKS.md), so Q4_1 ranks first where it fits.
fn manifest(version: &str, files: &Files, small_name: &str) -> String {
    let variant = |name: &str, quantization: &str, drift: f64, f: &(String, String, u64)| {
        format!(
            "  - name: {name}\n    format: gguf\n    runtime: llamacpp\n    precision: int4\n    \
             gguf: {{quantization: {quantization}, layers: 30, embeddingLength: 576, heads: 9, kvHeads: 3}}\n    \
             quality: {{accuracyDrift: {drift}}}\n    \
             artifact: {{uri: \"{}\", sha256: \"{}\", sizeBytes: {}}}\n",
            f.0, f.1, f.2
        )
    };
    format!(
        r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata:
  name: chat
  namespace: default
spec:
  model: {{name: {MODEL}, version: "{version}"}}
  selector: {{matchLabels: {{site: plant-a}}}}
  llm: {{contextTokens: 512, slots: 1}}
  variants:
{}{}  rollout:
    steps: [{{percent: 50}}, {{percent: 75}}]
    analysis: {{intervalSeconds: 1, minSamples: 5, failureThreshold: 2, maxP95TtftMs: 400, stepTimeoutSeconds: 120, onFailure: Demote}}
"#,
        variant("q4-1", "Q4_1", 0.0, &files.q4_1),
        variant(small_name, "Q2_K", 0.238, &files.q2_k),
    )
}

fn md_status(standin: &StandIn) -> serde_json::Value {
    let json = standin.kubectl_ok(&["get", "md", "chat", "-o", "json"], None);
    serde_json::from_str::<serde_json::Value>(&json).unwrap()["status"].clone()
}

async fn chat(agent: &AgentProc) -> Result<serde_json::Value, String> {
    let body = serde_json::json!({"model": MODEL, "max_tokens": 3, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hi."}]});
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", agent.api))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// Chats with every agent (canary analysis needs samples) until `check` passes.
async fn until<F, Fut>(agents: &[AgentProc], what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    eventually(Duration::from_secs(240), what, || async {
        for agent in agents {
            let _ = chat(agent).await;
        }
        check().await
    })
    .await;
}

fn served_variant(status: &serde_json::Value) -> Result<(u64, u64), String> {
    let d = &status["devices"];
    Ok((
        d["ready"].as_u64().ok_or("no ready count")?,
        d["demoted"].as_u64().unwrap_or(0),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantizations_split_by_memory_and_a_slow_class_is_demoted_on_ttft() {
    let logs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let standin = StandIn::start_with_crd();
    let artifacts = ArtifactServer::start().await;
    let db = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", db.path().join("fleet.db").display());
    let controller = ControllerProc::start(&standin, &database, &broker.url(), "llm", logs.path());
    let prometheus = Prometheus::start(controller.listen);
    // Agents announce half their memory available: 1024 MiB on the large class, 138 on the
    // small one (Q2_K's 134 fits, Q4_1's 144 does not). 2.0.0's Q2_K (renamed q2-k-next) starts 600 ms late on every device.
    let knob = [(
        "EDGEFLEET_AGENT_EXTRA_LATENCY_MS_BY_VARIANT",
        "q2-k-next=600",
    )];
    let device = |id: &str, memory_mib| DeviceSpec {
        id: id.into(),
        arch: "x86_64",
        memory_mib,
        labels: "site=plant-a",
        extra_latency_ms: 0,
    };
    let devices = [
        device("big-1", 2048),
        device("big-2", 2048),
        device("small-1", 276),
        device("small-2", 276),
    ];
    let agents: Vec<AgentProc> = devices
        .iter()
        .map(|d| AgentProc::start_with_env(d, &broker.url(), logs.path(), &knob))
        .collect();

    let v1 = publish(&artifacts, "1.0.0", work.path());
    standin.kubectl_ok(&["apply", "-f", "-"], Some(&manifest("1.0.0", &v1, "q2-k")));
    until(&agents, "1.0.0 on all four", || async {
        let status = md_status(&standin);
        match (status["phase"].as_str(), served_variant(&status)?) {
            (Some("Succeeded"), (4, _)) => Ok(()),
            _ => Err(status.to_string()),
        }
    })
    .await;
    for agent in &agents {
        let served = agent.model(MODEL).await.unwrap();
        let want = if agent.device.id.starts_with("big") {
            "q4-1"
        } else {
            "q2-k"
        };
        assert_eq!(served["variant"], want, "{}: {served}", agent.device.id);
        assert_eq!(served["llm"]["contextTokens"], 512, "{served}");
        chat(agent).await.unwrap();
    }

    // The dashboard's language-model panels, from real llama.cpp agents' telemetry.
    for q in dashboard_queries().into_iter().filter(|q| q.row == LLM_ROW) {
        let promql = q.promql();
        until(&agents, &q.panel, || async {
            prometheus.has_data(&promql).await
        })
        .await;
    }

    let v2 = publish(&artifacts, "2.0.0", work.path());
    standin.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&manifest("2.0.0", &v2, "q2-k-next")),
    );
    until(
        &agents,
        "2.0.0 promoted on the large class, small demoted",
        || async {
            let status = md_status(&standin);
            let promoted = status["phase"] == "Succeeded" && status["targetVersion"] == "2.0.0";
            match (promoted, served_variant(&status)?) {
                (true, (_, 2)) => Ok(()),
                _ => Err(status.to_string()),
            }
        },
    )
    .await;
    for agent in &agents {
        let served = agent.model(MODEL).await.unwrap();
        let want = if agent.device.id.starts_with("big") {
            ("2.0.0", "q4-1")
        } else {
            ("1.0.0", "q2-k")
        };
        assert_eq!(
            (served["version"].as_str(), served["variant"].as_str()),
            (Some(want.0), Some(want.1)),
            "{}: {served}",
            agent.device.id
        );
        chat(agent)
            .await
            .unwrap_or_else(|e| panic!("{} does not answer: {e}", agent.device.id));
    }
    let status = md_status(&standin).to_string();
    assert!(
        status.contains("TTFT p95"),
        "the verdict names TTFT: {status}"
    );
}
