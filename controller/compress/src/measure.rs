//! Running models for measurement: tract in-process, onnxruntime through a Python subprocess;
//! latency (median of N runs) and drift against a reference (cosine, top-1 agreement).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, IntoTValue, TValue, TVec,
    TypedRunnableModel,
};

use crate::tensor::{ElemType, HostTensor, InputSpec, Sample};

/// Outputs of one run, in the model's output order.
pub type Outputs = Vec<HostTensor>;

/// A model loaded and optimized by tract, with fixed input shapes. tract 0.23 runs a plan on the
/// calling thread only, so latency is single-threaded.
pub struct TractRunner {
    plan: std::sync::Arc<TypedRunnableModel>,
    inputs: Vec<String>,
}

fn datum(elem: ElemType) -> DatumType {
    match elem {
        ElemType::F32 => DatumType::F32,
        ElemType::F64 => DatumType::F64,
        ElemType::I64 => DatumType::I64,
        ElemType::I32 => DatumType::I32,
        ElemType::I8 => DatumType::I8,
        ElemType::U8 => DatumType::U8,
        ElemType::Bool => DatumType::Bool,
    }
}

fn elem(dt: DatumType) -> Option<ElemType> {
    Some(match dt {
        DatumType::F32 => ElemType::F32,
        DatumType::F64 => ElemType::F64,
        DatumType::I64 => ElemType::I64,
        DatumType::I32 => ElemType::I32,
        DatumType::I8 => ElemType::I8,
        DatumType::U8 => ElemType::U8,
        DatumType::Bool => ElemType::Bool,
        _ => return None,
    })
}

impl TractRunner {
    pub fn load(model_bytes: &[u8], specs: &[InputSpec]) -> anyhow::Result<TractRunner> {
        let mut model = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_read(&mut &*model_bytes)
            .context("tract could not parse the model")?;
        // Exporters sometimes repeat node names, which tract's graph checks refuse.
        let mut seen = std::collections::HashSet::new();
        for node in &mut model.nodes {
            if !seen.insert(node.name.clone()) {
                node.name = format!("{}.{}", node.name, node.id);
                seen.insert(node.name.clone());
            }
        }
        let mut inputs = Vec::new();
        for ix in 0..model.inputs.len() {
            let name = model.node(model.inputs[ix].node).name.clone();
            let spec = specs
                .iter()
                .find(|s| s.name == name)
                .with_context(|| format!("tract sees an input {name:?} the reference does not"))?;
            model.set_input_fact(ix, InferenceFact::dt_shape(datum(spec.elem), &spec.shape))?;
            inputs.push(name);
        }
        let plan = model
            .into_optimized()
            .context("tract could not optimize the model")?
            .into_runnable()
            .context("tract could not build a plan")?;
        Ok(TractRunner { plan, inputs })
    }

    fn values(&self, sample: &Sample) -> anyhow::Result<TVec<TValue>> {
        self.inputs
            .iter()
            .map(|name| {
                let (_, t) = sample
                    .iter()
                    .find(|(n, _)| n == name)
                    .with_context(|| format!("no value for input {name:?}"))?;
                let mut tensor = tract_onnx::prelude::Tensor::zero_dt(datum(t.elem), &t.shape)?;
                tensor.as_bytes_mut().copy_from_slice(&t.data);
                Ok(tensor.into_tvalue())
            })
            .collect()
    }

    pub fn run(&self, sample: &Sample) -> anyhow::Result<Outputs> {
        let outputs = self.plan.run(self.values(sample)?)?;
        outputs
            .iter()
            .map(|v| {
                let t: &tract_onnx::prelude::Tensor = v;
                let e = elem(t.datum_type())
                    .with_context(|| format!("output type {:?} unsupported", t.datum_type()))?;
                Ok(HostTensor {
                    elem: e,
                    shape: t.shape().to_vec(),
                    data: t.as_bytes().to_vec(),
                })
            })
            .collect()
    }

