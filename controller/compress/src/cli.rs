//! `edgefleet compress` command line: every flag also reads an `EDGEFLEET_COMPRESS_*` variable.

use std::collections::BTreeMap;
#[cfg(feature = "gguf")]
use std::path::Path;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use edgefleet_crds::{Precision, Runtime};
#[cfg(feature = "gguf")]
use edgefleet_gguf_quantize::Quantization;

#[cfg(feature = "gguf")]
use crate::gguf::{self, GgufOptions};
use crate::measure::{OrtOptions, OrtRunner, Task};
use crate::quantize::{self, DEFAULT_MIN_ELEMENTS};
use crate::report::{
    self, CompressOptions, DEFAULT_CALIBRATION_SAMPLES, DEFAULT_URI_TEMPLATE, ImportOptions,
    MeasureOptions, VariantKind,
};
use crate::tensor::ShapeOptions;

/// Make int8/fp16 variants of an ONNX model, measure them against fp32 and write a
/// `variants:` block (`compress MODEL.onnx --out DIR`); make llama.cpp quantizations of a GGUF
/// model and measure them against it (`compress MODEL.gguf --out DIR`); or measure a variant made elsewhere
/// (`compress measure VARIANT.onnx --reference FP32.onnx`).
#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CompressArgs {
    #[command(subcommand)]
    pub command: Option<CompressCommand>,
    /// The fp32 ONNX model (or the GGUF language model) to compress.
    #[arg(env = "EDGEFLEET_COMPRESS_MODEL", required = true)]
    pub model: Option<PathBuf>,
    /// Directory for fp32.onnx, the variants, report.json and variants.yaml.
    #[arg(long, env = "EDGEFLEET_COMPRESS_OUT", required = true)]
    pub out: Option<PathBuf>,
    /// Variants to make, comma-separated: fp16 and int8 store weights smaller (same speed as
    /// fp32); int8-dynamic also quantizes activations at run time, for MatMul-heavy models;
    /// int8-static (not by default: it wants --calibration and --ort-python) quantizes a CNN's
    /// activations with calibrated ranges.
    #[arg(
        long,
        env = "EDGEFLEET_COMPRESS_VARIANTS",
        value_enum,
        value_delimiter = ',',
        default_value = "fp16,int8,int8-dynamic"
    )]
    pub variants: Vec<VariantKind>,
    /// int8-static: inputs its activation ranges are calibrated on (.npy or JSON, like
    /// --inputs, and never the same file); default: generated, with a warning.
    #[arg(long, env = "EDGEFLEET_COMPRESS_CALIBRATION")]
    pub calibration: Option<PathBuf>,
    /// int8-static: at most this many calibration inputs.
    #[arg(long, env = "EDGEFLEET_COMPRESS_CALIBRATION_SAMPLES", default_value_t = DEFAULT_CALIBRATION_SAMPLES)]
    pub calibration_samples: usize,
    /// Tensors with fewer elements stay fp32.
    #[arg(long, env = "EDGEFLEET_COMPRESS_MIN_ELEMENTS", default_value_t = DEFAULT_MIN_ELEMENTS)]
    pub min_elements: usize,
    #[command(flatten)]
    pub artifact: ArtifactArgs,
    #[command(flatten)]
    pub measure: MeasureArgs,
    #[cfg(feature = "gguf")]
    #[command(flatten)]
    pub gguf: GgufArgs,
}

