//! What `compress` and `measure` are asked to do.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use edgefleet_crds::{Precision, Runtime};

use crate::measure::{OrtOptions, OrtRunner, Task};
use crate::quantize;
use crate::tensor::ShapeOptions;

/// A variant `compress` can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VariantKind {
    Fp16,
    /// Weight-only int8: smaller, same speed as fp32.
    Int8,
    /// Activations quantized at run time too: MatMuls on integer kernels (faster on ONNX
    /// Runtime; see `dynamic`).
    #[value(name = "int8-dynamic")]
    #[serde(rename = "int8-dynamic")]
    Int8Dynamic,
    /// Activations quantized ahead of time with ranges calibrated on inputs: convolutions on
    /// integer kernels (ONNX Runtime's `quantize_static`, see `calibrated`).
    #[value(name = "int8-static")]
    #[serde(rename = "int8-static")]
    Int8Static,
}

impl VariantKind {
    pub fn name(self) -> &'static str {
        match self {
            VariantKind::Fp16 => "fp16",
            VariantKind::Int8 => "int8",
            VariantKind::Int8Dynamic => "int8-dynamic",
            VariantKind::Int8Static => "int8-static",
        }
    }

    /// Activations quantized too: the variant exists for speed, so it is not offered where it
    /// was measured slower than fp32.
    pub fn quantizes_activations(self) -> bool {
        matches!(self, VariantKind::Int8Dynamic | VariantKind::Int8Static)
    }

    pub fn precision(self) -> Precision {
        match self {
            VariantKind::Fp16 => Precision::Fp16,
            VariantKind::Int8 | VariantKind::Int8Dynamic | VariantKind::Int8Static => {
                Precision::Int8
            }
        }
    }
}

/// How variants are measured.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    /// Inputs for drift (generated, or the first `samples` of `inputs`).
    pub samples: usize,
    /// Latency: median of this many runs of the first sample, after 2 warm-up runs.
    pub runs: usize,
    pub seed: u64,
    pub shapes: ShapeOptions,
    /// A `.npy` or JSON input set instead of generated inputs.
    pub inputs: Option<PathBuf>,
    pub task: Task,
    /// Also measure with the Python onnxruntime (single intra-op thread).
    pub ort: Option<OrtRunner>,
    pub ort_options: OrtOptions,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            samples: 16,
            runs: 20,
            seed: 0x5EED,
            shapes: ShapeOptions::default(),
            inputs: None,
            task: Task::Auto,
            ort: None,
            ort_options: OrtOptions {
                disable_quant_qdq: true,
            },
        }
    }
}

#[derive(Clone, Debug)]
pub struct CompressOptions {
    pub variants: Vec<VariantKind>,
    pub quantize: quantize::Options,
    pub measure: MeasureOptions,
    /// `{model}` and `{variant}` are replaced; must give an http(s) URL.
    pub uri_template: String,
    /// `{model}` in the template; default: the file stem, lower-cased.
    pub model_name: Option<String>,
    /// Inputs `int8-static` is calibrated on (`.npy` or JSON, like `measure.inputs`); default:
    /// generated ones, with a warning in the report.
    pub calibration: Option<PathBuf>,
    /// At most this many calibration inputs are used.
    pub calibration_samples: usize,
}

/// Calibration inputs used when none are given.
pub const DEFAULT_CALIBRATION_SAMPLES: usize = 32;

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions {
            variants: vec![
                VariantKind::Fp16,
                VariantKind::Int8,
                VariantKind::Int8Dynamic,
            ],
            quantize: quantize::Options::default(),
            measure: MeasureOptions::default(),
            uri_template: DEFAULT_URI_TEMPLATE.into(),
            model_name: None,
            calibration: None,
            calibration_samples: DEFAULT_CALIBRATION_SAMPLES,
        }
    }
}

pub const DEFAULT_URI_TEMPLATE: &str = "http://artifacts.local/{model}/{variant}.onnx";

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Variant name; default: the file stem, sanitized.
    pub name: Option<String>,
    pub runtime: Runtime,
    /// Default: detected from the graph ([`detect_precision`]).
    pub precision: Option<Precision>,
    pub measure: MeasureOptions,
    pub uri_template: String,
    pub model_name: Option<String>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            name: None,
            runtime: Runtime::Tract,
            precision: None,
            measure: MeasureOptions::default(),
            uri_template: DEFAULT_URI_TEMPLATE.into(),
            model_name: None,
        }
    }
}
