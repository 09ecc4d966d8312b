//! `edgefleet compress MODEL.gguf`: quantized variants of a GGUF language model made by
//! llama.cpp's own quantizer, each measured next to the source on this machine (size, load
//! time, RSS, time to first token, decode speed, next-token drift against the source), and
//! written as `format: gguf` variants for a `ModelDeployment`.

pub mod measure;

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use edgefleet_crds::{
    Artifact, GgufVariant, ModelFormat, Precision, Quality, Requirements, Runtime, Variant,
};
use edgefleet_gguf_quantize::{Quantization, ftype_name, quantize, read_header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::report::{host, min_memory_mib, sanitize, stem, uri};
pub use measure::{LlmDrift, Performance, Settings};

/// Where the artifacts are served from unless `--uri-template` says otherwise.
pub const DEFAULT_GGUF_URI_TEMPLATE: &str = "http://artifacts.local/{model}/{variant}.gguf";

/// The quantizations made by default.
pub const DEFAULT_QUANTIZATIONS: [Quantization; 3] =
    [Quantization::Q8_0, Quantization::Q4KM, Quantization::Q4_0];

#[derive(Clone, Debug)]
pub struct GgufOptions {
    pub quantizations: Vec<Quantization>,
    pub settings: Settings,
    pub uri_template: String,
    /// `{model}` in the URI (default: the source's file stem).
    pub model_name: Option<String>,
}

impl Default for GgufOptions {
    fn default() -> Self {
        GgufOptions {
            quantizations: DEFAULT_QUANTIZATIONS.to_vec(),
            settings: Settings {
                threads: default_threads(),
                decode_tokens: 32,
                runs: 3,
            },
            uri_template: DEFAULT_GGUF_URI_TEMPLATE.into(),
            model_name: None,
        }
    }
}

/// All cores.
pub fn default_threads() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// True for the inputs this module handles (`*.gguf`).
pub use crate::is_gguf;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GgufVariantReport {
    /// `q8-0`, `q4-k-m`, … (the source is named after its own quantization).
    pub name: String,
    /// llama.cpp's name: `Q8_0`, `Q4_K_M`, …
    pub quantization: String,
    pub precision: Precision,
    /// The source model (the drift reference).
    pub source: bool,
    pub file: PathBuf,
    pub uri: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// Size relative to the source.
    pub size_ratio: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub performance: Option<Performance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<LlmDrift>,
    /// Why it was not (fully) measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GgufReport {
    pub model: String,
    pub source: PathBuf,
    pub architecture: String,
    pub layers: u64,
    pub embedding_length: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub threads: u32,
    pub drift_prompts: usize,
    pub drift_positions: usize,
    pub decode_tokens: u32,
    pub runs: usize,
    pub host: String,
    pub variants: Vec<GgufVariantReport>,
}

/// The CRD precision of a llama.cpp file type: Q8_0 → int8, 16-bit → fp16, the 2- to 4-bit
/// types → int4, the 5- and 6-bit ones → mixed.
pub fn precision(quantization: &str) -> Precision {
    match quantization {
        "F32" => Precision::Fp32,
        "F16" | "BF16" => Precision::Fp16,
        "Q8_0" => Precision::Int8,
        q if q.starts_with("Q5") || q.starts_with("Q6") => Precision::Mixed,
        _ => Precision::Int4,
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Quantizes `source` into `out_dir` (`q8-0.gguf`, …, plus a copy of the source), measures
/// every file and writes `report.json` and `variants.yaml` there.
pub fn compress_gguf(
    source: &Path,
    out_dir: &Path,
    options: &GgufOptions,
) -> anyhow::Result<GgufReport> {
    let header = read_header(source)?;
    let model = options
        .model_name
        .as_deref()
        .map(sanitize)
        .unwrap_or_else(|| stem(source));
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let source_quant = header.quantization();
    let source_name = sanitize(source_quant);
    let source_copy = out_dir.join(format!("{source_name}.gguf"));
    std::fs::copy(source, &source_copy)
        .with_context(|| format!("copying {} to {}", source.display(), out_dir.display()))?;
    let mut files = vec![(source_name, source_quant.to_string(), source_copy, true)];
    let mut quantizations = options.quantizations.clone();
    quantizations.sort();
    quantizations.dedup();
    for q in quantizations {
        if header.file_type == Some(q.ftype()) {
            eprintln!("compress: the source is already {q}; not requantizing it");
            continue;
        }
        let name = sanitize(q.name());
        let path = out_dir.join(format!("{name}.gguf"));
        eprintln!("compress: quantizing to {q} ({})", path.display());
        quantize(source, &path, q, options.settings.threads)?;
        let written = read_header(&path)?;
        anyhow::ensure!(
            written.file_type == Some(q.ftype()),
            "{} says general.file_type {:?}, not {q}",
            path.display(),
            written
                .file_type
                .map(|t| ftype_name(t).unwrap_or("unknown"))
        );
        files.push((name, q.name().to_string(), path, false));
    }

    let source_size = std::fs::metadata(source)?.len();
    let mut reference = None;
    let mut variants = Vec::new();
    for (name, quantization, path, is_source) in files {
        eprintln!("compress: measuring {}", path.display());
        let size_bytes = std::fs::metadata(&path)?.len();
        let mut report = GgufVariantReport {
            uri: uri(&options.uri_template, &model, &name)?,
            name,
            precision: precision(&quantization),
            quantization,
            source: is_source,
            size_bytes,
            sha256: sha256_file(&path)?,
            size_ratio: size_bytes as f64 / source_size.max(1) as f64,
            file: path,
            performance: None,
            drift: None,
            error: None,
        };
        match measure::measure(&report.file, options.settings) {
            Ok((performance, next_tokens)) => {
                report.performance = Some(performance);
                // The source comes first and is the reference: its own drift is (1, 0).
                let drift = if is_source {
                    let d = measure::drift(&next_tokens, &next_tokens);
                    reference = Some(next_tokens);
                    d
                } else if let Some(r) = &reference {
                    measure::drift(r, &next_tokens)
                } else {
                    Err(anyhow::anyhow!("the source could not be measured"))
                };
                match drift {
                    Ok(d) => report.drift = Some(d),
                    Err(e) => report.error = Some(format!("drift: {e:#}")),
                }
            }
            Err(e) => report.error = Some(format!("{e:#}")),
        }
        variants.push(report);
    }
    let report = GgufReport {
        model,
        source: source.to_path_buf(),
        architecture: header.architecture.clone(),
        layers: header.layers,
        embedding_length: header.embedding_length,
        heads: header.heads,
        kv_heads: header.kv_heads,
        threads: options.settings.threads,
        drift_prompts: measure::PROMPTS.len(),
        drift_positions: reference.as_ref().map_or(0, |r| r.positions()),
        decode_tokens: options.settings.decode_tokens,
        runs: options.settings.runs.max(1),
        host: host(),
        variants,
    };
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(out_dir.join("variants.yaml"), variants_yaml(&report)?)?;
    Ok(report)
}

/// The measured variants (source included) as CRD variants; one that llama.cpp could not load
/// is left out.
pub fn variants(report: &GgufReport) -> Vec<Variant> {
    report
        .variants
        .iter()
        .filter(|v| v.performance.is_some())
        .map(|v| {
            let performance = v.performance.as_ref();
            // 64 MiB for the agent plus what loading and running took here (weights, KV cache
            // of the measurement context, compute buffers); the size estimate when unmeasured.
            let min_memory = performance
                .map(|p| p.rss_run_mib)
                .filter(|m| m.is_finite() && *m > 0.0)
                .map_or(min_memory_mib(v.size_bytes), |m| 64 + m.ceil() as u64);
            Variant {
                name: v.name.clone(),
                artifact: Artifact {
                    uri: v.uri.clone(),
                    sha256: v.sha256.clone(),
                    size_bytes: v.size_bytes,
                    signature: None,
                },
                format: ModelFormat::Gguf,
                precision: v.precision,
                runtime: Runtime::Llamacpp,
                requires: Requirements {
                    min_memory_mib: min_memory,
                    min_free_disk_mib: (2 * v.size_bytes).div_ceil(1 << 20).max(1),
                    ..Default::default()
                },
                quality: v.drift.as_ref().map(|d| Quality {
                    accuracy_drift: ((1.0 - d.top1_agreement).clamp(0.0, 1.0) * 1e6).round() / 1e6,
                    latency_hint_ms: performance.map(|p| (p.ttft_ms * 100.0).round() / 100.0),
                }),
                gguf: Some(GgufVariant {
                    quantization: v.quantization.clone(),
                    layers: report.layers,
                    embedding_length: report.embedding_length,
                    heads: report.heads,
                    kv_heads: report.kv_heads,
                }),
            }
        })
        .collect()
}

/// A `variants:` block ready to paste under a `ModelDeployment`'s `spec`.
pub fn variants_yaml(report: &GgufReport) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Block {
        variants: Vec<Variant>,
    }
    let mut out = format!(
        "# edgefleet compress: {} ({}, {} layers) on {}, {} threads.\n\
         # quality.accuracyDrift is 1 - next-token top-1 agreement with the source ({}) over {}\n\
         # positions of {} fixed prompts; latencyHintMs is the median time to first token.\n\
         # requires.minMemoryMib is 64 MiB + the RSS growth measured after loading and running.\n",
        report.model,
        report.architecture,
        report.layers,
        report.host,
        report.threads,
        report
            .variants
            .iter()
            .find(|v| v.source)
            .map_or("-", |v| v.quantization.as_str()),
        report.drift_positions,
        report.drift_prompts,
    );
    out.push_str(&serde_yaml::to_string(&Block {
        variants: variants(report),
    })?);
    Ok(out)
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "-".into(),
    }
}

/// The report as a markdown table.
pub fn markdown(report: &GgufReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({}): llama.cpp, {} threads, TTFT and decode median of {} runs ({} tokens), drift \
         over {} positions of {} prompts against the source, {}\n",
        report.model,
        report.architecture,
        report.threads,
        report.runs,
        report.decode_tokens,
        report.drift_positions,
        report.drift_prompts,
        report.host
    );
    let _ = writeln!(
        s,
        "| variant | quantization | size MB | load ms | RSS MiB (load / run) | TTFT ms | decode tok/s | top-1 agreement | mean KL |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for v in &report.variants {
        let p = v.performance.as_ref();
        let _ = writeln!(
            s,
            "| {}{} | {} | {:.1} | {} | {} / {} | {} | {} | {} | {} |",
            v.name,
            if v.source { " (source)" } else { "" },
            v.quantization,
            v.size_bytes as f64 / 1e6,
            num(p.map(|p| p.load_ms), 0),
            num(p.map(|p| p.rss_load_mib), 0),
            num(p.map(|p| p.rss_run_mib), 0),
            num(p.map(|p| p.ttft_ms), 1),
            num(p.map(|p| p.decode_tokens_per_s), 1),
            num(v.drift.as_ref().map(|d| d.top1_agreement), 3),
            num(v.drift.as_ref().map(|d| d.mean_kl), 4),
        );
    }
    for v in &report.variants {
        if let Some(e) = &v.error {
            let _ = writeln!(s, "\n- {}: {e}", v.name);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precisions_and_names() {
        assert_eq!(precision("Q8_0"), Precision::Int8);
        assert_eq!(precision("Q4_K_M"), Precision::Int4);
        assert_eq!(precision("Q4_1"), Precision::Int4);
        assert_eq!(precision("F16"), Precision::Fp16);
        assert_eq!(precision("Q6_K"), Precision::Mixed);
        assert_eq!(sanitize("Q4_K_M"), "q4-k-m");
        assert!(is_gguf(Path::new("a/b.GGUF")));
        assert!(!is_gguf(Path::new("a/b.onnx")));
    }
}
