//! The parts of a `ModelDeployment` spec that travel to devices: which model, which artifact
//! and how it is compressed, which runtime runs it, and the self-test it must pass. The
//! Kubernetes resource in `edgefleet-crds` embeds these types; the JSON schema derive is
//! behind the `schemars` feature so the device build carries no schema machinery.

use serde::{Deserialize, Serialize};

/// CPU architectures as Rust's `std::env::consts::ARCH` names them that a variant may
/// require and a device class may name; anything else is refused or counted as `other`.
pub const KNOWN_ARCHES: &[&str] = &[
    "x86_64",
    "aarch64",
    "arm",
    "riscv64",
    "x86",
    "powerpc64",
    "s390x",
];

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelRef {
    #[cfg_attr(
        feature = "schemars",
        schemars(
            length(min = 1, max = 63),
            pattern(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
        )
    )]
    pub name: String,
    #[cfg_attr(
        feature = "schemars",
        schemars(
            length(min = 1, max = 63),
            pattern(r"^[A-Za-z0-9]([-A-Za-z0-9_.+]*[A-Za-z0-9])?$")
        )
    )]
    pub version: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Artifact {
    /// Where the agent downloads from: an http(s) URL, or an OCI artifact
    /// `oci://registry/repository:tag` / `@sha256:<manifest digest>` whose manifest has the
    /// model file as its one layer. The controller resolves a tag to a digest once per model
    /// version, so every device gets the same bytes.
    #[cfg_attr(
        feature = "schemars",
        schemars(length(min = 1, max = 2048), pattern(r"^(https?|oci)://"))
    )]
    pub uri: String,
    /// Lower-case hex SHA-256 of the file; the agent refuses anything else. Required for
    /// http(s); for OCI artifacts it is the layer's digest, filled in by the controller (and
    /// checked against the registry's when given).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[cfg_attr(feature = "schemars", schemars(pattern(r"^[0-9a-f]{64}$")))]
    pub sha256: String,
    /// Required for http(s); filled in from the OCI manifest otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "schemars", schemars(range(min = 1)))]
    pub size_bytes: u64,
    /// Base64 ed25519 signature over the ASCII `sha256` hex string. Agents configured with
    /// trusted keys refuse artifacts without a valid one, before downloading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schemars", schemars(pattern(r"^[A-Za-z0-9+/]{86}==$")))]
    pub signature: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Int8,
    Int4,
    Mixed,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    #[default]
    Tract,
    Onnxruntime,
    /// GGUF language models on llama.cpp.
    Llamacpp,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Tract => "tract",
            Runtime::Onnxruntime => "onnxruntime",
            Runtime::Llamacpp => "llamacpp",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelfTest {
    #[cfg_attr(feature = "schemars", schemars(length(min = 1, max = 16)))]
    pub inputs: Vec<SelfTestInput>,
}

/// A tensor for the self-test: either explicit `data` or every element set to `fill`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelfTestInput {
    #[cfg_attr(feature = "schemars", schemars(length(min = 1)))]
    pub name: String,
    #[cfg_attr(feature = "schemars", schemars(length(min = 0, max = 8)))]
    pub shape: Vec<u64>,
    #[serde(default)]
    pub datatype: TensorDatatype,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<f64>>,
}

/// Tensor element types, named as the Open Inference Protocol names them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum TensorDatatype {
    #[default]
    Fp32,
    Fp64,
    Int64,
    Int32,
    Uint8,
    Bool,
}

impl TensorDatatype {
    pub fn as_str(self) -> &'static str {
        match self {
            TensorDatatype::Fp32 => "FP32",
            TensorDatatype::Fp64 => "FP64",
            TensorDatatype::Int64 => "INT64",
            TensorDatatype::Int32 => "INT32",
            TensorDatatype::Uint8 => "UINT8",
            TensorDatatype::Bool => "BOOL",
        }
    }

    /// Why `value` (a self-test number, which YAML and JSON give as f64) cannot be an element
    /// of this type: integer types take whole numbers in their range (`101.0` is the token id
    /// 101), BOOL takes 0 or 1, and no type takes NaN or infinities. The agent encodes
    /// self-test tensors by the same rule, so what admission accepts the agent can build.
    pub fn check_value(self, value: f64) -> Result<(), String> {
        if !value.is_finite() {
            return Err("not a finite number".into());
        }
        // Bounds as f64 are exact for these types; INT64's upper bound 2^63 is exclusive.
        let (min, below_max, range) = match self {
            TensorDatatype::Fp64 => return Ok(()),
            TensorDatatype::Fp32 if value.abs() > f64::from(f32::MAX) => {
                return Err("out of the FP32 range".into());
            }
            TensorDatatype::Fp32 => return Ok(()),
            TensorDatatype::Bool if value == 0.0 || value == 1.0 => return Ok(()),
            TensorDatatype::Bool => return Err("BOOL takes 0 or 1".into()),
            TensorDatatype::Int64 => (
                i64::MIN as f64,
                value < 9_223_372_036_854_775_808.0,
                "-9223372036854775808 to 9223372036854775807",
            ),
            TensorDatatype::Int32 => (
                f64::from(i32::MIN),
                value <= f64::from(i32::MAX),
                "-2147483648 to 2147483647",
            ),
            TensorDatatype::Uint8 => (0.0, value <= 255.0, "0 to 255"),
        };
        if value.fract() != 0.0 {
            return Err(format!("{} takes whole numbers", self.as_str()));
        }
        if value < min || !below_max {
            return Err(format!("out of the {} range ({range})", self.as_str()));
        }
        Ok(())
    }
}
