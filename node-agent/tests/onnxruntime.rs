//! The optional onnxruntime backend (`--features onnxruntime`), with the shared library from
//! the PyPI `onnxruntime` wheel (`EDGEFLEET_AGENT_ONNXRUNTIME_LIB`, or found via python3).
#![cfg(feature = "onnxruntime")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use edgefleet_agent::runtime::{self, Backend, ort::OrtBackend};
use edgefleet_agent::tensor::Tensor;

fn library() -> String {
    if let Ok(lib) = std::env::var("EDGEFLEET_AGENT_ONNXRUNTIME_LIB") {
        return lib;
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*')))[0])",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "libonnxruntime not found: pip install onnxruntime (tests/tools/fetch-models.sh does) or set EDGEFLEET_AGENT_ONNXRUNTIME_LIB"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn onnxruntime_backend_matches_the_references() {
    let backend = OrtBackend::from_library(&library()).expect("libonnxruntime loads");
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
