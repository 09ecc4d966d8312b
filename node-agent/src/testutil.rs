//! Fixtures shared by the agent's unit tests.

use edgefleet_protocol::wire::{Assignment, Role};
use edgefleet_protocol::{Artifact, ModelRef, Precision, Runtime};

/// A stable fp32 tract assignment of model `name` 1 in `deployment`, whose artifact's sha256
/// is `sha` repeated.
pub fn assignment(deployment: &str, name: &str, sha: char) -> Assignment {
    Assignment {
        deployment: deployment.into(),
        model: ModelRef {
            name: name.into(),
            version: "1".into(),
        },
        variant: "fp32".into(),
        precision: Precision::Fp32,
        runtime: Runtime::Tract,
        artifact: Artifact {
            uri: "http://x/m.onnx".into(),
            sha256: sha.to_string().repeat(64),
            size_bytes: 10,
            signature: None,
        },
        role: Role::Stable,
        self_test: None,
        offload: None,
        llm: None,
        site_cache: None,
    }
}
