//! Static int8 (`int8-static`): weights and activations quantized ahead of time, activation
//! ranges calibrated on inputs, so convolutions run on integer kernels end to end.
//!
//! The rewrite is ONNX Runtime's own `quantize_static` (QOperator format, per-channel int8
//! weights, `reduce_range`, MinMax ranges), run through the `--ort-python` interpreter that
//! `compress` already measures with: a calibrating quantizer is a large, well-kept tool there,
//! and re-implementing it here would only add a second set of bugs. What is ours is the part
//! around it: calibration inputs that are never the evaluation inputs, and the measurement on
//! both runtimes that decides where the variant is offered.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use tract_onnx::pb::ModelProto;

use crate::CompressError;
use crate::measure::{OrtRunner, run_script};
use crate::quantize::RewriteSummary;
use crate::tensor::{self, InputSpec, Sample};

const QUANTIZE_SCRIPT: &str = include_str!("ort_quantize.py");

const GENERATED_WARNING: &str = "warning: generated inputs may not span the activation ranges \
     of real data, pass --calibration with representative inputs";

/// Where the calibration inputs came from, for the report.
#[derive(Clone, Debug)]
pub enum CalibrationSource {
    /// The user's file: representative data.
    File(String),
    /// Generated inputs (no `--calibration`): ranges may not match real data.
    Generated { seed: u64 },
}

impl CalibrationSource {
    fn describe(&self, count: usize) -> String {
        match self {
            CalibrationSource::File(path) => format!("{count} calibration inputs from {path}"),
            CalibrationSource::Generated { seed } => {
                format!("{count} generated calibration inputs (seed {seed}); {GENERATED_WARNING}")
            }
        }
    }
}

#[derive(Deserialize)]
struct QuantizeJson {
    error: Option<String>,
    version: Option<String>,
    #[serde(default)]
    operators: BTreeMap<String, usize>,
}

/// Where `int8-static` gets its calibration inputs.
#[derive(Clone, Copy, Debug)]
pub struct Calibration<'a> {
    /// The user's inputs (`--calibration`), else generated ones.
    pub file: Option<&'a Path>,
    /// At most this many.
    pub samples: usize,
    /// The inputs drift is measured on, which calibration must not see.
    pub drift_inputs: Option<&'a Path>,
    /// The seed of generated drift inputs.
    pub drift_seed: u64,
}

