use edgefleet_crds::{Precision, Preference, Quality, Runtime, Variant};
use proptest::prelude::*;

use super::*;
use crate::testutil::{device, spec, variant};

pub(super) fn fits(choice: &Choice) -> &str {
    choice
        .variant_name()
        .unwrap_or_else(|| panic!("expected a fit, got {choice}"))
}

pub(super) fn unmet(choice: &Choice, name: &str) -> Vec<String> {
    match choice {
        Choice::NoFit { reasons } => reasons
            .iter()
            .find(|r| r.variant == name)
            .map(|r| r.unmet.clone())
            .unwrap_or_else(|| panic!("{name} not rejected in {choice}")),
        Choice::Fits { .. } => panic!("expected no fit, got {choice}"),
    }
}

fn with_hint(mut v: Variant, ms: f64) -> Variant {
    let quality = v.quality.get_or_insert(Quality::default());
    quality.latency_hint_ms = Some(ms);
    v
}

#[test]
fn empty_requirements_fit_any_device_with_the_runtime() {
    let s = spec("1", vec![variant("fp32", Precision::Fp32, None)]);
    let choice = choose_variant(&device("d"), &s);
    assert_eq!(choice.variant_index(), Some(0));
    assert_eq!(
        choice.to_string(),
        "fp32: fp32 fits, ranked first by accuracy (1) among 1 candidate: fp32"
    );
}

#[test]
fn arch_mismatch_names_both_arches() {
    let mut v = variant("x", Precision::Fp32, None);
    v.requires.arch = vec!["x86_64".into(), "riscv64".into()];
    assert_eq!(
        unmet_requirements(&device("d"), &v),
        ["needs arch x86_64 or riscv64, device is aarch64"]
    );
    v.requires.arch.push("aarch64".into());
    assert!(unmet_requirements(&device("d"), &v).is_empty());
}

#[test]
fn exactly_the_minimum_memory_fits_one_mib_less_does_not() {
    let mut v = variant("x", Precision::Fp32, None);
    let mut d = device("d");
    v.requires.min_memory_mib = 1024;
    d.memory_total_mib = 1024;
    assert!(unmet_requirements(&d, &v).is_empty());
    d.memory_total_mib = 1023;
    assert_eq!(
        unmet_requirements(&d, &v),
        ["needs 1024 MiB memory, device has 1023"]
    );
}

#[test]
fn available_memory_does_not_decide_fit() {
    // Available memory moves with load; choosing on it would flap.
    let mut v = variant("x", Precision::Fp32, None);
    let mut d = device("d");
    v.requires.min_memory_mib = 1000;
    d.memory_available_mib = 10;
    assert!(unmet_requirements(&d, &v).is_empty());
}

#[test]
fn free_disk_must_hold_reserve_plus_artifact_rounded_up() {
    let mut v = variant("x", Precision::Fp32, None);
    let mut d = device("d");
    v.requires.min_free_disk_mib = 100;
    v.artifact.size_bytes = 50 * 1024 * 1024 + 1; // 51 MiB once rounded up
    d.disk_free_mib = 151;
    assert!(unmet_requirements(&d, &v).is_empty());
    d.disk_free_mib = 150;
    assert_eq!(
        unmet_requirements(&d, &v),
        ["needs 151 MiB free disk (100 reserve + 51 artifact), device has 150"]
    );
}

#[test]
fn an_installed_artifact_needs_only_the_reserve() {
    let mut v = variant("x", Precision::Fp32, None);
    let mut d = device("d");
    v.requires.min_free_disk_mib = 100;
    v.artifact.size_bytes = 500 * 1024 * 1024;
    d.disk_free_mib = 120;
    assert_eq!(unmet_requirements(&d, &v).len(), 1);
    Arc::make_mut(&mut d.installed_sha256).insert(v.artifact.sha256.clone());
    assert!(unmet_requirements(&d, &v).is_empty());
}

#[test]
fn missing_one_of_two_cpu_features_names_only_the_missing_one() {
    let mut v = variant("x", Precision::Fp32, None);
    let mut d = device("d");
    v.requires.cpu_features = vec!["avx2".into(), "fma".into()];
    d.cpu_features = Arc::new(["fma".into()].into());
    assert_eq!(unmet_requirements(&d, &v), ["lacks cpu feature avx2"]);
    Arc::make_mut(&mut d.cpu_features).insert("avx2".into());
    assert!(unmet_requirements(&d, &v).is_empty());
}

#[test]
fn feature_names_compare_case_insensitively() {
    let mut v = variant("x", Precision::Fp32, None);
    v.requires.cpu_features = vec!["NEON".into()];
    assert!(unmet_requirements(&device("d"), &v).is_empty());
}