/// Options for GGUF inputs.
#[cfg(feature = "gguf")]
#[derive(Args, Debug, Clone)]
pub struct GgufArgs {
    /// GGUF: llama.cpp quantizations to make, comma-separated (Q8_0, Q4_K_M, Q4_0, Q2_K).
    #[arg(
        long,
        env = "EDGEFLEET_COMPRESS_QUANTIZATIONS",
        value_delimiter = ',',
        default_value = "Q8_0,Q4_K_M,Q4_0"
    )]
    pub quantizations: Vec<Quantization>,
    /// GGUF: threads for quantizing and measuring (default: all cores).
    #[arg(long, env = "EDGEFLEET_COMPRESS_THREADS")]
    pub threads: Option<u32>,
    /// GGUF: tokens generated per decode-speed run.
    #[arg(long, env = "EDGEFLEET_COMPRESS_DECODE_TOKENS", default_value_t = 32)]
    pub decode_tokens: u32,
    /// GGUF: time to first token and decode speed are the median of this many runs.
    #[arg(long, env = "EDGEFLEET_COMPRESS_GGUF_RUNS", default_value_t = 3)]
    pub gguf_runs: usize,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CompressCommand {
    /// Measure a variant produced by another tool against its fp32 reference.
    Measure(ImportArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The variant's ONNX file.
    #[arg(env = "EDGEFLEET_COMPRESS_VARIANT")]
    pub variant: PathBuf,
    /// The fp32 model it was made from.
    #[arg(long, env = "EDGEFLEET_COMPRESS_REFERENCE")]
    pub reference: PathBuf,
    /// Runtime the agent should load it with.
    #[arg(long, env = "EDGEFLEET_COMPRESS_RUNTIME", value_parser = parse_runtime, default_value = "tract")]
    pub runtime: Runtime,
    /// Variant name (default: the file stem).
    #[arg(long, env = "EDGEFLEET_COMPRESS_NAME")]
    pub name: Option<String>,
    /// fp32, fp16, int8, int4 or mixed (default: detected from the graph).
    #[arg(long, env = "EDGEFLEET_COMPRESS_PRECISION", value_parser = parse_precision)]
    pub precision: Option<Precision>,
    /// Also write report.json and variants.yaml here.
    #[arg(long, env = "EDGEFLEET_COMPRESS_OUT")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub artifact: ArtifactArgs,
    #[command(flatten)]
    pub measure: MeasureArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ArtifactArgs {
    /// Artifact URL; `{model}` and `{variant}` are replaced.
    #[arg(long, env = "EDGEFLEET_COMPRESS_URI_TEMPLATE", default_value = DEFAULT_URI_TEMPLATE)]
    pub uri_template: String,
    /// `{model}` in the URI (default: the model's file stem).
    #[arg(long, env = "EDGEFLEET_COMPRESS_MODEL_NAME")]
    pub model_name: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct MeasureArgs {
    /// Inputs for drift: a .npy (single-input models) or JSON file; default: generated.
    #[arg(long, env = "EDGEFLEET_COMPRESS_INPUTS")]
    pub inputs: Option<PathBuf>,
    /// Number of inputs drift is measured over.
    #[arg(long, env = "EDGEFLEET_COMPRESS_SAMPLES", default_value_t = 16)]
    pub samples: usize,
    /// Latency: median of this many runs.
    #[arg(long, env = "EDGEFLEET_COMPRESS_RUNS", default_value_t = 20)]
    pub runs: usize,
    /// Seed of the generated inputs.
    #[arg(long, env = "EDGEFLEET_COMPRESS_SEED", default_value_t = 0x5EED)]
    pub seed: u64,
    /// Input shape for measurement, NAME=D,D,... (repeatable; `;`-separated in the variable).
    #[arg(
        long = "shape",
        env = "EDGEFLEET_COMPRESS_SHAPE",
        value_delimiter = ';'
    )]
    pub shapes: Vec<String>,
    /// Size of symbolic dimensions other than the leading (batch = 1) one.
    #[arg(long, env = "EDGEFLEET_COMPRESS_DEFAULT_DIM", default_value_t = 64)]
    pub default_dim: usize,
    /// How outputs are compared: auto, classifier or regression.
    #[arg(
        long,
        env = "EDGEFLEET_COMPRESS_TASK",
        value_enum,
        default_value = "auto"
    )]
    pub task: Task,
    /// A Python with onnxruntime and numpy: also measure every variant with onnxruntime.
    #[arg(long, env = "EDGEFLEET_COMPRESS_ORT_PYTHON")]
    pub ort_python: Option<PathBuf>,
    /// Keep onnxruntime's QDQ handling on (by default `session.disable_quant_qdq=1`).
    #[arg(long, env = "EDGEFLEET_COMPRESS_ORT_KEEP_QDQ")]
    pub ort_keep_qdq: bool,
}

fn parse_runtime(s: &str) -> Result<Runtime, String> {
    match s {
        "tract" => Ok(Runtime::Tract),
        "onnxruntime" => Ok(Runtime::Onnxruntime),
        other => Err(format!("unknown runtime {other:?}: tract or onnxruntime")),
    }
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown precision {s:?}: fp32, fp16, int8, int4 or mixed"))
}

