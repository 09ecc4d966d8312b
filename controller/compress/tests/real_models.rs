//! `compress` on the real models: the fp16 and int8 variants load and run in tract and in
//! onnxruntime (Python subprocess), are as small as promised, drift within the documented
//! bounds, and the written variants.yaml is a valid list of CRD variants.
//!
//! Needs tests/tools/fetch-compress-models.sh (fails, never skips, without it).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use edgefleet_compress::report::RuntimeMeasurement;
use edgefleet_compress::tensor::ShapeOptions;
use edgefleet_compress::{CompressOptions, MeasureOptions, Report, VariantKind, compress};
use edgefleet_crds::{Precision, Runtime, Variant};
use sha2::Digest;

fn options(shapes: &[(&str, &[usize])]) -> CompressOptions {
    CompressOptions {
        measure: MeasureOptions {
            samples: 8,
            runs: 2,
            shapes: ShapeOptions {
                shapes: shapes
                    .iter()
                    .map(|(n, s)| (n.to_string(), s.to_vec()))
                    .collect::<BTreeMap<_, _>>(),
                ..Default::default()
            },
            ort: Some(common::ort()),
            ..Default::default()
        },
        uri_template: "https://models.example/{model}/{variant}.onnx".into(),
        ..Default::default()
    }
}

fn measured(m: &RuntimeMeasurement, what: &str) -> (f64, Option<f64>) {
    assert!(m.loaded, "{what} did not load: {:?}", m.error);
    assert!(m.error.is_none(), "{what}: {:?}", m.error);
    assert!(m.latency_ms.is_some_and(|l| l > 0.0), "{what}: no latency");
    let d = m
        .drift
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no drift"));
    (d.mean_cosine, d.top1_agreement)
}

/// Common checks; returns (int8 size ratio, int8 tract cosine, int8 tract top-1).
fn check(report: &Report, dir: &Path, min_cosine_int8: f64) -> (f64, f64, Option<f64>) {
    let names: Vec<&str> = report.variants.iter().map(|v| v.name.as_str()).collect();
    // int8-dynamic only where MatMuls hold the weights (MiniLM; not the CNNs or silero-vad).
    assert_eq!(names[..3], ["fp32", "fp16", "int8"]);
    assert!(
        names[3..].is_empty() || names[3..] == ["int8-dynamic"],
        "{names:?}"
    );
    for v in &report.variants {
        let bytes = std::fs::read(&v.file).expect("variant file");
        assert_eq!(bytes.len() as u64, v.size_bytes);
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), v.sha256);
        let (cos_t, top1_t) = measured(&v.tract, &format!("{} in tract", v.name));
        let ort = v.onnxruntime.as_ref().expect("onnxruntime measured");
        let (cos_o, _) = measured(ort, &format!("{} in onnxruntime", v.name));
        let min = match v.name.as_str() {
            "fp32" => 0.999_999,
            "fp16" => 0.999,
            // Activations quantized too: the bar (quantize_dynamic: 0.959).
            "int8-dynamic" => 0.95,
            _ => min_cosine_int8,
        };
        assert!(cos_t >= min, "{}: tract cosine {cos_t} < {min}", v.name);
        assert!(
            cos_o >= min,
            "{}: onnxruntime cosine {cos_o} < {min}",
            v.name
        );
        if let Some(top1) = top1_t {
            assert!(top1 >= 0.85, "{}: top-1 agreement {top1}", v.name);
        }
    }
    let fp16 = &report.variants[1];
    assert!(
        fp16.size_ratio <= 0.65,
        "fp16 is {:.0}% of fp32",
        fp16.size_ratio * 100.0
    );
    // The yaml block is a valid list of CRD variants, matching the report.
    #[derive(serde::Deserialize)]
    struct Block {
        variants: Vec<Variant>,
    }
    let yaml = std::fs::read_to_string(dir.join("variants.yaml")).expect("variants.yaml");
    let block: Block = serde_yaml::from_str(&yaml).expect("variants.yaml deserializes");
    // Each variant is offered for tract and, measured on ONNX Runtime too, as `NAME-ort`.
    let offered: Vec<&str> = block.variants.iter().map(|v| v.name.as_str()).collect();
    // ... except where the report says it is not (int8-dynamic slower than fp32 there).
    let not_offered = |v: &edgefleet_compress::VariantReport, runtime: &str| {
        v.notes
            .iter()
            .any(|n| n.starts_with(&format!("not offered for {runtime}:")))
    };
    let twins: Vec<String> = report
        .variants
        .iter()
        .flat_map(|v| {
            let tract = (!not_offered(v, "tract")).then(|| v.name.clone());
            let ort = (!not_offered(v, "onnxruntime")).then(|| format!("{}-ort", v.name));
            tract.into_iter().chain(ort)
        })
        .collect();
    assert_eq!(offered, twins);
    for twin in block.variants.iter().filter(|v| v.name.ends_with("-ort")) {
        assert_eq!(twin.runtime, Runtime::Onnxruntime, "{}", twin.name);
    }
    let tract: Vec<&Variant> = block
        .variants
        .iter()
        .filter(|v| v.runtime == Runtime::Tract)
        .collect();
    let offered_for_tract = report.variants.iter().filter(|v| !not_offered(v, "tract"));
    assert_eq!(tract.len(), offered_for_tract.clone().count());
    for (v, r) in tract.into_iter().zip(offered_for_tract) {
        assert_eq!(v.name, r.name);
        assert_eq!(v.artifact.sha256, r.sha256);
        assert_eq!(v.artifact.size_bytes, r.size_bytes);
        assert_eq!(
            v.artifact.uri,
            format!("https://models.example/{}/{}.onnx", report.model, r.name)
        );
        assert_eq!(v.runtime, Runtime::Tract);
        assert!(v.requires.min_memory_mib >= 64);
        let q = v.quality.as_ref().expect("quality");
        assert!((0.0..=1.0).contains(&q.accuracy_drift));
        assert!(q.latency_hint_ms.is_some_and(|l| l > 0.0));
    }
    let precision = |name: &str| {
        block
            .variants
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.precision)
    };
    assert_eq!(precision("fp32"), Some(Precision::Fp32));
    assert_eq!(precision("fp16-ort"), Some(Precision::Fp16));
    assert_eq!(precision("int8"), Some(Precision::Int8));
    let report_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json"))
            .expect("report.json parses");
    assert_eq!(
        report_json["variants"].as_array().map(Vec::len),
        Some(names.len())
    );
    let int8 = &report.variants[2];
    let d = int8.tract.drift.as_ref().expect("int8 drift");
    (int8.size_ratio, d.mean_cosine, d.top1_agreement)
}

