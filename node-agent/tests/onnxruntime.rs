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

/// An int8-static variant, made as `edgefleet compress` makes it (ONNX Runtime's
/// `quantize_static`, calibrated on rendered document pages), runs in the agent's backend with
/// the agent's session options and names the same rotation as fp32, and the right one, on
/// pages it was not calibrated on.
#[test]
fn onnxruntime_runs_an_int8_static_cnn_as_compress_measured_it() {
    use edgefleet_compress::calibrated::{Calibration, make};
    use edgefleet_compress::tensor::{self, ShapeOptions};

    let python = std::path::PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/edgefleet/tools/compress-venv/bin/python");
    let dir = tempfile::tempdir().unwrap();
    let render = |name: &str, count: usize, seed: u64| {
        let out = dir.path().join(name);
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/tools/render-documents.py");
        let status = std::process::Command::new(&python)
            .arg(script)
            .arg(&out)
            .arg(count.to_string())
            .arg(seed.to_string())
            .status()
            .expect("running render-documents.py (tests/tools/fetch-compress-models.sh)");
        assert!(status.success(), "render-documents.py: {status}");
        out
    };
    let (calibration, pages) = (render("cal.npy", 8, 1), render("pages.npy", 8, 2));
    let fp32_path = common::models_dir().join("orientation.onnx");
    let proto = edgefleet_compress::onnx::decode(&std::fs::read(&fp32_path).unwrap()).unwrap();
    let specs = tensor::input_specs(&proto, &ShapeOptions::default()).unwrap();
    let calibrated = Calibration {
        file: Some(&calibration),
        samples: 8,
        drift_inputs: Some(&pages),
        drift_seed: 0,
    };
    let runner = edgefleet_compress::OrtRunner::new(&python);
    let (bytes, _) = make(&fp32_path, &proto, &specs, &calibrated, Some(&runner))
        .unwrap()
        .unwrap();
    let int8_path = dir.path().join("int8-static.onnx");
    std::fs::write(&int8_path, bytes).unwrap();

    let backend = OrtBackend::from_library(&library()).expect("libonnxruntime loads");
    let fp32 = backend.load(&fp32_path, &Default::default()).unwrap();
    let int8 = backend.load(&int8_path, &Default::default()).unwrap();
    let argmax = |v: Vec<f64>| (0..v.len()).max_by(|a, b| v[*a].total_cmp(&v[*b])).unwrap();
    for (i, page) in tensor::load_inputs(&pages, &specs, 8)
        .unwrap()
        .iter()
        .enumerate()
    {
        let t = &page[0].1;
        let values: Vec<f32> = t.to_f64s().into_iter().map(|v| v as f32).collect();
        let input = Tensor::from_f32(t.shape.clone(), &values).unwrap();
        let want = argmax(fp32.run(vec![input.clone()]).unwrap()[0].to_f64());
        let got = argmax(int8.run(vec![input]).unwrap()[0].to_f64());
        // PIL turns pages counter-clockwise; the model's classes 0/90/180/270 are clockwise
        assert_eq!(want, (4 - i % 4) % 4, "fp32 on page {i}");
        assert_eq!(got, want, "int8-static on page {i}");
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
