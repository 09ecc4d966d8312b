//! The measured pipelines ([`compress`], [`measure_import`]) and what they produce: `report.json`,
//! a markdown table and the `variants:` YAML block.

mod options;
mod render;
pub use options::{
    CompressOptions, DEFAULT_CALIBRATION_SAMPLES, DEFAULT_URI_TEMPLATE, ImportOptions,
    MeasureOptions, VariantKind,
};
pub use render::{markdown, min_memory_mib, variants, variants_yaml};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use edgefleet_crds::{Artifact, ModelFormat, Precision, Quality, Requirements, Runtime, Variant};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tract_onnx::pb::ModelProto;

use crate::calibrated::{self, Calibration};
use crate::measure::{self, Drift, Outputs, TractRunner};
pub use crate::onnx::detect_precision;
use crate::quantize::{self, RewriteSummary};
use crate::tensor::{self, InputSpec, Sample};
use crate::{CompressError, dynamic, onnx};

/// One runtime's measurement of one variant.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeMeasurement {
    pub loaded: bool,
    /// Why it was not measured (load or run failure, reference not measurable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// fp32's latency timed alternately with this variant in the same process (onnxruntime):
    /// what "faster than fp32" is decided on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp32_latency_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VariantReport {
    pub name: String,
    pub precision: Precision,
    pub runtime: Runtime,
    pub file: PathBuf,
    pub uri: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// Size relative to the reference (fp32) model.
    pub size_ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteSummary>,
    pub tract: RuntimeMeasurement,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<RuntimeMeasurement>,
    /// `quality.accuracyDrift`: from tract if it ran the variant, else from onnxruntime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_drift: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub model: String,
    pub reference: PathBuf,
    pub opset: i64,
    pub ir_version: i64,
    pub inputs: serde_json::Value,
    /// `generated (seed N)` or the input file.
    pub input_source: String,
    pub samples: usize,
    pub latency_runs: usize,
    /// tract runs single-threaded; onnxruntime is given 1 intra-op thread.
    pub threads: usize,
    pub host: String,
    pub variants: Vec<VariantReport>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lower-case `[a-z0-9-]`, as the CRD wants names.
pub(crate) fn sanitize(name: &str) -> String {
    let s: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-').to_string();
    let s: String = s.chars().take(63).collect();
    if s.is_empty() { "model".into() } else { s }
}

pub(crate) fn stem(path: &Path) -> String {
    sanitize(
        &path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default(),
    )
}

pub(crate) fn uri(template: &str, model: &str, variant: &str) -> anyhow::Result<String> {
    let uri = template
        .replace("{model}", model)
        .replace("{variant}", variant);
    ensure!(
        uri.starts_with("http://") || uri.starts_with("https://"),
        "--uri-template must give an http(s) URL, got {uri:?}"
    );
    Ok(uri)
}

/// onnxruntime's reference outputs, latency and version.
type OrtBaseline = (Vec<Outputs>, f64, String);

/// What the reference produced, shared by every variant's measurement.
struct Baseline {
    reference: PathBuf,
    specs: Vec<InputSpec>,
    classifier: Vec<bool>,
    samples: Vec<Sample>,
    input_source: String,
    tract: Result<(Vec<Outputs>, f64), String>,
    ort: Option<Result<OrtBaseline, String>>,
}

fn baseline(
    reference_path: &Path,
    reference: &ModelProto,
    reference_bytes: &[u8],
    options: &MeasureOptions,
) -> anyhow::Result<Baseline> {
    let specs = tensor::input_specs(reference, &options.shapes)?;
    let (samples, input_source) = match &options.inputs {
        Some(path) => (
            tensor::load_inputs(path, &specs, options.samples)?,
            path.display().to_string(),
        ),
        None => (
            tensor::generate(&specs, options.samples.max(1), options.seed),
            format!("generated (seed {})", options.seed),
        ),
    };
    let tract = run_tract(reference_bytes, &specs, &samples, options.runs)
        .map_err(|e| format!("reference: {e:#}"));
    let ort = options.ort.as_ref().map(|runner| {
        runner
            .run(reference_path, &samples, options.runs, options.ort_options)
            .map(|r| (r.outputs, r.latency_ms, r.version))
            .map_err(|e| format!("reference: {e:#}"))
    });
    let first = match (&tract, &ort) {
        (Ok((outputs, _)), _) | (_, Some(Ok((outputs, _, _)))) => outputs.first().cloned(),
        _ => None,
    };
    let classifier = first
        .map(|o| measure::classifier_outputs(reference, &o, options.task))
        .unwrap_or_default();
    Ok(Baseline {
        reference: reference_path.to_path_buf(),
        specs,
        classifier,
        samples,
        input_source,
        tract,
        ort,
    })
}