impl MeasureArgs {
    pub fn options(&self) -> anyhow::Result<MeasureOptions> {
        let mut shapes = BTreeMap::new();
        for s in &self.shapes {
            let (name, dims) = s
                .split_once('=')
                .with_context(|| format!("--shape {s:?}: expected NAME=D,D,..."))?;
            let dims = dims
                .split([',', 'x'])
                .filter(|d| !d.trim().is_empty())
                .map(|d| d.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--shape {s:?}: dimensions must be integers"))?;
            shapes.insert(name.to_string(), dims);
        }
        let ort = match &self.ort_python {
            Some(python) => {
                let runner = OrtRunner::new(python);
                runner.check()?;
                Some(runner)
            }
            None => None,
        };
        if self.samples == 0 || self.runs == 0 {
            bail!("--samples and --runs must be at least 1");
        }
        Ok(MeasureOptions {
            samples: self.samples,
            runs: self.runs,
            seed: self.seed,
            shapes: ShapeOptions {
                shapes,
                default_dim: self.default_dim,
            },
            inputs: self.inputs.clone(),
            task: self.task,
            ort,
            ort_options: OrtOptions {
                disable_quant_qdq: !self.ort_keep_qdq,
            },
        })
    }
}

/// Runs `edgefleet compress`: prints the markdown table to stdout.
pub fn run(args: CompressArgs) -> anyhow::Result<()> {
    let report = match args.command {
        Some(CompressCommand::Measure(a)) => {
            let options = ImportOptions {
                name: a.name,
                runtime: a.runtime,
                precision: a.precision,
                measure: a.measure.options()?,
                uri_template: a.artifact.uri_template,
                model_name: a.artifact.model_name,
            };
            let report =
                report::measure_import(&a.variant, &a.reference, a.out.as_deref(), &options)?;
            if let Some(out) = &a.out {
                eprintln!(
                    "compress: wrote {0}/report.json and {0}/variants.yaml",
                    out.display()
                );
            }
            report
        }
        None => {
            let (Some(model), Some(out)) = (args.model, args.out) else {
                bail!("usage: compress MODEL.onnx --out DIR (or compress measure ...)");
            };
            if crate::is_gguf(&model) {
                #[cfg(feature = "gguf")]
                return run_gguf(&model, &out, args.gguf, args.artifact);
                #[cfg(not(feature = "gguf"))]
                bail!(
                    "{}: this edgefleet was built without GGUF support (it links llama.cpp): \
                     build it with `--features llm`",
                    model.display()
                );
            }
            let mut variants = args.variants;
            variants.dedup();
            if args.calibration_samples == 0 {
                bail!("--calibration-samples must be at least 1");
            }
            let options = CompressOptions {
                variants,
                quantize: quantize::Options {
                    min_elements: args.min_elements,
                },
                measure: args.measure.options()?,
                uri_template: args.artifact.uri_template,
                model_name: args.artifact.model_name,
                calibration: args.calibration,
                calibration_samples: args.calibration_samples,
            };
            let report = report::compress(&model, &out, &options)?;
            eprintln!(
                "compress: wrote the variants, {0}/report.json and {0}/variants.yaml",
                out.display()
            );
            report
        }
    };
    println!("{}", report::markdown(&report));
    Ok(())
}

#[cfg(feature = "gguf")]
fn run_gguf(
    model: &Path,
    out: &Path,
    args: GgufArgs,
    artifact: ArtifactArgs,
) -> anyhow::Result<()> {
    if args.gguf_runs == 0 {
        bail!("--gguf-runs must be at least 1");
    }
    let options = GgufOptions {
        quantizations: args.quantizations,
        settings: gguf::Settings {
            threads: args.threads.unwrap_or_else(gguf::default_threads).max(1),
            decode_tokens: args.decode_tokens,
            runs: args.gguf_runs,
        },
        // The ONNX default names .onnx files; GGUF variants are .gguf.
        uri_template: if artifact.uri_template == DEFAULT_URI_TEMPLATE {
            gguf::DEFAULT_GGUF_URI_TEMPLATE.into()
        } else {
            artifact.uri_template
        },
        model_name: artifact.model_name,
    };
    let report = gguf::compress_gguf(model, out, &options)?;
    eprintln!(
        "compress: wrote the variants, {0}/report.json and {0}/variants.yaml",
        out.display()
    );
    println!("{}", gguf::markdown(&report));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: CompressArgs,
    }

    #[cfg(feature = "gguf")]
    #[test]
    fn parses_compress_and_measure() {
        let cli = Cli::try_parse_from([
            "compress",
            "m.onnx",
            "--out",
            "d",
            "--variants",
            "int8",
            "--shape",
            "x=1,3,48,192",
        ])
        .expect("compress");
        assert_eq!(cli.args.variants, vec![VariantKind::Int8]);
        assert!(cli.args.command.is_none());
        assert_eq!(cli.args.calibration_samples, DEFAULT_CALIBRATION_SAMPLES);
        let calibrated = Cli::try_parse_from([
            "compress",
            "m.onnx",
            "--out",
            "d",
            "--variants",
            "int8-static",
            "--calibration",
            "pages.npy",
            "--calibration-samples",
            "8",
        ])
        .expect("int8-static");
        assert_eq!(calibrated.args.variants, vec![VariantKind::Int8Static]);
        assert_eq!(
            calibrated.args.calibration,
            Some(PathBuf::from("pages.npy"))
        );
        assert_eq!(calibrated.args.calibration_samples, 8);
        let opts = cli.args.measure.options().expect("options");
        assert_eq!(opts.shapes.shapes["x"], vec![1, 3, 48, 192]);

        let cli = Cli::try_parse_from([
            "compress",
            "measure",
            "v.onnx",
            "--reference",
            "r.onnx",
            "--runtime",
            "onnxruntime",
        ])
        .expect("measure");
        match cli.args.command {
            Some(CompressCommand::Measure(a)) => assert_eq!(a.runtime, Runtime::Onnxruntime),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["compress", "m.onnx"]).is_err());

        let cli = Cli::try_parse_from(["compress", "m.gguf", "--out", "d"]).expect("gguf");
        assert_eq!(cli.args.gguf.quantizations, gguf::DEFAULT_QUANTIZATIONS);
        let cli = Cli::try_parse_from([
            "compress",
            "m.gguf",
            "--out",
            "d",
            "--quantizations",
            "q4_k_m,Q2_K",
        ])
        .expect("gguf quantizations");
        assert_eq!(
            cli.args.gguf.quantizations,
            [Quantization::Q4KM, Quantization::Q2K]
        );
        assert!(
            Cli::try_parse_from(["compress", "m.gguf", "--out", "d", "--quantizations", "Q3"])
                .is_err()
        );
    }
}
