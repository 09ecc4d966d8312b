//! The agent's desired-document handler (decode → accept → plan) under adversarial input:
//! arbitrary bytes and valid documents with hostile field values. It never panics, accepts
//! only documents for this device that are newer than what it applied, and whatever it
//! accepts can only ever name store paths inside the store (artifacts are addressed by a
//! verified 64-hex digest, never by a name from the document).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use edgefleet_agent::install::assignments::{self, Action};
use edgefleet_agent::install::store::Store;
use edgefleet_protocol::wire::DeviceId;
use proptest::prelude::*;
use serde_json::{Value, json};

fn valid_document(device: &str, generation: u64) -> Value {
    json!({
        "v": 1,
        "deviceId": device,
        "generation": generation,
        "assignments": [{
            "deployment": "vision/orientation",
            "model": {"name": "orientation", "version": "1.0.0"},
            "variant": "int8",
            "precision": "int8",
            "runtime": "tract",
            "artifact": {"uri": "http://models.local/o.onnx", "sha256": "ab".repeat(32), "sizeBytes": 1000},
            "role": "canary"
        }]
    })
}

/// Values an attacker would try in any string field.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("../../../../etc/passwd".to_string()),
        Just("/etc/shadow".to_string()),
        Just("..".to_string()),
        Just("a/../../b".to_string()),
        Just("file:///etc/passwd".to_string()),
        Just("http://x/../../../etc/passwd".to_string()),
        Just(format!("{}/..", "ab".repeat(32))),
        Just("AB".repeat(32)),
        Just("\u{0000}".to_string()),
        Just("x".repeat(70_000)),
        ".{0,40}",
    ]
}

/// Paths into every string leaf of the document.
const FIELDS: [&[&str]; 9] = [
    &["deviceId"],
    &["assignments", "0", "deployment"],
    &["assignments", "0", "model", "name"],
    &["assignments", "0", "model", "version"],
    &["assignments", "0", "variant"],
    &["assignments", "0", "artifact", "uri"],
    &["assignments", "0", "artifact", "sha256"],
    &["assignments", "0", "artifact", "signature"],
    &["assignments", "0", "runtime"],
];

fn set(doc: &mut Value, path: &[&str], value: Value) {
    let mut node = doc;
    for key in &path[..path.len() - 1] {
        node = match key.parse::<usize>() {
            Ok(i) => &mut node[i],
            Err(_) => &mut node[*key],
        };
    }
    node[path[path.len() - 1]] = value;
}

fn store() -> (&'static Path, &'static Store) {
    static STORE: OnceLock<(tempfile::TempDir, Store)> = OnceLock::new();
    let (dir, store) = STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    });
    (dir.path(), store)
}

fn check_accepted(device: &DeviceId, payload: &[u8], applied: Option<u64>) {
    let Ok(desired) = assignments::accept(device, payload, applied) else {
        return;
    };
    assert_eq!(&desired.device_id, device);
    if let Some(applied) = applied {
        assert!(desired.generation > applied);
    }
    let (store_root, store) = store();
    for action in assignments::plan(&desired, &BTreeMap::new()) {
        if let Action::Install(a) = action {
            let sha = &a.artifact.sha256;
            assert!(
                sha.len() == 64
                    && sha
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "accepted digest {sha:?}"
            );
            let path = store.artifact_path(sha);
            assert_eq!(path.parent(), Some(store_root.join("sha256").as_path()));
            assert!(
                a.artifact.uri.starts_with("http://") || a.artifact.uri.starts_with("https://")
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_are_refused_with_a_typed_reason(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let device = DeviceId::new("d1").unwrap();
        match assignments::accept(&device, &bytes, Some(3)) {
            Ok(_) => check_accepted(&device, &bytes, Some(3)),
            Err(rejection) => prop_assert!(!rejection.kind().is_empty()),
        }
    }

    #[test]
    fn hostile_field_values_never_reach_the_store(field in 0..FIELDS.len(), value in hostile_string(), generation in 0u64..10, applied in proptest::option::of(0u64..10)) {
        let device = DeviceId::new("d1").unwrap();
        let mut doc = valid_document("d1", generation);
        set(&mut doc, FIELDS[field], Value::String(value));
        let payload = serde_json::to_vec(&doc).unwrap();
        check_accepted(&device, &payload, applied);
    }

    #[test]
    fn byte_flips_in_a_valid_document_are_handled(index in 0usize..600, byte in any::<u8>()) {
        let device = DeviceId::new("d1").unwrap();
        let mut payload = serde_json::to_vec(&valid_document("d1", 5)).unwrap();
        if index < payload.len() {
            payload[index] = byte;
        }
        check_accepted(&device, &payload, Some(4));
    }
}

#[test]
fn the_valid_document_is_accepted_so_the_properties_are_not_vacuous() {
    let device = DeviceId::new("d1").unwrap();
    let payload = serde_json::to_vec(&valid_document("d1", 5)).unwrap();
    let desired = assignments::accept(&device, &payload, Some(4)).unwrap();
    assert_eq!(assignments::plan(&desired, &BTreeMap::new()).len(), 1);
    let mut traversal = valid_document("d1", 5);
    set(
        &mut traversal,
        &["assignments", "0", "artifact", "sha256"],
        Value::String("../../etc/passwd".into()),
    );
    let refused =
        assignments::accept(&device, &serde_json::to_vec(&traversal).unwrap(), None).unwrap_err();
    assert_eq!(refused.kind(), "invalid");
}
