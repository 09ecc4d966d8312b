//! Defaults both bench binaries share (included with `#[path]`; not a binary of its own).

use std::path::PathBuf;

/// Where tests/tools/fetch-models.sh puts the models.
pub fn models_dir() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/edgefleet/models")
}

/// The agent binary next to this executable.
pub fn agent() -> PathBuf {
    std::env::current_exe()
        .map(|exe| exe.with_file_name("edgefleet-agent"))
        .unwrap_or_else(|_| PathBuf::from("edgefleet-agent"))
}

/// The Python tests/tools/fetch-compress-models.sh sets up, with onnxruntime and numpy.
#[allow(dead_code)] // agent-bench only
pub fn ort_python() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/edgefleet/tools/compress-venv/bin/python")
}
