//! Whether a model fits the memory the device announced, decided before it is loaded: a load
//! that would push the device into swap or the OOM killer takes the models already serving with
//! it, so the agent refuses it with a reason the controller shows instead.

use edgefleet_protocol::Runtime;

/// Resident memory an ONNX model is allowed per byte of its file: the bound `agent-bench`
/// measures for both runtimes (BENCHMARKS.md, "Memory per loaded model").
pub const ONNX_RESIDENT_PER_FILE_BYTE: f64 = 1.5;

/// Memory a loaded model is expected to hold, from its artifact size. llama.cpp maps GGUF
/// weights from the file and sizes its context from the deployment, which the controller
/// already checks against the device (`llm` memory need), so only the weights count here.
pub fn resident_estimate(artifact_bytes: u64, runtime: Runtime) -> u64 {
    match runtime {
        Runtime::Tract | Runtime::Onnxruntime => {
            (artifact_bytes as f64 * ONNX_RESIDENT_PER_FILE_BYTE).ceil() as u64
        }
        Runtime::Llamacpp => artifact_bytes,
    }
}

const MIB: f64 = (1u64 << 20) as f64;

/// `Err(reason)` when loading a `runtime` model of `artifact_bytes` next to the models already
/// loaded (`others`: artifact size and runtime of each) would exceed `announced_mib`.
pub fn check_fits(
    announced_mib: u64,
    artifact_bytes: u64,
    runtime: Runtime,
    others: impl IntoIterator<Item = (u64, Runtime)>,
) -> Result<(), String> {
    let need = resident_estimate(artifact_bytes, runtime);
    let held: u64 = others
        .into_iter()
        .map(|(bytes, runtime)| resident_estimate(bytes, runtime))
        .sum();
    let limit = announced_mib.saturating_mul(1 << 20);
    if need.saturating_add(held) <= limit {
        return Ok(());
    }
    Err(format!(
        "not loaded: the model needs about {:.1} MiB resident ({} x its {:.1} MiB file on {}) \
         and the models already loaded hold about {:.1} MiB, more than the {announced_mib} MiB \
         this device announced",
        need as f64 / MIB,
        match runtime {
            Runtime::Llamacpp => 1.0,
            _ => ONNX_RESIDENT_PER_FILE_BYTE,
        },
        artifact_bytes as f64 / MIB,
        runtime.as_str(),
        held as f64 / MIB,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn a_model_that_fits_next_to_the_others_loads() {
        assert_eq!(
            check_fits(
                100,
                20 * MB,
                Runtime::Tract,
                [(40 * MB, Runtime::Onnxruntime)]
            ),
            Ok(())
        );
        // Exactly at the limit: 1.5 x 40 MiB + 1.5 x 0 = 60 MiB of 60.
        assert_eq!(check_fits(60, 40 * MB, Runtime::Onnxruntime, []), Ok(()));
    }

    #[test]
    fn a_model_too_large_for_the_announced_memory_is_refused_with_the_numbers() {
        let why = check_fits(64, 50 * MB, Runtime::Tract, []).expect_err("75 MiB > 64 MiB");
        assert!(why.contains("about 75.0 MiB"), "{why}");
        assert!(why.contains("50.0 MiB file on tract"), "{why}");
        assert!(why.contains("64 MiB this device announced"), "{why}");
    }

    #[test]
    fn models_already_loaded_count_against_the_limit() {
        let why = check_fits(100, 20 * MB, Runtime::Tract, [(50 * MB, Runtime::Tract)])
            .expect_err("30 + 75 > 100");
        assert!(why.contains("already loaded hold about 75.0 MiB"), "{why}");
    }

    #[test]
    fn gguf_weights_count_once() {
        assert_eq!(resident_estimate(100, Runtime::Llamacpp), 100);
        assert_eq!(resident_estimate(100, Runtime::Tract), 150);
    }
}
