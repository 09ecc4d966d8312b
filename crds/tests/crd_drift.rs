//! The committed CRD YAML must be exactly what the Rust types generate.

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/modeldeployment.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/modeldeployment.yaml exists");
    let generated = edgefleet_crds::crd_yaml().expect("CRD serializes");
    assert!(
        committed == generated,
        "crds/modeldeployment.yaml is stale; regenerate it with\n  cargo run -p edgefleet-crds --bin crdgen > crds/modeldeployment.yaml"
    );
}

/// `kubectl get md` shows failed devices beside ready ones, so a rollout whose devices fail
/// does not read as merely slow.
#[test]
fn kubectl_get_shows_failed_devices() {
    use kube::CustomResourceExt as _;
    let crd = edgefleet_crds::ModelDeployment::crd();
    let columns = crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default();
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Phase", "Step", "Matched", "Updated", "Ready", "Failed", "Age"
        ]
    );
    let failed = columns
        .iter()
        .find(|c| c.name == "Failed")
        .expect("a Failed column");
    assert_eq!(failed.json_path, ".status.devices.failed");
    assert_eq!(failed.type_, "integer");
}
