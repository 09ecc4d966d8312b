//! The tract backend on real exported models matches onnxruntime's reference outputs.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use edgefleet_agent::runtime::{self, Backend, tract::TractBackend};
use edgefleet_agent::tensor::Tensor;

fn check_model(file: &str) {
    let reference = common::reference(file);
    let path = common::models_dir().join(file);
    let hints = runtime::shape_hints(Some(&common::self_test(file)));
    let model = TractBackend
        .load(&path, &hints)
        .expect("tract loads the model");
    model
        .prepare(Some(&common::self_test(file)))
        .expect("self-test passes");
    for (n, case) in reference.cases.iter().enumerate() {
        let by_name: HashMap<&str, Tensor> = case
            .inputs
            .iter()
            .map(|i| {
                (
                    i.name.as_str(),
                    Tensor::from_f32(i.shape.clone(), &i.values()).expect("tensor"),
                )
            })
            .collect();
        let inputs = model
            .inputs()
            .iter()
            .map(|spec| by_name[spec.name.as_str()].clone())
            .collect();
        let outputs = model.run(inputs).expect("inference");
        for want in &case.outputs {
            let index = model
                .outputs()
                .iter()
                .position(|o| o.name == want.name)
                .unwrap_or_else(|| {
                    panic!("{file}: no output {:?} in {:?}", want.name, model.outputs())
                });
            assert_eq!(
                outputs[index].shape, want.shape,
                "{file} case {n} {}",
                want.name
            );
            common::assert_close(
                &format!("{file} case {n} {}", want.name),
                &outputs[index].to_f64(),
                &want.data,
                1e-4,
            );
        }
    }
}

#[test]
fn orientation_cnn_matches_onnxruntime() {
    check_model("orientation.onnx");
}

#[test]
fn ocr_classifier_matches_onnxruntime() {
    check_model("ocr-cls.onnx");
}

#[test]
fn silero_vad_matches_onnxruntime() {
    check_model("silero-vad.onnx");
}

/// The same outputs with tract's kernels split over two intra-op threads (process-wide; nextest
/// runs each test in its own process).
#[test]
fn outputs_match_with_two_intra_op_threads() {
    runtime::tract::set_intra_op_threads(2);
    check_model("orientation.onnx");
    check_model("ocr-cls.onnx");
}