    /// Median wall time of `runs` runs of `sample` (after 2 warm-up runs), in milliseconds.
    pub fn latency_ms(&self, sample: &Sample, runs: usize) -> anyhow::Result<f64> {
        let values = self.values(sample)?;
        for _ in 0..2 {
            self.plan.run(values.clone())?;
        }
        let mut times = Vec::with_capacity(runs.max(1));
        for _ in 0..runs.max(1) {
            let start = Instant::now();
            self.plan.run(values.clone())?;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(median(&mut times))
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Whether outputs are treated as class scores (top-1 agreement) or compared by cosine only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Class scores when an output is `[N, C]` or `[C]` with 2 <= C <= 1000.
    #[default]
    Auto,
    /// Every output of rank >= 1 is class scores over its last axis.
    Classifier,
    /// No top-1 agreement; drift is 1 - mean cosine.
    Regression,
}

/// Drift of a variant's outputs against the reference's, over the same samples.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    pub samples: usize,
    /// Mean over outputs of the cosine similarity (per sample for outputs of >= 16 elements,
    /// otherwise over the values of all samples together).
    pub mean_cosine: f64,
    pub min_cosine: f64,
    pub max_abs_diff: f64,
    /// Fraction of rows whose argmax agrees, over the classifier outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    pub classifier_outputs: Vec<usize>,
}

impl Drift {
    /// The CRD's `accuracyDrift`: 1 - top-1 agreement for classifiers, else 1 - mean cosine.
    pub fn accuracy_drift(&self) -> f64 {
        let d = match self.top1_agreement {
            Some(a) => 1.0 - a,
            None => 1.0 - self.mean_cosine,
        };
        d.clamp(0.0, 1.0)
    }
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        1.0
    } else if na == 0.0 || nb == 0.0 || !dot.is_finite() {
        0.0
    } else {
        dot / (na * nb)
    }
}

fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// Operators whose output looks like class scores (after following `Identity`).
const SCORE_OPS: [&str; 9] = [
    "Softmax",
    "LogSoftmax",
    "Sigmoid",
    "Gemm",
    "MatMul",
    "Add",
    "Flatten",
    "Reshape",
    "Squeeze",
];

/// Which outputs are class scores. `Auto`: a float output of shape `[N, C]` or `[C]` with
/// 2 <= C <= 1000, produced by a scoring operator (Softmax, Gemm, MatMul, Add, ...), so that a
/// pooled embedding (`[1, 384]` out of a Concat or Div) is not taken for logits.
pub fn classifier_outputs(
    model: &tract_onnx::pb::ModelProto,
    outputs: &Outputs,
    task: Task,
) -> Vec<bool> {
    let graph = model.graph.as_ref();
    let producer = |name: &str| -> Option<String> {
        let graph = graph?;
        let mut name = name.to_string();
        for _ in 0..16 {
            let node = graph.node.iter().find(|n| n.output.contains(&name))?;
            if node.op_type == "Identity" {
                name = node.input.first()?.clone();
                continue;
            }
            return Some(node.op_type.clone());
        }
        None
    };
    outputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let float = matches!(t.elem, ElemType::F32 | ElemType::F64);
            let last = t.shape.last().copied().unwrap_or(0);
            match task {
                Task::Regression => false,
                Task::Classifier => float && !t.shape.is_empty() && last >= 2,
                Task::Auto => {
                    float
                        && (1..=2).contains(&t.shape.len())
                        && (2..=1000).contains(&last)
                        && graph
                            .and_then(|g| g.output.get(i))
                            .and_then(|o| producer(&o.name))
                            .is_some_and(|op| SCORE_OPS.contains(&op.as_str()))
                }
            }
        })
        .collect()
}

