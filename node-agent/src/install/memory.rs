//! Whether a model fits the memory the device announced, decided before it is loaded: a load
//! that would push the device into swap or the OOM killer takes the models already serving with
//! it, so the agent refuses it with a reason the controller shows instead.

use edgefleet_protocol::Runtime;
use edgefleet_protocol::wire::Assignment;

/// The memory a device announced for models.
#[derive(Clone, Copy, Debug)]
pub enum Announced {
    /// A capability override, MiB: the models already loaded count against it.
    Fixed(u64),
    /// What the kernel reports available at the time of asking (`MemAvailable`, MiB), which
    /// already excludes the models loaded; `None` where it cannot be read (nothing is refused).
    Detected(fn() -> Option<u64>),
}

impl Announced {
    /// [`check_fits`] for `assignment` beside the `loaded` ones (the one it replaces, of the
    /// same deployment, excluded).
    pub fn check<'a>(
        &self,
        assignment: &Assignment,
        loaded: impl IntoIterator<Item = &'a Assignment>,
    ) -> Result<(), String> {
        let (bytes, runtime) = (assignment.artifact.size_bytes, assignment.runtime);
        match *self {
            Announced::Fixed(mib) => {
                let others = loaded
                    .into_iter()
                    .filter(|other| other.deployment != assignment.deployment)
                    .map(|other| (other.artifact.size_bytes, other.runtime));
                check_fits(mib, bytes, runtime, others)
            }
            Announced::Detected(available) => match available() {
                Some(mib) => check_fits(mib, bytes, runtime, []),
                None => Ok(()),
            },
        }
    }
}

/// Heap an ONNX model takes, per byte of its file plus a fixed part (plan, arenas, scratch
/// space): an upper bound of what `agent-bench --compare-runtimes` measured on both runtimes
/// (BENCHMARKS.md, "Runtimes side by side": MiniLM 1.17-1.34x its 66 MiB file, orientation
/// 16-34 MiB for 6.5 MiB, ocr-cls 5.5-10 MiB for 0.6 MiB).
pub const ONNX_RESIDENT_PER_FILE_BYTE: f64 = 1.5;
pub const ONNX_RESIDENT_FIXED_BYTES: u64 = 32 << 20;

/// Memory a loaded model is expected to hold, from its artifact size. llama.cpp maps GGUF
/// weights from the file and sizes its context from the deployment, which the controller
/// already checks against the device (`llm` memory need), so only the weights count here.
pub fn resident_estimate(artifact_bytes: u64, runtime: Runtime) -> u64 {
    match runtime {
        Runtime::Tract | Runtime::Onnxruntime => {
            (artifact_bytes as f64 * ONNX_RESIDENT_PER_FILE_BYTE).ceil() as u64
                + ONNX_RESIDENT_FIXED_BYTES
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
    let how = match runtime {
        Runtime::Llamacpp => "its weights".to_string(),
        _ => format!(
            "{ONNX_RESIDENT_PER_FILE_BYTE} x its {:.1} MiB file + {} MiB",
            artifact_bytes as f64 / MIB,
            ONNX_RESIDENT_FIXED_BYTES >> 20
        ),
    };
    Err(format!(
        "not loaded: the model needs about {:.1} MiB resident ({how} on {}) and the models \
         already loaded hold about {:.1} MiB, more than the {announced_mib} MiB this device \
         announced",
        need as f64 / MIB,
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
        // 1.5 x 20 + 32 = 62 and 1.5 x 4 + 32 = 38: 100 MiB of 100.
        assert_eq!(
            check_fits(
                100,
                20 * MB,
                Runtime::Tract,
                [(4 * MB, Runtime::Onnxruntime)]
            ),
            Ok(())
        );
        assert_eq!(check_fits(92, 40 * MB, Runtime::Onnxruntime, []), Ok(()));
    }

    #[test]
    fn a_model_too_large_for_the_announced_memory_is_refused_with_the_numbers() {
        let why = check_fits(64, 50 * MB, Runtime::Tract, []).expect_err("107 MiB > 64 MiB");
        assert!(why.contains("about 107.0 MiB"), "{why}");
        assert!(
            why.contains("1.5 x its 50.0 MiB file + 32 MiB on tract"),
            "{why}"
        );
        assert!(why.contains("64 MiB this device announced"), "{why}");
    }

    #[test]
    fn models_already_loaded_count_against_the_limit() {
        let others = [(20 * MB, Runtime::Tract)];
        // 38 MiB for the new model + 62 MiB held: fits 100 MiB exactly, not 99.
        assert_eq!(check_fits(100, 4 * MB, Runtime::Tract, others), Ok(()));
        let why = check_fits(99, 4 * MB, Runtime::Tract, others).expect_err("100 > 99");
        assert!(why.contains("already loaded hold about 62.0 MiB"), "{why}");
    }

    fn sized(deployment: &str, mib: u64) -> Assignment {
        let mut a = crate::testutil::assignment(deployment, "m", 'a');
        a.artifact.size_bytes = mib * MB;
        a
    }

    #[test]
    fn a_fixed_announcement_counts_the_other_deployments_but_not_the_one_replaced() {
        let loaded = [sized("d/old", 20), sized("d/other", 4)];
        // Replacing d/old (20 MiB) with 20 MiB beside d/other: 62 + 38 = 100 MiB.
        let announced = Announced::Fixed(100);
        assert_eq!(announced.check(&sized("d/old", 20), &loaded), Ok(()));
        // A third deployment would also count d/old: 62 + 62 + 38 > 100.
        assert!(announced.check(&sized("d/new", 20), &loaded).is_err());
    }

    #[test]
    fn detected_memory_is_read_when_asked_and_already_excludes_loaded_models() {
        let loaded = [sized("d/big", 500)];
        assert_eq!(
            Announced::Detected(|| Some(62)).check(&sized("d/new", 20), &loaded),
            Ok(())
        );
        assert!(
            Announced::Detected(|| Some(61))
                .check(&sized("d/new", 20), &loaded)
                .is_err()
        );
        // Unknown (no /proc/meminfo): nothing is refused on a guess.
        assert_eq!(
            Announced::Detected(|| None).check(&sized("d/new", 9999), &loaded),
            Ok(())
        );
    }

    #[test]
    fn gguf_weights_count_once() {
        assert_eq!(resident_estimate(100, Runtime::Llamacpp), 100);
        assert_eq!(resident_estimate(100 * MB, Runtime::Tract), 182 * MB);
    }
}
