//! The simulated fleet: a deterministic capability mix (device `i` always gets the same
//! profile for a given seed), the hello each device announces, and the deployment the bench
//! rolls out, whose variants are chosen so that which profiles fit is known in advance.

use std::collections::BTreeMap;

use edgefleet_crds::Runtime;
use edgefleet_protocol::wire::{DeviceId, Hello};

use crate::rng::mix64;

/// One kind of device in the fleet.
#[derive(Debug, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    /// Share of the fleet in per mille; the shares of [`PROFILES`] add up to 1000.
    pub permille: u32,
    pub arch: &'static str,
    pub cores: u32,
    pub cpu_features: &'static [&'static str],
    pub memory_mib: u64,
    pub accelerators: &'static [&'static str],
    /// Whether some variant of [`deployment_yaml`] fits it (riscv64 with 256 MiB fits none).
    pub fits: bool,
    /// Inference speed relative to an x86_64 gateway running fp32 (2.0 = twice as slow).
    pub slowness: f64,
}

pub const PROFILES: [Profile; 7] = [
    Profile {
        name: "x86-gateway",
        permille: 250,
        arch: "x86_64",
        cores: 4,
        cpu_features: &["avx2", "fma", "sse4.2"],
        memory_mib: 8192,
        accelerators: &[],
        fits: true,
        slowness: 1.0,
    },
    Profile {
        name: "x86-gpu",
        permille: 50,
        arch: "x86_64",
        cores: 8,
        cpu_features: &["avx2", "avx512f", "fma"],
        memory_mib: 16384,
        accelerators: &["nvidia"],
        fits: true,
        slowness: 0.3,
    },
    Profile {
        name: "pi-class",
        permille: 350,
        arch: "aarch64",
        cores: 4,
        cpu_features: &["neon"],
        memory_mib: 2048,
        accelerators: &[],
        fits: true,
        slowness: 4.0,
    },
    Profile {
        name: "jetson",
        permille: 50,
        arch: "aarch64",
        cores: 6,
        cpu_features: &["neon"],
        memory_mib: 4096,
        accelerators: &["nvidia"],
        fits: true,
        slowness: 0.6,
    },
    Profile {
        name: "armv7-512m",
        permille: 100,
        arch: "arm",
        cores: 2,
        cpu_features: &["neon"],
        memory_mib: 512,
        accelerators: &[],
        fits: true,
        slowness: 9.0,
    },
    Profile {
        name: "mcu-256m",
        permille: 100,
        arch: "aarch64",
        cores: 1,
        cpu_features: &[],
        memory_mib: 256,
        accelerators: &[],
        fits: true,
        slowness: 14.0,
    },
    Profile {
        name: "riscv-256m",
        permille: 100,
        arch: "riscv64",
        cores: 1,
        cpu_features: &[],
        memory_mib: 256,
        accelerators: &[],
        fits: false,
        slowness: 20.0,
    },
];

/// The profile of device `index`: a hash of (seed, index) picks by share, so the mix is
/// stable across runs and does not depend on which gateway a device sits behind.
pub fn profile_of(seed: u64, index: usize) -> &'static Profile {
    let roll = (mix64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9)) % 1000) as u32;
    let mut upper = 0;
    for profile in &PROFILES {
        upper += profile.permille;
        if roll < upper {
            return profile;
        }
    }
    &PROFILES[PROFILES.len() - 1]
}

pub fn device_id(index: usize) -> String {
    format!("sim-{index:06}")
}

/// `llm`: the device also announces llama.cpp (it can serve the `--llm` deployment).
pub fn hello(seed: u64, index: usize, id: &DeviceId, llm: bool) -> Hello {
    let profile = profile_of(seed, index);
    Hello {
        device_id: id.clone(),
        agent_version: "sim".into(),
        labels: BTreeMap::from([
            ("fleet".to_string(), "sim".to_string()),
            ("site".to_string(), format!("site-{}", index % 50)),
            ("profile".to_string(), profile.name.to_string()),
        ]),
        arch: profile.arch.into(),
        cores: profile.cores,
        cpu_features: profile.cpu_features.iter().map(|s| s.to_string()).collect(),
        memory_total_mib: profile.memory_mib,
        memory_available_mib: profile.memory_mib * 3 / 4,
        disk_free_mib: 16 * 1024,
        accelerators: profile.accelerators.iter().map(|s| s.to_string()).collect(),
        runtimes: if llm {
            vec![Runtime::Tract, Runtime::Llamacpp]
        } else {
            vec![Runtime::Tract]
        },
        site_cache_url: None,
    }
}

/// How many of the first `devices` devices fit the bench deployment.
pub fn fitting(seed: u64, devices: usize) -> usize {
    (0..devices).filter(|&i| profile_of(seed, i).fits).count()
}

/// Latency of a variant on a profile: (median in ms, log-normal sigma).
pub fn variant_latency(variant: &str, profile: &Profile) -> (f64, f64) {
    let base_ms = 8.0 * profile.slowness;
    match variant {
        "fp32-accel" => (2.0, 0.25),
        "fp32" => (base_ms, 0.3),
        "fp16" => (base_ms * 0.9, 0.3),
        _ => (base_ms * 0.7, 0.35),
    }
}

