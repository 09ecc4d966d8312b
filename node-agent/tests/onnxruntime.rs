//! The onnxruntime backend (cargo feature `onnxruntime`, on by default), with the shared
//! library from the PyPI `onnxruntime` wheel (`EDGEFLEET_AGENT_ONNXRUNTIME_LIB`, or the one
//! `tests/tools/fetch-models.sh` installs).
#![cfg(feature = "onnxruntime")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use edgefleet_agent::runtime::{Backend, ort::OrtBackend};
use edgefleet_agent::tensor::Tensor;

fn library() -> String {
    common::onnxruntime_lib().display().to_string()
}

#[test]
fn onnxruntime_backend_matches_the_references() {
    matches_the_references(OrtBackend::from_library(&library()).expect("libonnxruntime loads"));
}

#[test]
fn onnxruntime_matches_the_references_with_two_intra_op_threads() {
    matches_the_references(
        OrtBackend::from_library(&library())
            .expect("libonnxruntime loads")
            .with_intra_op_threads(2),
    );
}

fn matches_the_references(backend: OrtBackend) {
    for file in ["orientation.onnx", "silero-vad.onnx"] {
        let reference = common::reference(file);
        let model = backend
            .load(&common::models_dir().join(file), &Default::default())
            .unwrap();
        model.prepare(Some(&common::self_test(file))).unwrap();
        for case in &reference.cases {
            let by_name: HashMap<&str, Tensor> = case
                .inputs
                .iter()
                .map(|i| {
                    (
                        i.name.as_str(),
                        Tensor::from_f32(i.shape.clone(), &i.values()).unwrap(),
                    )
                })
                .collect();
            let inputs = model
                .inputs()
                .iter()
                .map(|s| by_name[s.name.as_str()].clone())
                .collect();
            let outputs = model.run(inputs).unwrap();
            for want in &case.outputs {
                let i = model
                    .outputs()
                    .iter()
                    .position(|o| o.name == want.name)
                    .unwrap();
                common::assert_close(&want.name, &outputs[i].to_f64(), &want.data, 1e-5);
            }
        }
    }
}

/// A device without the library (or with a broken one) runs tract only; nothing panics.
#[test]
fn a_missing_or_broken_library_means_no_onnxruntime() {
    let missing = std::path::Path::new("/nonexistent/libonnxruntime.so");
    assert!(OrtBackend::try_new(Some(missing), 1).is_none());
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("libonnxruntime.so");
    std::fs::write(&broken, b"not a shared library").unwrap();
    assert!(OrtBackend::try_new(Some(&broken), 1).is_none());
}
