//! What this device can run: detected once per announcement, every field overridable.

use std::path::Path;

use edgefleet_protocol::Runtime;
use edgefleet_protocol::wire::{DeviceId, Hello};

use crate::config::CapabilityOverrides;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Detected facts, before overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    pub arch: String,
    pub cores: u32,
    pub cpu_features: Vec<String>,
    pub memory_total_mib: u64,
    pub memory_available_mib: u64,
    pub disk_free_mib: u64,
    pub accelerators: Vec<String>,
    pub runtimes: Vec<Runtime>,
}

/// Memory available now (`MemAvailable`), MiB; `None` where /proc/meminfo cannot be read.
pub fn available_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let (_, available) = parse_meminfo(&meminfo);
    (available > 0).then_some(available / 1024)
}

pub fn detect(store: &Path, runtimes: Vec<Runtime>) -> Detected {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (total, available) = parse_meminfo(&meminfo);
    Detected {
        arch: std::env::consts::ARCH.to_string(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        cpu_features: cpu_features(),
        memory_total_mib: total / 1024,
        memory_available_mib: available / 1024,
        disk_free_mib: crate::install::store::free_bytes(store).unwrap_or(0) >> 20,
        accelerators: accelerators(Path::new("/dev")),
        runtimes,
    }
}

pub fn hello(
    device_id: &DeviceId,
    labels: &std::collections::BTreeMap<String, String>,
    detected: Detected,
    o: &CapabilityOverrides,
) -> Hello {
    Hello {
        device_id: device_id.clone(),
        agent_version: AGENT_VERSION.to_string(),
        labels: labels.clone(),
        arch: o.arch.clone().unwrap_or(detected.arch),
        cores: o.cores.unwrap_or(detected.cores),
        cpu_features: o.cpu_features.clone().unwrap_or(detected.cpu_features),
        memory_total_mib: o.memory_mib.unwrap_or(detected.memory_total_mib),
        memory_available_mib: o
            .memory_available_mib
            .or(o.memory_mib)
            .unwrap_or(detected.memory_available_mib),
        disk_free_mib: o.disk_free_mib.unwrap_or(detected.disk_free_mib),
        accelerators: o.accelerators.clone().unwrap_or(detected.accelerators),
        runtimes: o.runtimes.clone().unwrap_or(detected.runtimes),
        site_cache_url: None,
    }
}

/// `(MemTotal, MemAvailable)` in KiB.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// The CPU features that matter for choosing a model variant.
pub fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut features: Vec<&str> = Vec::new();
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            features.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            features.push("avx512f");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            features.push("fma");
        }
        if std::arch::is_x86_feature_detected!("f16c") {
            features.push("f16c");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            features.push("neon");
        }
        if std::arch::is_aarch64_feature_detected!("fp16") {
            features.push("fp16");
        }
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            features.push("dotprod");
        }
    }
    // Microarchitecture levels too (`x86-64-v3`): llama.cpp builds are made for one.
    features.extend(crate::cpu_level::levels());
    features.into_iter().map(str::to_string).collect()
}

/// Accelerator kinds by device node: `nvidia`, `dri` (render nodes), `coral` (apex), `accel`.
pub fn accelerators(dev: &Path) -> Vec<String> {
    let names: Vec<String> = std::fs::read_dir(dev)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let render_nodes: Vec<String> = std::fs::read_dir(dev.join("dri"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    classify_accelerators(&names, &render_nodes)
}

pub fn classify_accelerators(dev_names: &[String], dri_names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let has = |prefix: &str| dev_names.iter().any(|n| n.starts_with(prefix));
    if has("nvidia") {
        out.push("nvidia".to_string());
    }
    if dri_names.iter().any(|n| n.starts_with("renderD")) {
        out.push("dri".to_string());
    }
    if has("apex_") {
        out.push("coral".to_string());
    }
    if has("accel") {
        out.push("accel".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_parsed_in_kib() {
        let text = "MemTotal:       24683648 kB\nMemFree:  1 kB\nMemAvailable:   23900000 kB\n";
        assert_eq!(parse_meminfo(text), (24_683_648, 23_900_000));
        assert_eq!(parse_meminfo(""), (0, 0));
    }

    #[test]
    fn accelerators_are_classified_by_device_node() {
        let dev: Vec<String> = ["nvidia0", "nvidiactl", "apex_0", "null"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let dri = vec!["card0".to_string(), "renderD128".to_string()];
        assert_eq!(
            classify_accelerators(&dev, &dri),
            ["nvidia", "dri", "coral"]
        );
        assert!(classify_accelerators(&[], &[]).is_empty());
    }

    #[test]
    fn overrides_replace_detection() {
        let detected = detect(Path::new("/"), vec![Runtime::Tract]);
        assert_eq!(detected.arch, std::env::consts::ARCH);
        assert!(detected.memory_total_mib > 0);
        let o = CapabilityOverrides {
            arch: Some("aarch64".into()),
            memory_mib: Some(512),
            cpu_features: Some(vec!["neon".into()]),
            runtimes: Some(vec![]),
            ..Default::default()
        };
        let id = DeviceId::new("d1").expect("valid");
        let h = hello(&id, &Default::default(), detected, &o);
        assert_eq!(h.arch, "aarch64");
        assert_eq!((h.memory_total_mib, h.memory_available_mib), (512, 512));
        assert_eq!(h.cpu_features, ["neon"]);
        assert!(h.runtimes.is_empty());
    }
}