#[test]
fn a_required_accelerator_must_be_present() {
    let mut v = variant("gpu", Precision::Fp16, None);
    let mut d = device("d");
    v.requires.accelerators = vec!["nvidia".into()];
    assert_eq!(unmet_requirements(&d, &v), ["lacks accelerator nvidia"]);
    Arc::make_mut(&mut d.accelerators).insert("nvidia".into());
    assert!(unmet_requirements(&d, &v).is_empty());
}

#[test]
fn the_runtime_must_be_announced() {
    let mut v = variant("x", Precision::Fp32, None);
    let mut d = device("d");
    v.runtime = Runtime::Onnxruntime;
    assert_eq!(
        unmet_requirements(&d, &v),
        ["needs runtime onnxruntime, device has tract"]
    );
    d.runtimes.clear();
    assert_eq!(
        unmet_requirements(&d, &v),
        ["needs runtime onnxruntime, device announces none"]
    );
}

#[test]
fn every_unmet_requirement_is_listed() {
    let mut v = variant("big", Precision::Fp32, None);
    v.requires.arch = vec!["x86_64".into()];
    v.requires.min_memory_mib = 4096;
    v.requires.cpu_features = vec!["avx2".into()];
    v.requires.accelerators = vec!["nvidia".into()];
    v.runtime = Runtime::Onnxruntime;
    assert_eq!(unmet_requirements(&device("d"), &v).len(), 5);
}

#[test]
fn min_accuracy_excludes_variants_below_it_and_keeps_the_exact_bound() {
    let mut s = spec(
        "1",
        vec![
            variant("int8", Precision::Int8, Some(0.02)),
            variant("int4", Precision::Int4, Some(0.05)),
        ],
    );
    s.selection.min_accuracy = Some(0.98);
    s.selection.prefer = Preference::Size;
    s.variants[1].artifact.size_bytes = 1; // int4 would win on size
    let choice = choose_variant(&device("d"), &s);
    assert_eq!(fits(&choice), "int8");
    assert!(
        choice
            .to_string()
            .contains("int4 has accuracy 0.95 below minAccuracy 0.98"),
        "{choice}"
    );
}

#[test]
fn unmeasured_fp32_is_the_reference_but_unmeasured_int8_fails_a_min_accuracy() {
    let mut s = spec(
        "1",
        vec![
            variant("fp32", Precision::Fp32, None),
            variant("int8", Precision::Int8, None),
        ],
    );
    s.selection.min_accuracy = Some(0.99);
    s.variants[0].requires.min_memory_mib = 1 << 20;
    let choice = choose_variant(&device("d"), &s);
    assert_eq!(
        unmet(&choice, "int8"),
        ["has no measured quality, which minAccuracy 0.99 requires of non-fp32 variants"]
    );
    // Without a floor the unmeasured int8 is fine.
    s.selection.min_accuracy = None;
    assert_eq!(fits(&choose_variant(&device("d"), &s)), "int8");
}

#[test]
fn no_fit_lists_every_variant_in_spec_order() {
    let mut a = variant("fp32", Precision::Fp32, None);
    let mut b = variant("int8", Precision::Int8, Some(0.01));
    a.requires.min_memory_mib = 4096;
    b.requires.arch = vec!["x86_64".into()];
    let choice = choose_variant(&device("d"), &spec("1", vec![a, b]));
    assert_eq!(
        choice.to_string(),
        "no variant fits: fp32 needs 4096 MiB memory, device has 1024; \
         int8 needs arch x86_64, device is aarch64"
    );
    assert_eq!(choice.variant_index(), None);
    assert_eq!(choice.variant_name(), None);
}

#[test]
fn the_reason_explains_rejections_then_the_ranking() {
    let mut fp32 = variant("fp32", Precision::Fp32, None);
    let mut fp16 = variant("fp16", Precision::Fp16, Some(0.001));
    let int8 = variant("int8", Precision::Int8, Some(0.01));
    fp32.requires.min_memory_mib = 2048;
    fp16.requires.cpu_features = vec!["avx2".into()];
    let mut d = device("d");
    d.memory_total_mib = 512;
    let choice = choose_variant(&d, &spec("1", vec![fp32, fp16, int8]));
    assert_eq!(
        choice,
        Choice::Fits {
            index: 2,
            name: "int8".into(),
            reason: "fp32 needs 2048 MiB memory, device has 512; \
                     fp16 lacks cpu feature avx2; \
                     int8 fits, ranked first by accuracy (0.99) among 1 candidate: int8"
                .into(),
        }
    );
}

