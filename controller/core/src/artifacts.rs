//! OCI artifacts pinned: a spec names `oci://registry/repo:tag`; the controller resolves each
//! reference once per deployment and model version (see the controller's `resolve` step) and
//! plans with the pinned copy, so every device of a rollout gets the same bytes even if the
//! tag moves meanwhile. Pure: the pins come in, the pinned spec goes out.

use std::collections::BTreeMap;

use edgefleet_crds::ModelDeploymentSpec;
use edgefleet_protocol::oci::OciReference;

/// What one `oci://` reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// `oci://registry/repo@sha256:<manifest>`.
    pub pinned_uri: String,
    /// The model file (the manifest's one layer).
    pub sha256: String,
    pub size_bytes: u64,
}

/// The references of `spec` that still need resolving: `oci://` URIs not in `pins`.
pub fn unresolved<'a>(spec: &'a ModelDeploymentSpec, pins: &BTreeMap<String, Pin>) -> Vec<&'a str> {
    let mut refs: Vec<&str> = spec
        .variants
        .iter()
        .map(|v| v.artifact.uri.as_str())
        .filter(|uri| OciReference::is_oci(uri) && !pins.contains_key(*uri))
        .collect();
    refs.sort_unstable();
    refs.dedup();
    refs
}

/// `spec` with every `oci://` artifact replaced by its pin: the digest-pinned URI, the layer's
/// sha256 and size. A spec that states a sha256 or size the registry disagrees with is an
/// error naming the variant; so is a reference without a pin.
pub fn pin_spec(
    spec: &ModelDeploymentSpec,
    pins: &BTreeMap<String, Pin>,
) -> Result<ModelDeploymentSpec, String> {
    let mut pinned = spec.clone();
    for variant in &mut pinned.variants {
        let artifact = &mut variant.artifact;
        if !OciReference::is_oci(&artifact.uri) {
            continue;
        }
        let pin = pins.get(&artifact.uri).ok_or_else(|| {
            format!(
                "variant {}: {} is not resolved yet",
                variant.name, artifact.uri
            )
        })?;
        if !artifact.sha256.is_empty() && artifact.sha256 != pin.sha256 {
            return Err(format!(
                "variant {}: the spec pins sha256 {} but {} holds {}",
                variant.name, artifact.sha256, artifact.uri, pin.sha256
            ));
        }
        if artifact.size_bytes != 0 && artifact.size_bytes != pin.size_bytes {
            return Err(format!(
                "variant {}: the spec says {} bytes but {} holds {}",
                variant.name, artifact.size_bytes, artifact.uri, pin.size_bytes
            ));
        }
        artifact.uri = pin.pinned_uri.clone();
        artifact.sha256 = pin.sha256.clone();
        artifact.size_bytes = pin.size_bytes;
    }
    Ok(pinned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed step should panic with its location
mod tests {
    use edgefleet_crds::Precision;

    use super::*;
    use crate::testutil::{spec, variant};

    const MANIFEST: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const LAYER: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn oci_spec() -> ModelDeploymentSpec {
        let mut s = spec(
            "1.0",
            vec![
                variant("fp32", Precision::Fp32, None),
                variant("int8", Precision::Int8, Some(0.01)),
            ],
        );
        s.variants[1].artifact.uri = "oci://reg:5000/models/m:v1".into();
        s.variants[1].artifact.sha256 = String::new();
        s.variants[1].artifact.size_bytes = 0;
        s
    }

    fn pins() -> BTreeMap<String, Pin> {
        BTreeMap::from([(
            "oci://reg:5000/models/m:v1".to_string(),
            Pin {
                pinned_uri: format!("oci://reg:5000/models/m@sha256:{MANIFEST}"),
                sha256: LAYER.into(),
                size_bytes: 42,
            },
        )])
    }

    #[test]
    fn oci_artifacts_are_replaced_by_their_pins_and_http_ones_kept() {
        let s = oci_spec();
        assert_eq!(
            unresolved(&s, &BTreeMap::new()),
            ["oci://reg:5000/models/m:v1"]
        );
        assert!(unresolved(&s, &pins()).is_empty());
        let pinned = pin_spec(&s, &pins()).unwrap();
        assert_eq!(pinned.variants[0], s.variants[0]);
        let a = &pinned.variants[1].artifact;
        assert_eq!(a.uri, format!("oci://reg:5000/models/m@sha256:{MANIFEST}"));
        assert_eq!((a.sha256.as_str(), a.size_bytes), (LAYER, 42));
        let e = pin_spec(&s, &BTreeMap::new()).unwrap_err();
        assert!(e.contains("int8") && e.contains("not resolved"), "{e}");
    }

    #[test]
    fn a_digest_in_the_spec_must_match_the_registry() {
        let mut s = oci_spec();
        s.variants[1].artifact.sha256 = LAYER.into();
        assert!(pin_spec(&s, &pins()).is_ok());
        s.variants[1].artifact.sha256 = MANIFEST.into();
        let e = pin_spec(&s, &pins()).unwrap_err();
        assert!(e.contains("variant int8") && e.contains(LAYER), "{e}");
        s.variants[1].artifact.sha256 = String::new();
        s.variants[1].artifact.size_bytes = 41;
        assert!(pin_spec(&s, &pins()).unwrap_err().contains("41 bytes"));
    }
}