fn run_tract(
    bytes: &[u8],
    specs: &[InputSpec],
    samples: &[Sample],
    runs: usize,
) -> anyhow::Result<(Vec<Outputs>, f64)> {
    let runner = TractRunner::load(bytes, specs)?;
    let outputs = samples
        .iter()
        .map(|s| runner.run(s))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("tract could not run the model")?;
    let latency = runner.latency_ms(&samples[0], runs)?;
    Ok((outputs, latency))
}

fn measure_tract(bytes: &[u8], base: &Baseline, options: &MeasureOptions) -> RuntimeMeasurement {
    match run_tract(bytes, &base.specs, &base.samples, options.runs) {
        Err(e) => RuntimeMeasurement {
            loaded: false,
            error: Some(format!("{e:#}")),
            ..Default::default()
        },
        Ok((outputs, latency)) => {
            let (drift, error) = match &base.tract {
                Ok((reference, _)) => match measure::drift(reference, &outputs, &base.classifier) {
                    Ok(d) => (Some(d), None),
                    Err(e) => (None, Some(format!("drift: {e:#}"))),
                },
                Err(e) => (None, Some(e.clone())),
            };
            RuntimeMeasurement {
                loaded: true,
                error,
                latency_ms: Some(latency),
                drift,
                version: Some("tract-onnx 0.23".into()),
                fp32_latency_ms: None,
            }
        }
    }
}

fn measure_ort(
    path: &Path,
    base: &Baseline,
    options: &MeasureOptions,
) -> Option<RuntimeMeasurement> {
    let runner = options.ort.as_ref()?;
    Some(
        match runner.run_paired(
            path,
            Some(&base.reference),
            &base.samples,
            options.runs,
            options.ort_options,
        ) {
            Err(e) => RuntimeMeasurement {
                loaded: false,
                error: Some(format!("{e:#}")),
                ..Default::default()
            },
            Ok(r) => {
                let (drift, error) = match &base.ort {
                    Some(Ok((reference, _, _))) => {
                        match measure::drift(reference, &r.outputs, &base.classifier) {
                            Ok(d) => (Some(d), None),
                            Err(e) => (None, Some(format!("drift: {e:#}"))),
                        }
                    }
                    Some(Err(e)) => (None, Some(e.clone())),
                    None => (None, None),
                };
                RuntimeMeasurement {
                    loaded: true,
                    error,
                    latency_ms: Some(r.latency_ms),
                    drift,
                    version: Some(format!("onnxruntime {}", r.version)),
                    fp32_latency_ms: r.paired_latency_ms,
                }
            }
        },
    )
}

fn reference_report(
    path: &Path,
    file: PathBuf,
    bytes: &[u8],
    base: &Baseline,
    uri: String,
) -> VariantReport {
    let tract = match &base.tract {
        Ok((outputs, latency)) => RuntimeMeasurement {
            loaded: true,
            error: None,
            latency_ms: Some(*latency),
            drift: measure::drift(outputs, outputs, &base.classifier).ok(),
            version: Some("tract-onnx 0.23".into()),
            fp32_latency_ms: None,
        },
        Err(e) => RuntimeMeasurement {
            loaded: false,
            error: Some(e.clone()),
            ..Default::default()
        },
    };
    let onnxruntime = base.ort.as_ref().map(|r| match r {
        Ok((outputs, latency, version)) => RuntimeMeasurement {
            loaded: true,
            error: None,
            latency_ms: Some(*latency),
            drift: measure::drift(outputs, outputs, &base.classifier).ok(),
            version: Some(format!("onnxruntime {version}")),
            fp32_latency_ms: None,
        },
        Err(e) => RuntimeMeasurement {
            loaded: false,
            error: Some(e.clone()),
            ..Default::default()
        },
    });
    let _ = path;
    VariantReport {
        name: "fp32".into(),
        precision: Precision::Fp32,
        runtime: Runtime::Tract,
        file,
        uri,
        size_bytes: bytes.len() as u64,
        sha256: sha256_hex(bytes),
        size_ratio: 1.0,
        rewrite: None,
        tract,
        onnxruntime,
        accuracy_drift: Some(0.0),
        notes: vec!["reference".into()],
    }
}

