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