/// A `ModelDeployment` of `version` selecting the simulated fleet. Four variants: fp32
/// (x86_64, 2 GiB), fp32-accel (nvidia, 2 GiB), fp16 (512 MiB), int8 (x86_64/aarch64/arm,
/// 256 MiB); riscv64 boards with 256 MiB fit none. `steps` are canary percentages, all
/// without pause; analysis every second on `min_samples` inferences. `llm`: the same variants
/// as GGUF language models on llama.cpp (`format: gguf`, `runtime: llamacpp`).
pub fn deployment_yaml(version: &str, steps: &[u32], min_samples: u64, llm: bool) -> String {
    let digest = |variant: &str| {
        let h = mix64(
            version
                .bytes()
                .chain(variant.bytes())
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
        );
        format!("{h:016x}").repeat(4)
    };
    // A tiny transformer's shape: with 4 MB of weights it needs about 34 MiB at the default
    // 2,048-token context, so memory classes split by `requires` as for ONNX.
    let (runtime, extension) = if llm {
        (
            "    format: gguf\n    runtime: llamacpp\n    gguf: {quantization: Q8_0, layers: 2, embeddingLength: 64, heads: 4, kvHeads: 4}\n",
            "gguf",
        )
    } else {
        ("", "onnx")
    };
    let variant = |name: &str, precision: &str, requires: &str| {
        format!(
            "  - name: {name}\n    precision: {precision}\n{runtime}    artifact: {{uri: 'http://127.0.0.1:9/models/{version}/{name}.{extension}', sha256: '{}', sizeBytes: 4000000}}\n    requires: {requires}\n",
            digest(name)
        )
    };
    let steps_yaml: String = steps
        .iter()
        .map(|p| format!("    - {{percent: {p}, pauseSeconds: 0}}\n"))
        .collect();
    format!(
        "apiVersion: edgefleet.io/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: sim-model, namespace: sim}}\nspec:\n  model: {{name: sim-model, version: '{version}'}}\n  selector: {{matchLabels: {{fleet: sim}}}}\n  variants:\n{}{}{}{}  rollout:\n    maxUnavailablePercent: 100\n    steps:\n{steps_yaml}    analysis: {{intervalSeconds: 1, minSamples: {min_samples}, failureThreshold: 3, maxP95LatencyMs: 5000, stepTimeoutSeconds: 600}}\n",
        variant(
            "fp32-accel",
            "fp32",
            "{accelerators: [nvidia], minMemoryMib: 2048}"
        ),
        variant("fp32", "fp32", "{arch: [x86_64], minMemoryMib: 2048}"),
        variant("fp16", "fp16", "{minMemoryMib: 512}"),
        variant(
            "int8",
            "int8",
            "{arch: [x86_64, aarch64, arm], minMemoryMib: 256}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_the_mix_follows_them() {
        assert_eq!(PROFILES.iter().map(|p| p.permille).sum::<u32>(), 1000);
        let n = 20_000;
        for profile in &PROFILES {
            let count = (0..n).filter(|&i| profile_of(1, i) == profile).count();
            let expected = n * profile.permille as usize / 1000;
            let tolerance = expected / 10 + 50;
            assert!(
                count.abs_diff(expected) < tolerance,
                "{}: {count} devices, expected about {expected}",
                profile.name
            );
        }
    }

    #[test]
    fn the_mix_is_deterministic_per_seed() {
        let a: Vec<&str> = (0..100).map(|i| profile_of(7, i).name).collect();
        let b: Vec<&str> = (0..100).map(|i| profile_of(7, i).name).collect();
        let c: Vec<&str> = (0..100).map(|i| profile_of(8, i).name).collect();
        assert_eq!(a, b);
        assert_ne!(a, c, "another seed, another fleet");
    }

    #[test]
    fn hellos_and_deployments_pass_the_real_admission_checks() {
        let id = DeviceId::new(device_id(42)).expect("id");
        for llm in [false, true] {
            let hello = hello(3, 42, &id, llm);
            let bytes = edgefleet_protocol::wire::encode(&hello);
            let decoded: Hello =
                edgefleet_protocol::wire::decode_from(&id, &bytes).expect("valid hello");
            assert_eq!(decoded, hello);
            assert_eq!(decoded.runtimes.contains(&Runtime::Llamacpp), llm);
            let yaml = deployment_yaml("2.0.0", &[10, 50], 20, llm);
            let value: serde_json::Value = serde_yaml::from_str(&yaml).expect("yaml");
            let md = edgefleet_crds::manifest::admit_value(value).expect("admitted");
            assert_eq!(md.spec.variants.len(), 4);
            assert_eq!(md.spec.rollout.steps.len(), 2);
            assert_ne!(
                md.spec.variants[0].artifact.sha256, md.spec.variants[1].artifact.sha256,
                "one digest per variant"
            );
            let runtime = if llm {
                Runtime::Llamacpp
            } else {
                Runtime::Tract
            };
            assert!(md.spec.variants.iter().all(|v| v.runtime == runtime));
        }
    }

    #[test]
    fn only_the_profiles_marked_as_fitting_count() {
        let n = 1000;
        let riscv = (0..n)
            .filter(|&i| profile_of(5, i).arch == "riscv64")
            .count();
        assert_eq!(fitting(5, n), n - riscv);
    }
}