/// `int8-static` of `model`, calibrated as `calibration` says. The outer `Err` is a usage
/// error (it stops the run); the inner one a model this variant does not suit, or no
/// `--ort-python` to make it with (skipped, like the other variants' `Unsupported`).
pub fn make(
    model_path: &Path,
    model: &ModelProto,
    specs: &[InputSpec],
    calibration: &Calibration<'_>,
    runner: Option<&OrtRunner>,
) -> anyhow::Result<Result<(Vec<u8>, RewriteSummary), CompressError>> {
    let Some(runner) = runner else {
        return Ok(Err(CompressError::Unsupported(
            "int8-static is made by onnxruntime's quantize_static: pass --ort-python".into(),
        )));
    };
    let (samples, source) = match calibration.file {
        Some(path) => {
            if let Some(inputs) = calibration.drift_inputs {
                ensure!(
                    !same_file(path, inputs),
                    "--calibration and --inputs are the same file ({}): drift must be measured \
                     on inputs the calibration did not see",
                    path.display()
                );
            }
            let samples = tensor::load_inputs(path, specs, calibration.samples)
                .with_context(|| format!("--calibration {}", path.display()))?;
            (samples, CalibrationSource::File(path.display().to_string()))
        }
        None => {
            // not the drift inputs' seed: calibration never sees the evaluation inputs
            let seed = calibration.drift_seed ^ 0xCA1B_4A7E;
            let n = calibration.samples.max(1);
            eprintln!("compress: int8-static calibrated on generated inputs; {GENERATED_WARNING}");
            (
                tensor::generate(specs, n, seed),
                CalibrationSource::Generated { seed },
            )
        }
    };
    Ok(quantize_static(
        model_path, model, &samples, &source, runner,
    ))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `model` quantized with ONNX Runtime's `quantize_static`, calibrated on `calibration`.
/// `Unsupported` when the model has no convolution (int8-dynamic is the variant for MatMul
/// models) or the tool cannot quantize it, with its message.
pub fn quantize_static(
    model_path: &Path,
    model: &ModelProto,
    calibration: &[Sample],
    source: &CalibrationSource,
    runner: &OrtRunner,
) -> Result<(Vec<u8>, RewriteSummary), CompressError> {
    let has_conv = model
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .any(|n| n.op_type == "Conv");
    if !has_conv {
        return Err(CompressError::Unsupported(
            "static int8 is for convolutional models and this one has no Conv (int8-dynamic \
             quantizes MatMul models)"
                .into(),
        ));
    }
    if calibration.is_empty() {
        return Err(CompressError::Unsupported("no calibration inputs".into()));
    }
    let (bytes, version, operators) = run_tool(model_path, calibration, runner)
        .map_err(|e| CompressError::Unsupported(format!("{e:#}")))?;
    let quantized: usize = operators
        .iter()
        .filter(|(op, _)| op.starts_with("QLinear") || op.starts_with("QGemm"))
        .map(|(_, n)| n)
        .sum();
    let listed = operators
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((
        bytes,
        RewriteSummary {
            tensors: quantized,
            granularity: Some("per-channel".into()),
            notes: vec![
                format!(
                    "onnxruntime {version} quantize_static (QOperator, per-channel int8 weights \
                     with reduce_range, uint8 activations, MinMax) on {}",
                    source.describe(calibration.len())
                ),
                format!("operators: {listed}"),
            ],
            ..Default::default()
        },
    ))
}

type ToolOutput = (Vec<u8>, String, BTreeMap<String, usize>);

fn run_tool(
    model_path: &Path,
    calibration: &[Sample],
    runner: &OrtRunner,
) -> anyhow::Result<ToolOutput> {
    let spec = serde_json::json!({});
    let (dir, result) = run_script(
        &runner.python,
        ("ort_quantize.py", QUANTIZE_SCRIPT),
        model_path,
        calibration,
        "cal",
        spec,
    )?;
    let out_path = dir.path().join("quantized.onnx");
    let result: QuantizeJson = serde_json::from_slice(&result)?;
    if let Some(error) = result.error {
        bail!("onnxruntime quantizer: {error}");
    }
    let bytes = std::fs::read(&out_path)
        .with_context(|| format!("reading the quantized model {}", out_path.display()))?;
    Ok((bytes, result.version.unwrap_or_default(), result.operators))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{GraphProto, NodeProto};

    fn conv_model() -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    op_type: "Conv".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn calibration<'a>(file: Option<&'a Path>, drift_inputs: Option<&'a Path>) -> Calibration<'a> {
        Calibration {
            file,
            samples: 4,
            drift_inputs,
            drift_seed: 7,
        }
    }

    #[test]
    fn calibrating_on_the_evaluation_inputs_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inputs = dir.path().join("pages.npy");
        std::fs::write(&inputs, b"not read").expect("write");
        let runner = OrtRunner::new("/nonexistent/python");
        // the same file under another spelling is still the same file
        let spelled = dir.path().join(".").join("pages.npy");
        let err = make(
            Path::new("m.onnx"),
            &conv_model(),
            &[],
            &calibration(Some(&spelled), Some(&inputs)),
            Some(&runner),
        )
        .expect_err("same file");
        assert!(format!("{err:#}").contains("are the same file"), "{err:#}");
    }

    #[test]
    fn without_onnxruntime_or_convolutions_there_is_no_variant() {
        let no_runner = make(
            Path::new("m.onnx"),
            &conv_model(),
            &[],
            &calibration(None, None),
            None,
        )
        .expect("not a usage error");
        assert!(
            matches!(&no_runner, Err(CompressError::Unsupported(why)) if why.contains("--ort-python")),
            "{no_runner:?}"
        );
        // checked before the quantizer runs: this runner does not exist
        let runner = OrtRunner::new("/nonexistent/python");
        let sample = vec![(
            "x".to_string(),
            crate::tensor::HostTensor::from_f64s(crate::tensor::ElemType::F32, vec![1], &[0.0]),
        )];
        let no_conv = quantize_static(
            Path::new("m.onnx"),
            &ModelProto::default(),
            &[sample],
            &CalibrationSource::Generated { seed: 1 },
            &runner,
        );
        assert!(
            matches!(&no_conv, Err(CompressError::Unsupported(why)) if why.contains("no Conv")),
            "{no_conv:?}"
        );
    }

    #[test]
    fn generated_calibration_is_flagged_in_the_report() {
        let generated = CalibrationSource::Generated { seed: 3 }.describe(32);
        assert!(generated.contains("warning"), "{generated}");
        let file = CalibrationSource::File("pages.npy".into()).describe(32);
        assert_eq!(file, "32 calibration inputs from pages.npy");
    }
}
