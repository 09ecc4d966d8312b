//! Clear errors (external data, malformed files), weights listed as graph inputs, rehydration,
//! importing a variant made by onnxruntime, and the CLI end to end.

mod common;

use std::path::Path;
use std::process::Command;

use clap::Parser;
use edgefleet_compress::onnx;
use edgefleet_compress::tensor::{self, ShapeOptions};
use edgefleet_compress::{
    CompressArgs, CompressError, ImportOptions, MeasureOptions, OrtOptions, QuantizeOptions,
    TractRunner, measure_import, quantize_int8, rehydrate,
};
use edgefleet_crds::{Precision, Runtime, Variant};
use prost::Message;
use tract_onnx::pb::tensor_proto::DataLocation;
use tract_onnx::pb::{StringStringEntryProto, TypeProto, ValueInfoProto, type_proto};

fn orientation() -> Vec<u8> {
    std::fs::read(common::model("orientation.onnx")).expect("read orientation.onnx")
}

fn shapes() -> ShapeOptions {
    ShapeOptions {
        shapes: [("x".to_string(), vec![1, 3, 224, 224])].into(),
        ..Default::default()
    }
}

/// Runs `bytes` in tract on `n` generated inputs.
fn tract_outputs(bytes: &[u8], n: usize) -> Vec<Vec<f64>> {
    let model = onnx::decode(bytes).expect("decode");
    let specs = tensor::input_specs(&model, &shapes()).expect("specs");
    let runner = TractRunner::load(bytes, &specs).expect("tract loads");
    tensor::generate(&specs, n, 1)
        .iter()
        .map(|s| runner.run(s).expect("run")[0].to_f64s())
        .collect()
}

#[test]
fn external_data_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = onnx::decode(&orientation()).expect("decode");
    let graph = model.graph.as_mut().expect("graph");
    let t = graph
        .initializer
        .iter_mut()
        .max_by_key(|t| t.raw_data.len())
        .expect("an initializer");
    let data = std::mem::take(&mut t.raw_data);
    std::fs::write(dir.path().join("weights.bin"), &data).expect("write data");
    t.data_location = Some(DataLocation::External as i32);
    t.external_data = vec![
        StringStringEntryProto {
            key: "location".into(),
            value: "weights.bin".into(),
        },
        StringStringEntryProto {
            key: "length".into(),
            value: data.len().to_string(),
        },
    ];
    let bytes = model.encode_to_vec();
    let err = quantize_int8(&bytes, QuantizeOptions::default()).expect_err("refused");
    assert!(matches!(err, CompressError::ExternalData(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("external data") && msg.contains("weights.bin"),
        "{msg}"
    );

    // The whole pipeline says so too, with the file name.
    let path = dir.path().join("external.onnx");
    std::fs::write(&path, &bytes).expect("write model");
    let err = edgefleet_compress::compress(&path, &dir.path().join("out"), &Default::default())
        .expect_err("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("external.onnx") && msg.contains("external data"),
        "{msg}"
    );
}

#[test]
fn malformed_files_are_refused_clearly() {
    let full = orientation();
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("text", b"this is not an onnx model at all".to_vec()),
        ("truncated", full[..full.len() / 2].to_vec()),
    ] {
        let err = quantize_int8(&bytes, QuantizeOptions::default()).expect_err(what);
        assert!(
            matches!(err, CompressError::Malformed(_)),
            "{what}: {err:?}"
        );
        assert!(
            err.to_string().starts_with("not a valid ONNX model"),
            "{what}: {err}"
        );
        assert!(rehydrate(&bytes).is_err(), "{what}");
    }
}