#[test]
fn accuracy_prefers_least_drift() {
    let s = spec(
        "1",
        vec![
            variant("int8", Precision::Int8, Some(0.01)),
            variant("fp16", Precision::Fp16, Some(0.001)),
            variant("int4", Precision::Int4, Some(0.04)),
        ],
    );
    let choice = choose_variant(&device("d"), &s);
    assert_eq!(fits(&choice), "fp16");
    assert!(
        choice
            .to_string()
            .ends_with("ranked first by accuracy (0.999) among 3 candidates: fp16, int8, int4"),
        "{choice}"
    );
}

#[test]
fn accuracy_ties_go_to_the_larger_precision_then_spec_order() {
    let s = spec(
        "1",
        vec![
            variant("int8", Precision::Int8, Some(0.0)),
            variant("mixed", Precision::Mixed, Some(0.0)),
            variant("fp16-a", Precision::Fp16, Some(0.0)),
            variant("fp16-b", Precision::Fp16, Some(0.0)),
        ],
    );
    assert_eq!(fits(&choose_variant(&device("d"), &s)), "fp16-a");
    let s = spec(
        "1",
        vec![
            variant("int8", Precision::Int8, Some(0.0)),
            variant("mixed", Precision::Mixed, Some(0.0)),
        ],
    );
    assert_eq!(fits(&choose_variant(&device("d"), &s)), "mixed");
}

#[test]
fn accuracy_ranks_unmeasured_non_fp32_variants_last() {
    let s = spec(
        "1",
        vec![
            variant("fp16", Precision::Fp16, None),
            variant("int8", Precision::Int8, Some(0.3)),
        ],
    );
    assert_eq!(fits(&choose_variant(&device("d"), &s)), "int8");
}

#[test]
fn latency_prefers_the_lowest_hint_then_least_drift() {
    let s = spec(
        "1",
        vec![
            with_hint(variant("fp32", Precision::Fp32, Some(0.0)), 30.0),
            with_hint(variant("int8", Precision::Int8, Some(0.02)), 9.0),
            with_hint(variant("fp16", Precision::Fp16, Some(0.01)), 9.0),
            variant("nohint", Precision::Int4, Some(0.0)),
        ],
    );
    let mut s = s;
    s.selection.prefer = Preference::Latency;
    let choice = choose_variant(&device("d"), &s);
    assert_eq!(fits(&choice), "fp16");
    assert!(
        choice.to_string().contains(
            "ranked first by latency (9 ms latency hint, accuracy 0.99) among 4 candidates: fp16, int8, fp32, nohint"
        ),
        "{choice}"
    );
}

#[test]
fn size_prefers_the_smallest_artifact_then_accuracy() {
    let mut s = spec(
        "1",
        vec![
            variant("fp32", Precision::Fp32, None),
            variant("int8", Precision::Int8, Some(0.02)),
            variant("int8b", Precision::Int8, Some(0.01)),
        ],
    );
    s.selection.prefer = Preference::Size;
    s.variants[0].artifact.size_bytes = 90;
    s.variants[1].artifact.size_bytes = 20;
    s.variants[2].artifact.size_bytes = 20;
    let choice = choose_variant(&device("d"), &s);
    assert_eq!(fits(&choice), "int8b");
    assert!(
        choice.to_string().contains("by size (20 bytes)"),
        "{choice}"
    );
}

#[test]
fn next_best_skips_demoted_variants_and_says_so() {
    let s = spec(
        "1",
        vec![
            variant("fp16", Precision::Fp16, Some(0.001)),
            variant("int8", Precision::Int8, Some(0.01)),
        ],
    );
    let d = device("d");
    assert_eq!(fits(&next_best(&d, &s, &[])), "fp16");
    let second = next_best(&d, &s, &["fp16"]);
    assert_eq!(fits(&second), "int8");
    assert!(
        second
            .to_string()
            .starts_with("int8: fp16 was demoted after failing canary analysis; int8 fits"),
        "{second}"
    );
    assert_eq!(
        unmet(&next_best(&d, &s, &["fp16", "int8"]), "int8"),
        ["was demoted after failing canary analysis"]
    );
}

