//! The example manifests admit cleanly; the invalid ones are refused with the field named.

use std::path::PathBuf;

use edgefleet_crds::manifest::admit_yaml;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn yaml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("examples dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_is_admitted() {
    let files = yaml_files(&examples_dir());
    assert!(
        files.len() >= 3,
        "expected at least 3 examples, found {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        if let Err(errors) = admit_yaml(&text) {
            panic!("{} was refused: {errors:?}", file.display());
        }
    }
}

/// Each invalid example says in its first line which field must be named.
#[test]
fn every_invalid_example_is_refused_naming_the_field() {
    let files = yaml_files(&examples_dir().join("invalid"));
    assert!(files.len() >= 4);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.split("expected error on ").nth(1))
            .map(|s| s.trim_end_matches(')').to_string())
            .expect("first line names the expected field");
        let errors = admit_yaml(&text).expect_err(&format!("{} must be refused", file.display()));
        assert!(
            errors
                .iter()
                .any(|e| e.path == expected || e.to_string().contains(&expected)),
            "{}: expected an error on {expected}, got {errors:?}",
            file.display()
        );
    }
}

fn minimal() -> String {
    std::fs::read_to_string(examples_dir().join("vad-minimal.yaml")).expect("readable")
}

#[test]
fn semantic_errors_are_refused() {
    let duplicate = minimal().replace(
        "  variants:\n",
        "  variants:\n    - name: fp32\n      artifact: {uri: 'http://a/b', sha256: '1111111111111111111111111111111111111111111111111111111111111111', sizeBytes: 1}\n      precision: fp16\n",
    );
    let errors = admit_yaml(&duplicate).expect_err("duplicate variant names");
    assert!(
        errors.iter().any(|e| e.path == "spec.variants[1].name"),
        "{errors:?}"
    );

    let decreasing = format!(
        "{}  rollout:\n    steps: [{{percent: 50}}, {{percent: 20}}]\n",
        minimal()
    );
    let errors = admit_yaml(&decreasing).expect_err("decreasing steps");
    assert!(
        errors
            .iter()
            .any(|e| e.path == "spec.rollout.steps[1].percent"),
        "{errors:?}"
    );

    let errors = admit_yaml("spec: [unclosed").expect_err("bad yaml");
    assert!(errors[0].message.contains("not valid YAML"), "{errors:?}");

    let wrong_kind = minimal().replace("kind: ModelDeployment", "kind: Deployment");
    let errors = admit_yaml(&wrong_kind).expect_err("wrong kind");
    assert_eq!(errors[0].path, "apiVersion/kind");
}

#[test]
fn defaults_fill_an_omitted_rollout() {
    let md = admit_yaml(&minimal()).expect("admitted");
    assert_eq!(md.spec.rollout.steps.len(), 2);
    assert_eq!(md.spec.rollout.analysis.failure_threshold, 2);
    assert_eq!(md.spec.variants[0].runtime, edgefleet_crds::Runtime::Tract);
}

fn offload_example() -> String {
    std::fs::read_to_string(examples_dir().join("text-direction-offload.yaml")).expect("readable")
}

#[test]
fn offload_policy_is_admitted_with_its_defaults() {
    let md = admit_yaml(&offload_example()).expect("admitted");
    let offload = md.spec.offload.expect("offload");
    assert!(offload.inputs_may_leave_device);
    assert_eq!(offload.triggers.queue_depth_above, Some(4));
    assert_eq!(md.spec.rollout.analysis.max_offload_ratio, Some(0.3));
    let minimal = offload_example()
        .replace(
            "    rateLimit:\n      requestsPerSecond: 20\n      burst: 40\n",
            "",
        )
        .replace("    timeoutMs: 500\n", "");
    let offload = admit_yaml(&minimal)
        .expect("admitted")
        .spec
        .offload
        .expect("offload");
    assert_eq!(offload.timeout_ms, 1000);
    assert_eq!(offload.rate_limit.burst, 10);
}

#[test]
fn offload_mistakes_are_refused_naming_the_field() {
    let cases = [
        (
            ("inputsMayLeaveDevice: true", "inputsMayLeaveDevice: false"),
            "spec.offload.inputsMayLeaveDevice",
        ),
        (("    inputsMayLeaveDevice: true\n", ""), "spec.offload"),
        (
            (
                "url: http://cloud-inference.local:8080",
                "url: cloud-inference.local",
            ),
            "spec.offload.endpoint.url",
        ),
        (
            ("threshold: 0.75", "threshold: 0"),
            "spec.offload.triggers.confidenceBelow.threshold",
        ),
        (
            ("requestsPerSecond: 20", "requestsPerSecond: 0"),
            "spec.offload.rateLimit.requestsPerSecond",
        ),
        (
            ("maxOffloadRatio: 0.3", "maxOffloadRatio: 1.5"),
            "spec.rollout.analysis.maxOffloadRatio",
        ),
    ];
    for ((from, to), path) in cases {
        let text = offload_example().replace(from, to);
        assert_ne!(text, offload_example(), "{from:?} is in the example");
        let errors = admit_yaml(&text).expect_err(path);
        assert!(errors.iter().any(|e| e.path == path), "{path}: {errors:?}");
    }
    let no_trigger = offload_example().replace(
        "    triggers:\n      confidenceBelow:\n        output: save_infer_model/scale_0.tmp_1\n        threshold: 0.75\n      queueDepthAbove: 4\n      latencyBudgetMs: 50\n",
        "    triggers: {}\n",
    );
    assert_ne!(no_trigger, offload_example());
    let errors = admit_yaml(&no_trigger).expect_err("no trigger");
    assert!(
        errors.iter().any(|e| e.path == "spec.offload.triggers"),
        "{errors:?}"
    );
}

/// Token ids are written as YAML integers but arrive as f64: whole numbers are valid INT64.
#[test]
fn integer_self_test_values_are_admitted_when_whole_and_in_range() {
    let with_self_test = |ids: &str, mask: &str| {
        format!(
            "{}  selfTest:\n    inputs:\n      - {{name: input_ids, shape: [1, 4], datatype: INT64, data: {ids}}}\n      - {{name: attention_mask, shape: [1, 4], datatype: BOOL, {mask}}}\n",
            minimal()
        )
    };
    let md = admit_yaml(&with_self_test("[101, 7592, 2088, 102]", "fill: 1")).expect("admitted");
    let test = md.spec.self_test.expect("self-test kept");
    assert_eq!(
        test.inputs[0].data,
        Some(vec![101.0, 7592.0, 2088.0, 102.0])
    );

    let errors = admit_yaml(&with_self_test("[101, -1.5, 2088, 102]", "fill: 1"))
        .expect_err("fractional token id");
    assert!(
        errors
            .iter()
            .any(|e| e.path == "spec.selfTest.inputs[0].data[1]"
                && e.message.contains("-1.5 is not a valid INT64")),
        "{errors:?}"
    );
    let errors =
        admit_yaml(&with_self_test("[101, 7592, 2088, 102]", "fill: 2")).expect_err("BOOL 2");
    assert!(
        errors
            .iter()
            .any(|e| e.path == "spec.selfTest.inputs[1].fill" && e.message.contains("0 or 1")),
        "{errors:?}"
    );
}