#[test]
fn weights_listed_as_graph_inputs() {
    // Older exporters list every initializer in graph.input too (overridable defaults).
    let mut model = onnx::decode(&orientation()).expect("decode");
    let graph = model.graph.as_mut().expect("graph");
    let listed: Vec<ValueInfoProto> = graph
        .initializer
        .iter()
        .map(|t| ValueInfoProto {
            name: t.name.clone(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: t.data_type,
                    shape: Some(tract_onnx::pb::TensorShapeProto {
                        dim: t
                            .dims
                            .iter()
                            .map(|d| tract_onnx::pb::tensor_shape_proto::Dimension {
                                value: Some(
                                    tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(
                                        *d,
                                    ),
                                ),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    graph.input.extend(listed);
    let bytes = model.encode_to_vec();
    let (int8, summary) = quantize_int8(&bytes, QuantizeOptions::default()).expect("int8");
    assert!(summary.tensors > 10);
    let q = onnx::decode(&int8).expect("decode int8");
    let g = q.graph.as_ref().expect("graph");
    let producers: std::collections::HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    assert!(
        g.input.iter().all(|i| !producers.contains(i.name.as_str())),
        "a quantized weight is still listed as a graph input"
    );
    // The model's only real input is still x, and the outputs match the plain int8 model's.
    let specs = tensor::input_specs(&q, &shapes()).expect("specs");
    assert_eq!(specs.len(), 1);
    let (plain, _) = quantize_int8(&orientation(), QuantizeOptions::default()).expect("int8");
    assert_eq!(tract_outputs(&int8, 2), tract_outputs(&plain, 2));
    // onnxruntime loads it as well.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("int8.onnx");
    std::fs::write(&path, &int8).expect("write");
    let samples = tensor::generate(&specs, 1, 1);
    common::ort()
        .run(&path, &samples, 1, OrtOptions::default())
        .expect("onnxruntime runs the model");
}

#[test]
fn rehydrate_folds_int8_and_fp16_back_to_fp32() {
    let fp32 = orientation();
    let (int8, _) = quantize_int8(&fp32, QuantizeOptions::default()).expect("int8");
    let (fp16, _) =
        edgefleet_compress::convert_fp16(&fp32, QuantizeOptions::default()).expect("fp16");
    for (what, bytes) in [("int8", &int8), ("fp16", &fp16)] {
        let (back, folded) =
            edgefleet_compress::rehydrate::rehydrate_counted(bytes).expect("rehydrate");
        assert!(folded > 10, "{what}: {folded} nodes folded");
        let model = onnx::decode(&back).expect("decode");
        let g = model.graph.as_ref().expect("graph");
        assert!(
            !g.node
                .iter()
                .any(|n| n.op_type == "DequantizeLinear" || n.op_type == "Cast"),
            "{what}: constant DequantizeLinear/Cast left"
        );
        // About the fp32 size again, and exactly the quantized values.
        let ratio = back.len() as f64 / fp32.len() as f64;
        assert!((0.95..1.05).contains(&ratio), "{what}: {ratio}");
        let (a, b) = (tract_outputs(bytes, 2), tract_outputs(&back, 2));
        for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
            assert!((x - y).abs() < 1e-5, "{what}: {x} vs {y}");
        }
    }
    // Nothing to fold: the model comes back equivalent.
    let (_, folded) = edgefleet_compress::rehydrate::rehydrate_counted(&fp32).expect("rehydrate");
    assert_eq!(folded, 0);
}

fn quantize_dynamic(input: &Path, output: &Path) {
    let runner = common::ort();
    let out = Command::new(&runner.python)
        .args([
            "-c",
            "import sys\nfrom onnxruntime.quantization import QuantType, quantize_dynamic\n\
             quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8)",
        ])
        .arg(input)
        .arg(output)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "quantize_dynamic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn import_onnxruntime_quantize_dynamic_variants() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The CNN: onnxruntime's CPU provider has no int8 ConvInteger, so the variant does not load
    // in onnxruntime; tract runs it, and the report says why onnxruntime did not.
    let reference = common::model("orientation.onnx");
    let variant = dir.path().join("orientation-ort-int8.onnx");
    quantize_dynamic(&reference, &variant);
    let options = ImportOptions {
        runtime: Runtime::Onnxruntime,
        measure: MeasureOptions {
            samples: 4,
            runs: 2,
            shapes: shapes(),
            ort: Some(common::ort()),
            ..Default::default()
        },
        ..Default::default()
    };
    let out = dir.path().join("out");
    let report = measure_import(&variant, &reference, Some(&out), &options).expect("measure");
    let v = &report.variants[1];
    assert_eq!(v.name, "orientation-ort-int8");
    assert_eq!(v.precision, Precision::Int8);
    assert_eq!(v.runtime, Runtime::Onnxruntime);
    assert!(v.tract.loaded && v.tract.drift.is_some(), "{:?}", v.tract);
    let ort = v.onnxruntime.as_ref().expect("ort measured");
    assert!(!ort.loaded);
    assert!(
        ort.error
            .as_deref()
            .is_some_and(|e| e.contains("ConvInteger")),
        "{:?}",
        ort.error
    );
    assert!(v.accuracy_drift.is_some());
    #[derive(serde::Deserialize)]
    struct Block {
        variants: Vec<Variant>,
    }
    let block: Block =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("variants.yaml")).expect("yaml"))
            .expect("variants.yaml deserializes");
    // ONNX Runtime cannot load it, so no device is offered it: caught here, not on devices.
    let offered: Vec<(&str, Runtime)> = block
        .variants
        .iter()
        .map(|v| (v.name.as_str(), v.runtime))
        .collect();
    assert_eq!(
        offered,
        [("fp32", Runtime::Tract), ("fp32-ort", Runtime::Onnxruntime)]
    );

    // A variant tract cannot load at all, without onnxruntime: reported with the reason.
    let mut model = onnx::decode(&std::fs::read(&variant).expect("read")).expect("decode");
    let graph = model.graph.as_mut().expect("graph");
    graph.node[0].op_type = "NoSuchOp".into();
    graph.node[0].domain = "com.example".into();
    model.opset_import.push(tract_onnx::pb::OperatorSetIdProto {
        domain: "com.example".into(),
        version: 1,
    });
    let broken = dir.path().join("custom-op.onnx");
    std::fs::write(&broken, model.encode_to_vec()).expect("write");
    let options = ImportOptions {
        measure: MeasureOptions {
            ort: None,
            ..options.measure.clone()
        },
        ..options
    };
    let report = measure_import(&broken, &reference, None, &options).expect("measure");
    let v = &report.variants[1];
    assert!(!v.tract.loaded);
    assert!(
        v.notes
            .iter()
            .any(|n| n.starts_with("not measured with tract")),
        "{:?}",
        v.notes
    );
    assert!(v.accuracy_drift.is_none());
    let md = edgefleet_compress::markdown(&report);
    assert!(
        md.contains("does not load") && md.contains("not measured with tract"),
        "{md}"
    );
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: CompressArgs,
}

#[test]
fn cli_compresses_and_measures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let model = common::model("orientation.onnx");
    let cli = Cli::try_parse_from([
        "compress".as_ref(),
        model.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--variants".as_ref(),
        "int8".as_ref(),
        "--samples".as_ref(),
        "2".as_ref(),
        "--runs".as_ref(),
        "1".as_ref(),
        "--uri-template".as_ref(),
        "http://10.0.0.1:8080/{model}/{variant}.onnx".as_ref(),
    ])
    .expect("parse");
    edgefleet_compress::run(cli.args).expect("compress");
    for f in ["fp32.onnx", "int8.onnx", "report.json", "variants.yaml"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(!out.join("fp16.onnx").exists());
    let yaml = std::fs::read_to_string(out.join("variants.yaml")).expect("yaml");
    assert!(
        yaml.contains("http://10.0.0.1:8080/orientation/int8.onnx"),
        "{yaml}"
    );

    // Inputs from a .npy file (batch of 2 along a leading axis).
    let x = tensor::HostTensor::from_f64s(
        tensor::ElemType::F32,
        vec![2, 1, 3, 224, 224],
        &vec![0.25; 2 * 3 * 224 * 224],
    );
    let npy = dir.path().join("x.npy");
    std::fs::write(&npy, x.to_npy()).expect("npy");
    let cli = Cli::try_parse_from([
        "compress".as_ref(),
        "measure".as_ref(),
        out.join("int8.onnx").as_os_str(),
        "--reference".as_ref(),
        model.as_os_str(),
        "--inputs".as_ref(),
        npy.as_os_str(),
        "--runs".as_ref(),
        "1".as_ref(),
        "--out".as_ref(),
        dir.path().join("measured").as_os_str(),
    ])
    .expect("parse measure");
    edgefleet_compress::run(cli.args).expect("measure");
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("measured/report.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(report["samples"], 2);
    assert_eq!(report["variants"][1]["precision"], "int8");
    assert_eq!(report["variants"][1]["runtime"], "tract");
}