/// Drift over the float outputs (integer outputs, e.g. ids passed through, are compared only
/// when there is no float output); `classifier[i]` marks output `i` as class scores.
pub fn drift(
    reference: &[Outputs],
    variant: &[Outputs],
    classifier: &[bool],
) -> anyhow::Result<Drift> {
    ensure!(
        reference.len() == variant.len() && !reference.is_empty(),
        "{} reference runs but {} variant runs",
        reference.len(),
        variant.len()
    );
    let n_out = reference[0].len();
    let mut cosines = Vec::new();
    let mut max_abs: f64 = 0.0;
    let mut agree = 0usize;
    let mut rows = 0usize;
    let mut classifier_outputs = Vec::new();
    let is_float = |t: &HostTensor| matches!(t.elem, ElemType::F32 | ElemType::F64);
    let any_float = reference[0].iter().any(is_float);
    for o in 0..n_out {
        if any_float && !is_float(&reference[0][o]) {
            continue;
        }
        let shape = &reference[0][o].shape;
        let mut per_sample = Vec::new();
        let (mut all_r, mut all_v) = (Vec::new(), Vec::new());
        let classifier = classifier.get(o).copied().unwrap_or(false);
        if classifier {
            classifier_outputs.push(o);
        }
        for (r, v) in reference.iter().zip(variant) {
            let (r, v) = (
                r.get(o).context("missing reference output")?,
                v.get(o).context("missing variant output")?,
            );
            ensure!(
                r.shape == v.shape,
                "output {o}: reference shape {:?} but variant shape {:?}",
                r.shape,
                v.shape
            );
            let (r, v) = (r.to_f64s(), v.to_f64s());
            for (x, y) in r.iter().zip(&v) {
                let d = (x - y).abs();
                max_abs = if d.is_nan() {
                    f64::INFINITY
                } else {
                    max_abs.max(d)
                };
            }
            if r.len() >= 16 {
                per_sample.push(cosine(&r, &v));
            }
            if classifier {
                let c = shape.last().copied().unwrap_or(1).max(1);
                for (rr, vr) in r.chunks(c).zip(v.chunks(c)) {
                    rows += 1;
                    agree += usize::from(argmax(rr) == argmax(vr));
                }
            }
            all_r.extend(r);
            all_v.extend(v);
        }
        if per_sample.is_empty() {
            cosines.push(cosine(&all_r, &all_v));
        } else {
            cosines.push(per_sample.iter().sum::<f64>() / per_sample.len() as f64);
        }
    }
    let mean_cosine = cosines.iter().sum::<f64>() / cosines.len().max(1) as f64;
    let min_cosine = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(Drift {
        samples: reference.len(),
        mean_cosine,
        min_cosine: if min_cosine.is_finite() {
            min_cosine
        } else {
            1.0
        },
        max_abs_diff: max_abs,
        top1_agreement: (rows > 0).then(|| agree as f64 / rows as f64),
        classifier_outputs,
    })
}

// ------------------------------------------------------------------ onnxruntime (Python)

const ORT_SCRIPT: &str = include_str!("ort_run.py");

/// Runs models with the Python onnxruntime: a subprocess per model, tensors exchanged as `.npy`
/// files. Used by the tests, the benchmark and `--ort-python`.
#[derive(Clone, Debug)]
pub struct OrtRunner {
    pub python: PathBuf,
    pub threads: usize,
}

/// What onnxruntime did with one model.
#[derive(Clone, Debug)]
pub struct OrtResult {
    pub outputs: Vec<Outputs>,
    pub latency_ms: f64,
    /// The reference's median latency, timed alternately with this model ([`OrtRunner::run_paired`]).
    pub paired_latency_ms: Option<f64>,
    pub version: String,
}

#[derive(Deserialize)]
struct OrtJson {
    error: Option<String>,
    latency_ms: Option<f64>,
    paired_latency_ms: Option<f64>,
    outputs: Option<usize>,
    version: Option<String>,
}

/// The session options onnxruntime is given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrtOptions {
    /// `session.disable_quant_qdq=1`: lets onnxruntime constant-fold `DequantizeLinear` of
    /// constant weights instead of keeping them for QDQ fusion.
    pub disable_quant_qdq: bool,
}

impl OrtRunner {
    pub fn new(python: impl Into<PathBuf>) -> OrtRunner {
        OrtRunner {
            python: python.into(),
            threads: 1,
        }
    }

