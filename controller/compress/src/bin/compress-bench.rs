//! compress-bench: compresses the real models with `edgefleet compress` (fp16, int8) and with
//! onnxruntime's `quantize_dynamic`, measures every variant with tract and onnxruntime in one
//! run, and prints a markdown table (see BENCHMARKS.md).
//!
//! cargo run --release -p edgefleet-compress --bin compress-bench -- [--samples N] [--runs N]
//!     [--models DIR] [--python PY] [--out DIR] [--only NAME,...]
//!
//! Models come from tests/tools/fetch-compress-models.sh; so does the Python (onnxruntime).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use edgefleet_compress::report::RuntimeMeasurement;
use edgefleet_compress::tensor::ShapeOptions;
use edgefleet_compress::{
    CompressOptions, ImportOptions, MeasureOptions, OrtOptions, OrtRunner, Report, VariantReport,
    compress, measure_import,
};
use edgefleet_crds::Runtime;

#[derive(Parser)]
struct Args {
    #[arg(long, env = "EDGEFLEET_MODELS")]
    models: Option<PathBuf>,
    #[arg(long, env = "EDGEFLEET_COMPRESS_ORT_PYTHON")]
    python: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    samples: usize,
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Keep the variants here (default: a temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only these models (orientation, ocr-cls, silero-vad, minilm).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// Measurement shapes: (input, dims).
type Shapes = &'static [(&'static str, &'static [usize])];

/// (file stem, measurement shapes)
const MODELS: &[(&str, Shapes)] = &[
    ("orientation", &[("x", &[1, 3, 224, 224])]),
    ("ocr-cls", &[("x", &[1, 3, 48, 192])]),
    ("silero-vad", &[]),
    (
        "minilm",
        &[("input_ids", &[1, 32]), ("attention_mask", &[1, 32])],
    ),
];

const QUANTIZE_DYNAMIC: &str = r#"
import sys
from onnxruntime.quantization import QuantType, quantize_dynamic
quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8)
"#;

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let models = args
        .models
        .unwrap_or_else(|| home().join(".cache/edgefleet/models"));
    let python = args
        .python
        .unwrap_or_else(|| home().join(".cache/edgefleet/tools/compress-venv/bin/python"));
    let ort = OrtRunner::new(&python);
    let ort_version = ort
        .check()
        .context("run tests/tools/fetch-compress-models.sh first")?;
    let tmp = tempfile::tempdir()?;
    let out = args.out.unwrap_or_else(|| tmp.path().to_path_buf());
    let mut rows = Vec::new();
    let mut host = String::new();
    for (name, shapes) in MODELS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        let path = models.join(format!("{name}.onnx"));
        ensure!(
            path.exists(),
            "{} is missing: run tests/tools/fetch-compress-models.sh",
            path.display()
        );
        eprintln!("compress-bench: {name}");
        let measure = MeasureOptions {
            samples: args.samples,
            runs: args.runs,
            shapes: ShapeOptions {
                shapes: shapes
                    .iter()
                    .map(|(n, s)| (n.to_string(), s.to_vec()))
                    .collect(),
                ..Default::default()
            },
            ort: Some(ort.clone()),
            ort_options: OrtOptions {
                disable_quant_qdq: true,
            },
            ..Default::default()
        };
        let dir = out.join(name);
        let report = compress(
            &path,
            &dir,
            &CompressOptions {
                measure: measure.clone(),
                model_name: Some(name.to_string()),
                ..Default::default()
            },
        )?;
        host = report.host.clone();
        for v in &report.variants {
            let tool = if v.name == "fp32" {
                "-"
            } else {
                "edgefleet compress"
            };
            rows.push(row(name, tool, v, &report));
        }
        // Our int8 in onnxruntime with its default QDQ handling (no session.disable_quant_qdq).
        if let Some(int8) = report.variants.iter().find(|v| v.name == "int8") {
            let qdq = ort.run(
                &int8.file,
                &edgefleet_compress::tensor::generate(
                    &edgefleet_compress::tensor::input_specs(
                        &edgefleet_compress::onnx::decode(&std::fs::read(&path)?)?,
                        &measure.shapes,
                    )?,
                    1,
                    measure.seed,
                ),
                args.runs,
                OrtOptions {
                    disable_quant_qdq: false,
                },
            );
            let ms = match qdq {
                Ok(r) => format!("{:.2}", r.latency_ms),
                Err(e) => format!("fails: {}", first_line(&format!("{e:#}"))),
            };
            rows.push(format!(
                "| {name} | int8, ort QDQ on | edgefleet compress | | | | | {ms} | | |"
            ));
        }
        // What an agent gets after `rehydrate` at install time: fp32 in memory, int8 values.
        if let Some(int8) = report.variants.iter().find(|v| v.name == "int8") {
            let back = edgefleet_compress::rehydrate(&std::fs::read(&int8.file)?)?;
            let path_back = dir.join("int8-rehydrated.onnx");
            std::fs::write(&path_back, back)?;
            let imported = measure_import(
                &path_back,
                &path,
                None,
                &ImportOptions {
                    name: Some("int8-rehydrated".into()),
                    measure: measure.clone(),
                    model_name: Some(name.to_string()),
                    ..Default::default()
                },
            )?;
            if let Some(v) = imported.variants.last() {
                rows.push(row(name, "int8 + rehydrate", v, &imported));
            }
        }
        // onnxruntime's own dynamic quantization, measured the same way.
        let ort_int8 = dir.join("ort-int8.onnx");
        if let Err(e) = quantize_dynamic(&python, &path, &ort_int8) {
            rows.push(format!(
                "| {name} | ort-int8 | ort quantize_dynamic | fails: {} | | | | | | |",
                last_line(&format!("{e:#}"))
            ));
            continue;
        }
        let imported = measure_import(
            &ort_int8,
            &path,
            None,
            &ImportOptions {
                name: Some("ort-int8".into()),
                runtime: Runtime::Onnxruntime,
                measure: measure.clone(),
                model_name: Some(name.to_string()),
                ..Default::default()
            },
        )?;
        if let Some(v) = imported.variants.last() {
            rows.push(row(name, "ort quantize_dynamic", v, &imported));
        }
    }
    println!(
        "Measured on {host}, onnxruntime {ort_version}, {} samples, latency median of {} runs, 1 thread.\n",
        args.samples, args.runs
    );
    println!(
        "| model | variant | made by | size | vs fp32 | tract ms | tract drift | ort ms | ort drift | accuracyDrift |"
    );
    println!("|---|---|---|---:|---:|---:|---|---:|---|---:|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    line.chars().take(120).collect()
}