#[test]
fn orientation_cnn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = compress(
        &common::model("orientation.onnx"),
        dir.path(),
        &options(&[("x", &[1, 3, 224, 224])]),
    )
    .expect("compress");
    let (ratio, cos, top1) = check(&report, dir.path(), 0.99);
    // Weight-dominated CNN, opset 15: per-channel int8, about 4x smaller.
    assert!(ratio <= 0.30, "int8 is {:.0}% of fp32", ratio * 100.0);
    assert!(top1.is_some(), "a 4-class classifier");
    let granularity = report.variants[2]
        .rewrite
        .as_ref()
        .and_then(|r| r.granularity.clone());
    assert_eq!(granularity.as_deref(), Some("per-channel"));
    eprintln!(
        "orientation: int8 {:.1}% cos {cos:.5} top1 {top1:?}",
        ratio * 100.0
    );
}

#[test]
fn ocr_cls_opset11_per_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = compress(
        &common::model("ocr-cls.onnx"),
        dir.path(),
        &options(&[("x", &[1, 3, 48, 192])]),
    )
    .expect("compress");
    let (ratio, cos, top1) = check(&report, dir.path(), 0.99);
    // Opset 11: DequantizeLinear without axis, one scale per tensor; weights stored in Constant
    // nodes (paddle2onnx) are lifted to initializers first.
    let rewrite = report.variants[2].rewrite.as_ref().expect("rewrite");
    assert_eq!(rewrite.granularity.as_deref(), Some("per-tensor"));
    assert!(rewrite.constants_lifted > 0);
    // A small model: many of its tensors are under 1024 elements (depthwise 3x3 kernels, batch
    // norms) and stay fp32, so int8 is well above 25% of fp32.
    assert!(ratio < 0.5, "int8 is {:.0}% of fp32", ratio * 100.0);
    assert!(top1.is_some(), "a 2-class classifier");
    eprintln!(
        "ocr-cls: int8 {:.1}% cos {cos:.5} top1 {top1:?}",
        ratio * 100.0
    );
}

#[test]
fn silero_vad_constants_in_subgraph_functions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report =
        compress(&common::model("silero-vad.onnx"), dir.path(), &options(&[])).expect("compress");
    let (ratio, cos, top1) = check(&report, dir.path(), 0.99);
    assert!(ratio <= 0.35, "int8 is {:.0}% of fp32", ratio * 100.0);
    assert!(top1.is_none(), "a [1, 1] probability is not class scores");
    eprintln!("silero-vad: int8 {:.1}% cos {cos:.5}", ratio * 100.0);
}

#[test]
fn minilm_transformer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = compress(
        &common::model("minilm.onnx"),
        dir.path(),
        &options(&[("input_ids", &[1, 32]), ("attention_mask", &[1, 32])]),
    )
    .expect("compress");
    let (ratio, cos, top1) = check(&report, dir.path(), 0.99);
    // Embedding table (per-row) + MatMul weights (per-column): about 4x smaller.
    assert!(ratio <= 0.30, "int8 is {:.0}% of fp32", ratio * 100.0);
    assert!(
        top1.is_none(),
        "token and pooled embeddings are not class scores"
    );
    eprintln!("minilm: int8 {:.1}% cos {cos:.5}", ratio * 100.0);
}