    /// Checks the interpreter has onnxruntime and numpy; returns the onnxruntime version.
    pub fn check(&self) -> anyhow::Result<String> {
        let out = Command::new(&self.python)
            .args([
                "-c",
                "import onnxruntime, numpy; print(onnxruntime.__version__)",
            ])
            .output()
            .with_context(|| format!("running {}", self.python.display()))?;
        ensure!(
            out.status.success(),
            "{} cannot import onnxruntime and numpy (run tests/tools/fetch-compress-models.sh): {}",
            self.python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs every sample once (outputs) and the first one `runs` times (median latency).
    /// A model onnxruntime cannot load or run is an `Err` with its message.
    pub fn run(
        &self,
        model: &Path,
        samples: &[Sample],
        runs: usize,
        options: OrtOptions,
    ) -> anyhow::Result<OrtResult> {
        self.run_paired(model, None, samples, runs, options)
    }

    /// [`OrtRunner::run`], timing `reference` too, alternately run for run in the same
    /// process, so that a variant and fp32 are compared under the same load of the machine.
    pub fn run_paired(
        &self,
        model: &Path,
        reference: Option<&Path>,
        samples: &[Sample],
        runs: usize,
        options: OrtOptions,
    ) -> anyhow::Result<OrtResult> {
        let spec = serde_json::json!({
            "runs": runs.max(1),
            "threads": self.threads,
            "disable_quant_qdq": options.disable_quant_qdq,
            "paired_with": reference,
        });
        let (dir, result) = run_script(
            &self.python,
            ("ort_run.py", ORT_SCRIPT),
            model,
            samples,
            "in",
            spec,
        )
        .context("onnxruntime runner")?;
        let result: OrtJson = serde_json::from_slice(&result)?;
        if let Some(error) = result.error {
            bail!("onnxruntime: {error}");
        }
        let n_out = result.outputs.context("runner wrote no output count")?;
        let outputs = (0..samples.len())
            .map(|s| {
                (0..n_out)
                    .map(|k| {
                        let path = dir.path().join(format!("out_{s}_{k}.npy"));
                        HostTensor::from_npy(&std::fs::read(&path)?)
                    })
                    .collect::<anyhow::Result<Outputs>>()
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(OrtResult {
            outputs,
            latency_ms: result.latency_ms.unwrap_or(f64::NAN),
            paired_latency_ms: result.paired_latency_ms,
            version: result.version.unwrap_or_default(),
        })
    }
}

/// Runs one of our Python scripts with the `--ort-python` interpreter in a fresh work
/// directory, as `SCRIPT MODEL WORKDIR`: `samples` are written there as
/// `{prefix}_{sample}_{input}.npy` and `spec` (plus the input names and the sample count) as
/// `spec.json`. Returns the directory (what the script wrote there lives until it is dropped)
/// and the `result.json` the script must write; without one, an error with its stderr.
pub(crate) fn run_script(
    python: &Path,
    (name, text): (&str, &str),
    model: &Path,
    samples: &[Sample],
    prefix: &str,
    mut spec: serde_json::Value,
) -> anyhow::Result<(tempfile::TempDir, Vec<u8>)> {
    ensure!(!samples.is_empty(), "no samples");
    let dir = tempfile::tempdir()?;
    let script = dir.path().join(name);
    std::fs::write(&script, text)?;
    for (s, sample) in samples.iter().enumerate() {
        for (k, (_, t)) in sample.iter().enumerate() {
            std::fs::write(dir.path().join(format!("{prefix}_{s}_{k}.npy")), t.to_npy())?;
        }
    }
    spec["inputs"] = samples[0].iter().map(|(n, _)| n.clone()).collect();
    spec["samples"] = samples.len().into();
    std::fs::write(dir.path().join("spec.json"), serde_json::to_vec(&spec)?)?;
    let out = Command::new(python)
        .arg(&script)
        .arg(model)
        .arg(dir.path())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let result_path = dir.path().join("result.json");
    if !result_path.exists() {
        bail!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let result = std::fs::read(&result_path)?;
    Ok((dir, result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, v: &[f64]) -> HostTensor {
        HostTensor::from_f64s(ElemType::F32, shape, v)
    }

    #[test]
    fn identical_outputs_have_no_drift() {
        let a = vec![vec![t(vec![1, 4], &[0.1, 0.9, 0.3, 0.2])]];
        let d = drift(&a, &a, &[true]).expect("drift");
        assert_eq!(d.top1_agreement, Some(1.0));
        assert!((d.mean_cosine - 1.0).abs() < 1e-12);
        assert_eq!(d.accuracy_drift(), 0.0);
    }

    #[test]
    fn flipped_class_counts_as_disagreement() {
        let a = vec![
            vec![t(vec![1, 2], &[0.9, 0.1])],
            vec![t(vec![1, 2], &[0.2, 0.8])],
        ];
        let b = vec![
            vec![t(vec![1, 2], &[0.4, 0.6])],
            vec![t(vec![1, 2], &[0.2, 0.8])],
        ];
        let d = drift(&a, &b, &[true]).expect("drift");
        assert_eq!(d.top1_agreement, Some(0.5));
        assert_eq!(d.accuracy_drift(), 0.5);
        let d = drift(&a, &b, &[false]).expect("drift");
        assert_eq!(d.top1_agreement, None);
        assert!(d.accuracy_drift() > 0.0 && d.accuracy_drift() < 0.5);
        // Shapes alone: [1, 16, 384] is never class scores, [1, 4] is when asked.
        let t3 = vec![t(vec![1, 16, 384], &[0.0; 16 * 384])];
        let model = tract_onnx::pb::ModelProto::default();
        assert_eq!(classifier_outputs(&model, &t3, Task::Auto), vec![false]);
        let t2 = vec![t(vec![1, 4], &[0.0; 4])];
        assert_eq!(
            classifier_outputs(&model, &t2, Task::Classifier),
            vec![true]
        );
        assert_eq!(
            classifier_outputs(&model, &t2, Task::Regression),
            vec![false]
        );
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