fn last_line(s: &str) -> String {
    let line = s.trim().lines().last().unwrap_or_default();
    line.chars().take(160).collect()
}

fn drift(m: Option<&RuntimeMeasurement>) -> String {
    match m {
        None => "-".into(),
        Some(m) if !m.loaded => format!(
            "does not load: {}",
            first_line(m.error.as_deref().unwrap_or_default())
        ),
        Some(m) => match &m.drift {
            Some(d) => match d.top1_agreement {
                Some(a) => format!("cos {:.4}, top-1 {:.1}%", d.mean_cosine, a * 100.0),
                None => format!("cos {:.4}", d.mean_cosine),
            },
            None => "-".into(),
        },
    }
}

fn ms(m: Option<&RuntimeMeasurement>) -> String {
    m.and_then(|m| m.latency_ms)
        .map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| "-".into())
}

fn row(model: &str, tool: &str, v: &VariantReport, _report: &Report) -> String {
    format!(
        "| {model} | {} | {tool} | {:.2} MB | {:.0}% | {} | {} | {} | {} | {} |",
        v.name,
        v.size_bytes as f64 / 1e6,
        v.size_ratio * 100.0,
        ms(Some(&v.tract)),
        drift(Some(&v.tract)),
        ms(v.onnxruntime.as_ref()),
        drift(v.onnxruntime.as_ref()),
        v.accuracy_drift
            .map(|d| format!("{d:.4}"))
            .unwrap_or_else(|| "-".into()),
    )
}

fn quantize_dynamic(python: &Path, input: &Path, output: &Path) -> anyhow::Result<()> {
    let out = Command::new(python)
        .args(["-c", QUANTIZE_DYNAMIC])
        .arg(input)
        .arg(output)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "quantize_dynamic failed on {}: {}",
            input.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
