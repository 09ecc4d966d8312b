use std::collections::BTreeMap;

use edgefleet_crds::{DeviceSelector, Runtime, SelectorOperator, SelectorRequirement};
use edgefleet_protocol::wire::Hello;

use super::*;
use crate::testutil::{device, id};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expr(key: &str, operator: SelectorOperator, values: &[&str]) -> SelectorRequirement {
    SelectorRequirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

fn selector(match_labels: &[(&str, &str)], exprs: Vec<SelectorRequirement>) -> DeviceSelector {
    DeviceSelector {
        match_labels: labels(match_labels),
        match_expressions: exprs,
    }
}

#[test]
fn facts_from_hello_copy_capabilities_and_lower_case_features() {
    let hello = Hello {
        device_id: id("cam-1"),
        agent_version: "0.1.0".into(),
        labels: labels(&[("tier", "camera")]),
        arch: "x86_64".into(),
        cores: 8,
        cpu_features: vec!["AVX2".into(), "fma".into()],
        memory_total_mib: 8192,
        memory_available_mib: 4000,
        disk_free_mib: 100,
        accelerators: vec!["NVIDIA".into()],
        runtimes: vec![Runtime::Onnxruntime, Runtime::Tract],
        site_cache_url: None,
    };
    let facts = DeviceFacts::from(&hello);
    assert_eq!(facts.id, id("cam-1"));
    assert_eq!(*facts.labels, labels(&[("tier", "camera")]));
    assert_eq!(facts.arch, "x86_64");
    assert_eq!(facts.cores, 8);
    assert_eq!(*facts.cpu_features, ["avx2".into(), "fma".into()].into());
    assert_eq!(facts.memory_total_mib, 8192);
    assert_eq!(facts.memory_available_mib, 4000);
    assert_eq!(facts.disk_free_mib, 100);
    assert_eq!(*facts.accelerators, ["nvidia".into()].into());
    assert_eq!(
        facts.runtimes,
        [Runtime::Tract, Runtime::Onnxruntime].into()
    );
    assert!(facts.online);
    assert!(facts.installed_sha256.is_empty());
}

#[test]
fn empty_selector_selects_every_device_even_unlabelled() {
    assert!(selector_matches(
        &DeviceSelector::default(),
        &BTreeMap::new()
    ));
    assert!(device("d").is_selected_by(&DeviceSelector::default()));
}

#[test]
fn match_labels_need_every_pair_with_equal_values() {
    let sel = selector(&[("tier", "camera"), ("site", "a")], vec![]);
    assert!(selector_matches(
        &sel,
        &labels(&[("tier", "camera"), ("site", "a"), ("extra", "x")])
    ));
    assert!(!selector_matches(&sel, &labels(&[("tier", "camera")])));
    assert!(!selector_matches(
        &sel,
        &labels(&[("tier", "camera"), ("site", "b")])
    ));
}

#[test]
fn in_needs_the_label_with_one_of_the_values() {
    let sel = selector(
        &[],
        vec![expr("tier", SelectorOperator::In, &["gw", "cam"])],
    );
    assert!(selector_matches(&sel, &labels(&[("tier", "cam")])));
    assert!(!selector_matches(&sel, &labels(&[("tier", "sensor")])));
    assert!(!selector_matches(&sel, &labels(&[])));
}

#[test]
fn not_in_accepts_a_missing_label() {
    let sel = selector(&[], vec![expr("tier", SelectorOperator::NotIn, &["lab"])]);
    assert!(selector_matches(&sel, &labels(&[])));
    assert!(selector_matches(&sel, &labels(&[("tier", "cam")])));
    assert!(!selector_matches(&sel, &labels(&[("tier", "lab")])));
}

#[test]
fn exists_and_does_not_exist_look_at_the_key_only() {
    let exists = selector(&[], vec![expr("gpu", SelectorOperator::Exists, &[])]);
    let absent = selector(
        &[],
        vec![expr("quarantine", SelectorOperator::DoesNotExist, &[])],
    );
    assert!(selector_matches(&exists, &labels(&[("gpu", "")])));
    assert!(!selector_matches(&exists, &labels(&[])));
    assert!(selector_matches(&absent, &labels(&[("gpu", "x")])));
    assert!(!selector_matches(
        &absent,
        &labels(&[("quarantine", "yes")])
    ));
}

#[test]
fn malformed_in_without_values_selects_nothing() {
    let sel = selector(&[], vec![expr("tier", SelectorOperator::In, &[])]);
    assert!(!selector_matches(&sel, &labels(&[("tier", "cam")])));
}

#[test]
fn labels_and_expressions_must_all_hold() {
    let sel = selector(
        &[("site", "a")],
        vec![
            expr("tier", SelectorOperator::In, &["gw", "cam"]),
            expr("quarantine", SelectorOperator::DoesNotExist, &[]),
        ],
    );
    assert!(selector_matches(
        &sel,
        &labels(&[("site", "a"), ("tier", "gw")])
    ));
    assert!(!selector_matches(
        &sel,
        &labels(&[("site", "a"), ("tier", "gw"), ("quarantine", "1")])
    ));
    assert!(!selector_matches(
        &sel,
        &labels(&[("site", "b"), ("tier", "gw")])
    ));
}

#[test]
fn class_names_arch_primary_accelerator_and_memory_tier() {
    let mut d = device("d");
    assert_eq!(device_class(&d), "aarch64-none-mem1g");
    d.arch = "x86_64".into();
    d.memory_total_mib = 16 * 1024;
    d.accelerators = Arc::new(["dri".into(), "nvidia".into()].into());
    assert_eq!(device_class(&d), "x86_64-nvidia-memgt4g");
}

#[test]
fn memory_tier_bounds_are_inclusive() {
    let mut d = device("d");
    let cases = [
        (0, "mem512m"),
        (512, "mem512m"),
        (513, "mem1g"),
        (1024, "mem1g"),
        (1025, "mem4g"),
        (4096, "mem4g"),
        (4097, "memgt4g"),
    ];
    for (mib, tier) in cases {
        d.memory_total_mib = mib;
        assert_eq!(
            device_class(&d),
            format!("aarch64-none-{tier}"),
            "{mib} MiB"
        );
    }
}

#[test]
fn unknown_arch_and_accelerators_collapse_to_other() {
    let mut d = device("d");
    d.arch = "mips-weird-2000".into();
    d.accelerators = Arc::new(["quantum-annealer".into()].into());
    assert_eq!(device_class(&d), "other-other-mem1g");
}

#[test]
fn classes_stay_bounded_whatever_devices_announce() {
    let mut classes = std::collections::BTreeSet::new();
    let arches = [
        "x86_64",
        "aarch64",
        "arm",
        "riscv64",
        "x86",
        "powerpc64",
        "s390x",
    ];
    for i in 0..2000u64 {
        let mut d = device("d");
        d.arch = if i % 3 == 0 {
            format!("arch{i}")
        } else {
            arches[(i % 7) as usize].to_string()
        };
        d.accelerators = Arc::new(match i % 4 {
            0 => Default::default(),
            1 => [format!("acc{i}")].into(),
            2 => ["coral".into()].into(),
            _ => ["dri".into(), format!("acc{i}")].into(),
        });
        d.memory_total_mib = i * 7;
        classes.insert(device_class(&d));
    }
    assert!(classes.len() <= 224, "{} classes", classes.len());
}

#[test]
fn devices_that_announce_the_same_maps_and_sets_share_one_copy() {
    let mut shared = SharedFacts::default();
    let announce = |name: &str, site: &str| {
        let mut facts = device(name);
        facts.labels = Arc::new(BTreeMap::from([("site".to_string(), site.to_string())]));
        facts
    };
    let a = shared.share(announce("a", "lab"));
    let b = shared.share(announce("b", "lab"));
    let c = shared.share(announce("c", "field"));
    assert!(Arc::ptr_eq(&a.labels, &b.labels));
    assert!(!Arc::ptr_eq(&a.labels, &c.labels));
    assert!(Arc::ptr_eq(&a.cpu_features, &c.cpu_features));
    // sharing changes nothing a decision sees
    assert_eq!(b, announce("b", "lab"));
}

#[test]
fn the_pool_forgets_maps_no_device_holds_any_more() {
    let mut shared = SharedFacts::default();
    let mut held = Vec::new();
    for i in 0..3000 {
        let mut facts = device(&format!("d{i}"));
        facts.labels = Arc::new(BTreeMap::from([("serial".to_string(), format!("{i}"))]));
        let facts = shared.share(facts);
        // only every tenth device stays in the inventory
        if i % 10 == 0 {
            held.push(facts);
        }
    }
    assert!(shared.label_maps() < 1024 + 300, "{}", shared.label_maps());
    let again = {
        let mut facts = device("d0-again");
        facts.labels = Arc::new(BTreeMap::from([("serial".to_string(), "0".to_string())]));
        shared.share(facts)
    };
    assert!(Arc::ptr_eq(&again.labels, &held[0].labels));
}
