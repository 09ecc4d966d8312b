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
