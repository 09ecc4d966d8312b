//! `edgefleet compress`: compression variants of an ONNX model (int8 weight-only, fp16 weight
//! storage), measured against the fp32 model (size, sha256, tract latency, drift) and written as
//! a `variants:` block for a `ModelDeployment`; `edgefleet compress measure` does the same for a
//! variant made by another tool. See README.md. A `.gguf` input instead gets llama.cpp
//! quantizations (Q8_0, Q4_K_M, Q4_0 by default), measured with llama.cpp against the source
//! (module `gguf`).
//!
//! Library entry points:
//! - [`quantize_int8`], [`convert_fp16`]: bytes → bytes rewrites of the ONNX protobuf;
//! - [`calibrated::quantize_static`]: static int8 through onnxruntime's `quantize_static`;
//! - [`rehydrate`]: the agent-side inverse that folds the int8/fp16 weights back to fp32;
//! - [`compress`], [`measure_import`]: the measured pipelines behind the CLI, returning a
//!   [`Report`]; [`variants_yaml`] turns a report into CRD variants;
//! - [`compress_gguf`]: the GGUF pipeline, returning a [`GgufReport`];
//! - [`run`] with [`CompressArgs`]: the CLI.

pub mod calibrated;
mod cli;
pub mod dynamic;
#[cfg(feature = "gguf")]
pub mod gguf;
pub mod measure;
pub mod onnx;
pub mod quantize;
pub mod rehydrate;
pub mod report;
pub mod tensor;

pub use cli::{CompressArgs, CompressCommand, ImportArgs, MeasureArgs, run};
pub use dynamic::quantize_dynamic;
#[cfg(feature = "gguf")]
pub use edgefleet_gguf_quantize::{Quantization as GgufQuantization, quantize as quantize_gguf};
#[cfg(feature = "gguf")]
pub use gguf::{GgufOptions, GgufReport, compress_gguf};
pub use measure::{Drift, OrtOptions, OrtRunner, Task, TractRunner};
pub use quantize::{Options as QuantizeOptions, RewriteSummary, convert_fp16, quantize_int8};
pub use rehydrate::rehydrate;

/// A GGUF language model (by its extension), rather than an ONNX model.
pub fn is_gguf(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}
pub use report::{
    CompressOptions, ImportOptions, MeasureOptions, Report, VariantKind, VariantReport, compress,
    detect_precision, markdown, measure_import, variants, variants_yaml,
};

/// Why a model cannot be compressed.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error("not a valid ONNX model: {0}")]
    Malformed(String),
    #[error(
        "models with external data are not supported: tensor {0}; re-save the model with its \
         weights inside the .onnx file (onnx.save(model, path, save_as_external_data=False), \
         possible below 2 GiB)"
    )]
    ExternalData(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
}