fn accuracy_drift(v: &VariantReport) -> Option<f64> {
    v.tract
        .drift
        .as_ref()
        .or(v.onnxruntime.as_ref().and_then(|o| o.drift.as_ref()))
        .map(Drift::accuracy_drift)
}

pub(crate) fn host() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{} {}, {cpu}", std::env::consts::OS, std::env::consts::ARCH)
}

fn read_model(path: &Path) -> anyhow::Result<(Vec<u8>, ModelProto)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let model = onnx::decode(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok((bytes, model))
}

/// Writes the fp32 reference and each requested variant into `out_dir`, measures them all and
/// writes `report.json` and `variants.yaml` there.
pub fn compress(
    model_path: &Path,
    out_dir: &Path,
    options: &CompressOptions,
) -> anyhow::Result<Report> {
    let (bytes, model) = read_model(model_path)?;
    let model_name = options
        .model_name
        .clone()
        .map(|n| sanitize(&n))
        .unwrap_or_else(|| stem(model_path));
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let fp32_path = out_dir.join("fp32.onnx");
    std::fs::write(&fp32_path, &bytes)?;
    let base = baseline(model_path, &model, &bytes, &options.measure)?;
    let mut variants = vec![reference_report(
        model_path,
        fp32_path,
        &bytes,
        &base,
        uri(&options.uri_template, &model_name, "fp32")?,
    )];
    let mut kinds = options.variants.clone();
    kinds.dedup();
    for kind in kinds {
        let made = match kind {
            VariantKind::Fp16 => quantize::convert_fp16(&bytes, options.quantize),
            VariantKind::Int8 => quantize::quantize_int8(&bytes, options.quantize),
            VariantKind::Int8Dynamic => dynamic::quantize_dynamic(&bytes, options.quantize),
            VariantKind::Int8Static => calibrated::make(
                model_path,
                &model,
                &base.specs,
                &Calibration {
                    file: options.calibration.as_deref(),
                    samples: options.calibration_samples,
                    drift_inputs: options.measure.inputs.as_deref(),
                    drift_seed: options.measure.seed,
                },
                options.measure.ort.as_ref(),
            )?,
        };
        let (out, summary) = match made {
            Ok(made) => made,
            Err(CompressError::Unsupported(why)) => {
                eprintln!("compress: no {} variant: {why}", kind.name());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let path = out_dir.join(format!("{}.onnx", kind.name()));
        std::fs::write(&path, &out)?;
        let mut report = VariantReport {
            name: kind.name().into(),
            precision: kind.precision(),
            runtime: Runtime::Tract,
            file: path.clone(),
            uri: uri(&options.uri_template, &model_name, kind.name())?,
            size_bytes: out.len() as u64,
            sha256: sha256_hex(&out),
            size_ratio: out.len() as f64 / bytes.len().max(1) as f64,
            notes: summary.notes.clone(),
            rewrite: Some(summary),
            tract: measure_tract(&out, &base, &options.measure),
            onnxruntime: measure_ort(&path, &base, &options.measure),
            accuracy_drift: None,
        };
        report.accuracy_drift = accuracy_drift(&report);
        variants.push(report);
    }
    // Say in the report why an activation-quantized variant is not offered on a runtime.
    let measured = variants.clone();
    for v in &mut variants {
        for runtime in [Runtime::Tract, Runtime::Onnxruntime] {
            if let Some((mine, fp32)) = render::slower_than_fp32(&measured, v, runtime) {
                v.notes.push(format!(
                    "not offered for {}: {mine:.2} ms there against fp32's {fp32:.2} ms",
                    runtime.as_str()
                ));
            }
        }
    }
    let report = Report {
        model: model_name,
        reference: model_path.to_path_buf(),
        opset: onnx::opset(&model),
        ir_version: model.ir_version,
        inputs: serde_json::to_value(&base.specs)?,
        input_source: base.input_source.clone(),
        samples: base.samples.len(),
        latency_runs: options.measure.runs,
        threads: 1,
        host: host(),
        variants,
    };
    write_outputs(&report, out_dir)?;
    Ok(report)
}

/// Measures a variant made elsewhere against its fp32 reference. A variant tract cannot load is
/// still reported (size, sha256, and why it was not measured); with `--ort-python` it is measured
/// with onnxruntime instead. Writes `report.json` and `variants.yaml` when `out_dir` is given.
pub fn measure_import(
    variant_path: &Path,
    reference_path: &Path,
    out_dir: Option<&Path>,
    options: &ImportOptions,
) -> anyhow::Result<Report> {
    let (ref_bytes, reference) = read_model(reference_path)?;
    let (bytes, variant) = read_model(variant_path)?;
    let model_name = options
        .model_name
        .clone()
        .map(|n| sanitize(&n))
        .unwrap_or_else(|| stem(reference_path));
    let name = options
        .name
        .clone()
        .map(|n| sanitize(&n))
        .unwrap_or_else(|| stem(variant_path));
    let base = baseline(reference_path, &reference, &ref_bytes, &options.measure)?;
    let mut notes = Vec::new();
    let tract = measure_tract(&bytes, &base, &options.measure);
    if !tract.loaded {
        notes.push(format!(
            "not measured with tract: {}",
            tract.error.clone().unwrap_or_default()
        ));
        if options.runtime == Runtime::Tract {
            notes.push(
                "runtime is tract but tract cannot run this variant: pass --runtime onnxruntime"
                    .into(),
            );
        }
    }
    let onnxruntime = measure_ort(variant_path, &base, &options.measure);
    if onnxruntime.is_none() && !tract.loaded {
        notes.push("no --ort-python: latency and drift not measured".into());
    }
    let mut report = VariantReport {
        name: name.clone(),
        precision: options
            .precision
            .unwrap_or_else(|| detect_precision(&variant)),
        runtime: options.runtime,
        file: variant_path.to_path_buf(),
        uri: uri(&options.uri_template, &model_name, &name)?,
        size_bytes: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
        size_ratio: bytes.len() as f64 / ref_bytes.len().max(1) as f64,
        rewrite: None,
        tract,
        onnxruntime,
        accuracy_drift: None,
        notes,
    };
    report.accuracy_drift = accuracy_drift(&report);
    let report = Report {
        model: model_name.clone(),
        reference: reference_path.to_path_buf(),
        opset: onnx::opset(&reference),
        ir_version: reference.ir_version,
        inputs: serde_json::to_value(&base.specs)?,
        input_source: base.input_source.clone(),
        samples: base.samples.len(),
        latency_runs: options.measure.runs,
        threads: 1,
        host: host(),
        variants: vec![
            reference_report(
                reference_path,
                reference_path.to_path_buf(),
                &ref_bytes,
                &base,
                uri(&options.uri_template, &model_name, "fp32")?,
            ),
            report,
        ],
    };
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_outputs(&report, dir)?;
    }
    Ok(report)
}

fn write_outputs(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(report)?)?;
    std::fs::write(dir.join("variants.yaml"), variants_yaml(report)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uris() {
        assert_eq!(
            sanitize("paraphrase-MiniLM_L3.v2"),
            "paraphrase-minilm-l3-v2"
        );
        assert_eq!(sanitize("__"), "model");
        assert_eq!(
            uri("https://h/{model}/{variant}.onnx", "m", "int8").expect("uri"),
            "https://h/m/int8.onnx"
        );
        assert!(uri("s3://bucket/{variant}", "m", "int8").is_err());
        assert_eq!(min_memory_mib(1 << 20), 67);
    }
}
