//! Builders for test inventories and specs: one plain device and one plain variant, changed
//! field by field in each test so the test shows exactly what matters.

use edgefleet_crds::{
    Artifact, ModelDeploymentSpec, ModelFormat, ModelRef, Precision, Quality, Requirements,
    Runtime, Variant,
};
use edgefleet_protocol::wire::{Assignment, DeviceId, ModelPhase, Role};

use crate::assignment::AssignmentRecord;
use crate::device::DeviceFacts;

pub fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("valid test device id")
}

/// An online aarch64 device, 1 GiB memory, 4 GiB free disk, neon, tract only, no labels.
pub fn device(name: &str) -> DeviceFacts {
    DeviceFacts {
        id: id(name),
        labels: Default::default(),
        arch: "aarch64".into(),
        cores: 4,
        cpu_features: std::sync::Arc::new(["neon".to_string()].into()),
        memory_total_mib: 1024,
        memory_available_mib: 512,
        disk_free_mib: 4096,
        accelerators: Default::default(),
        runtimes: [Runtime::Tract].into(),
        online: true,
        installed_sha256: Default::default(),
        site_cache_url: None,
    }
}

/// A variant with no requirements, a 1 MiB artifact, tract, and the given drift (None = no
/// quality block at all).
pub fn variant(name: &str, precision: Precision, drift: Option<f64>) -> Variant {
    Variant {
        name: name.into(),
        artifact: Artifact {
            uri: format!("https://models.example.com/{name}.onnx"),
            sha256: format!("{:0>64}", hex(name)),
            size_bytes: 1024 * 1024,
            signature: None,
        },
        format: ModelFormat::Onnx,
        precision,
        runtime: Runtime::Tract,
        requires: Requirements::default(),
        quality: drift.map(|accuracy_drift| Quality {
            accuracy_drift,
            latency_hint_ms: None,
        }),
        gguf: None,
    }
}

pub fn spec(version: &str, variants: Vec<Variant>) -> ModelDeploymentSpec {
    ModelDeploymentSpec {
        model: ModelRef {
            name: "m".into(),
            version: version.into(),
        },
        selector: Default::default(),
        variants,
        selection: Default::default(),
        rollout: Default::default(),
        slo: None,
        self_test: None,
        offload: None,
        llm: None,
    }
}

/// A distinct, valid-looking digest per variant name.
fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A stored assignment of model `m` at `version` (variant `int8`) for deployment `ns/md`.
pub fn record(
    device: &str,
    version: &str,
    role: Role,
    phase: Option<ModelPhase>,
) -> AssignmentRecord {
    let variant = variant("int8", Precision::Int8, None);
    AssignmentRecord {
        device_id: device.into(),
        reason: "".into(),
        assignment: std::sync::Arc::new(Assignment {
            deployment: "ns/md".into(),
            model: ModelRef {
                name: "m".into(),
                version: version.into(),
            },
            variant: variant.name,
            precision: variant.precision,
            runtime: variant.runtime,
            artifact: variant.artifact,
            role,
            self_test: None,
            offload: None,
            llm: None,
            site_cache: None,
        }),
        generation: 0,
        phase,
        phase_reason: None,
        serving_sha256: None,
    }
}