#[test]
fn minilm_dynamic_int8_runs_on_integer_kernels_in_both_runtimes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(&[("input_ids", &[1, 32]), ("attention_mask", &[1, 32])]);
    opts.variants = vec![VariantKind::Int8Dynamic];
    // Enough runs that the ~1.7x ONNX Runtime speed-up is not lost in the noise of 2 runs.
    opts.measure.runs = 10;
    let report = compress(&common::model("minilm.onnx"), dir.path(), &opts).expect("compress");
    let names: Vec<&str> = report.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["fp32", "int8-dynamic"]);
    let v = &report.variants[1];
    assert_eq!(v.precision, Precision::Int8);
    let rewrite = v.rewrite.as_ref().expect("rewrite summary");
    assert!(
        rewrite
            .notes
            .iter()
            .any(|n| n.starts_with("18 MatMul on integer kernels")),
        "{:?}",
        rewrite.notes
    );
    // The graph really computes in integers: MatMulInteger fed by DynamicQuantizeLinear.
    let model =
        edgefleet_compress::onnx::decode(&std::fs::read(&v.file).expect("file")).expect("decodes");
    let ops: Vec<&str> = model
        .graph
        .as_ref()
        .expect("graph")
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    assert_eq!(ops.iter().filter(|o| **o == "MatMulInteger").count(), 18);
    assert!(ops.contains(&"DynamicQuantizeLinear"));
    assert!(v.size_ratio <= 0.30, "{:.0}% of fp32", v.size_ratio * 100.0);
    let (cos_tract, _) = measured(&v.tract, "int8-dynamic in tract");
    let ort = v.onnxruntime.as_ref().expect("onnxruntime measured");
    let (cos_ort, _) = measured(ort, "int8-dynamic in onnxruntime");
    // The bar; ONNX Runtime's own quantize_dynamic measured 0.959 here.
    assert!(cos_ort >= 0.95, "onnxruntime cosine {cos_ort}");
    assert!(cos_tract >= 0.95, "tract cosine {cos_tract}");
    // Offered on both runtimes, each with its own measured latency.
    let offered = edgefleet_compress::variants(&report);
    let by_name = |n: &str| {
        offered
            .iter()
            .find(|o| o.name == n)
            .unwrap_or_else(|| panic!("{n} not offered"))
    };
    assert_eq!(by_name("fp32-ort").runtime, Runtime::Onnxruntime);
    // Offered on a runtime only where it measured faster than fp32 there, and the report says
    // why not otherwise (tract has no integer MatMul kernels: far slower).
    let fp32 = &report.variants[0];
    for (runtime, twin, mine, reference) in [
        (
            "tract",
            "int8-dynamic",
            v.tract.latency_ms,
            fp32.tract.latency_ms,
        ),
        (
            "onnxruntime",
            "int8-dynamic-ort",
            ort.latency_ms,
            fp32.onnxruntime.as_ref().and_then(|o| o.latency_ms),
        ),
    ] {
        let (mine, reference) = (mine.expect("measured"), reference.expect("measured"));
        let offered_here = offered.iter().find(|o| o.name == twin);
        let noted = v
            .notes
            .iter()
            .any(|n| n.starts_with(&format!("not offered for {runtime}:")));
        if mine < reference {
            let o = offered_here.unwrap_or_else(|| panic!("{twin} is faster but not offered"));
            assert_eq!(o.artifact.sha256, v.sha256);
            let hint = o.quality.as_ref().and_then(|q| q.latency_hint_ms);
            assert_eq!(hint, Some((mine * 100.0).round() / 100.0));
            assert!(!noted, "{:?}", v.notes);
        } else {
            assert!(
                offered_here.is_none(),
                "{twin}: {mine} ms >= fp32 {reference} ms"
            );
            assert!(noted, "{:?}", v.notes);
        }
    }
    // Whether it is faster is a measurement (BENCHMARKS.md, agent-bench): on a loaded
    // machine it may not be, and the loop above checks that the offer follows it either way.
    if let Some(ort_twin) = offered.iter().find(|o| o.name == "int8-dynamic-ort") {
        assert_eq!(ort_twin.runtime, Runtime::Onnxruntime);
    }
    eprintln!(
        "minilm int8-dynamic: {:.1}% of fp32, cos tract {cos_tract:.4} ort {cos_ort:.4}, \
         ort {:?} ms vs fp32 {:?} ms",
        v.size_ratio * 100.0,
        ort.latency_ms,
        report.variants[0]
            .onnxruntime
            .as_ref()
            .and_then(|o| o.latency_ms)
    );
}