fn arb_variant() -> impl Strategy<Value = Variant> {
    (
        prop::sample::select(vec![
            Precision::Fp32,
            Precision::Fp16,
            Precision::Int8,
            Precision::Int4,
            Precision::Mixed,
        ]),
        prop::option::of((0.0..0.2f64, prop::option::of(1.0..50.0f64))),
        prop::sample::subsequence(vec!["aarch64", "x86_64"], 0..=2),
        0..2048u64,
        prop::sample::subsequence(vec!["neon", "avx2", "dotprod"], 0..=2),
        any::<bool>(),
        1..200_000_000u64,
    )
        .prop_map(|(precision, quality, arch, mem, cpu, ort, size)| {
            let mut v = variant("v", precision, None);
            v.quality = quality.map(|(accuracy_drift, latency_hint_ms)| Quality {
                accuracy_drift,
                latency_hint_ms,
            });
            v.requires.arch = arch.into_iter().map(String::from).collect();
            v.requires.min_memory_mib = mem;
            v.requires.cpu_features = cpu.into_iter().map(String::from).collect();
            v.runtime = if ort {
                Runtime::Onnxruntime
            } else {
                Runtime::Tract
            };
            v.artifact.size_bytes = size;
            v
        })
}

proptest! {
    /// Whatever the spec, a chosen variant is one the device can run and that meets the floor,
    /// and nothing is chosen only when every variant is ruled out.
    #[test]
    fn the_choice_is_always_a_valid_candidate(
        variants in prop::collection::vec(arb_variant(), 1..6),
        prefer in prop::sample::select(vec![Preference::Accuracy, Preference::Latency, Preference::Size]),
        min_accuracy in prop::option::of(0.8..1.0f64),
        memory in 0..3000u64,
    ) {
        let variants: Vec<Variant> = variants
            .into_iter()
            .enumerate()
            .map(|(i, mut v)| { v.name = format!("v{i}"); v })
            .collect();
        let mut s = spec("1", variants);
        s.selection.prefer = prefer;
        s.selection.min_accuracy = min_accuracy;
        let mut d = device("d");
        d.memory_total_mib = memory;
        let acceptable = |v: &Variant| {
            unmet_requirements(&d, v).is_empty()
                && min_accuracy.is_none_or(|m| accuracy(v).is_some_and(|a| a + 1e-9 >= m))
        };
        match choose_variant(&d, &s) {
            Choice::Fits { index, name, .. } => {
                prop_assert!(acceptable(&s.variants[index]));
                prop_assert_eq!(s.variants[index].name.as_str(), &*name);
            }
            Choice::NoFit { reasons } => {
                prop_assert_eq!(reasons.len(), s.variants.len());
                prop_assert!(!s.variants.iter().any(acceptable));
            }
        }
    }
}

/// What `edgefleet compress` writes for MiniLM (measured numbers, BENCHMARKS.md): fp32 and
/// int8 on both runtimes, int8-dynamic on ONNX Runtime only.
fn compressed_minilm() -> Vec<Variant> {
    let make = |name: &str, precision, runtime, drift, ms| {
        let mut v = with_hint(variant(name, precision, Some(drift)), ms);
        v.runtime = runtime;
        v
    };
    vec![
        make("fp32", Precision::Fp32, Runtime::Tract, 0.0, 6.94),
        make("fp32-ort", Precision::Fp32, Runtime::Onnxruntime, 0.0, 5.94),
        make("int8", Precision::Int8, Runtime::Tract, 0.0003, 49.96),
        make(
            "int8-ort",
            Precision::Int8,
            Runtime::Onnxruntime,
            0.0003,
            6.50,
        ),
        make(
            "int8-dynamic-ort",
            Precision::Int8,
            Runtime::Onnxruntime,
            0.0332,
            3.59,
        ),
    ]
}

#[test]
fn prefer_latency_picks_per_runtime_on_measured_numbers_within_min_accuracy() {
    let mut s = spec("1", compressed_minilm());
    s.selection.prefer = Preference::Latency;
    let mut with_ort = device("ort");
    with_ort.runtimes = [Runtime::Tract, Runtime::Onnxruntime].into();
    let tract_only = device("tract");

    let choice = choose_variant(&with_ort, &s);
    assert_eq!(fits(&choice), "int8-dynamic-ort");
    assert!(
        choice
            .to_string()
            .contains("ranked first by latency (3.59 ms latency hint, accuracy 0.9668)"),
        "{choice}"
    );
    // A tract-only device never sees the ONNX Runtime variants; fp32 is its fastest.
    assert_eq!(fits(&choose_variant(&tract_only, &s)), "fp32");

    // A floor above int8-dynamic's measured accuracy: the next fastest that holds it.
    s.selection.min_accuracy = Some(0.99);
    let choice = choose_variant(&with_ort, &s);
    assert_eq!(fits(&choice), "fp32-ort");
    assert!(
        choice
            .to_string()
            .contains("int8-dynamic-ort has accuracy 0.9668 below minAccuracy 0.99"),
        "{choice}"
    );
}
