//! Cohorts: devices of one device class running one variant. A canary cohort is compared with
//! the stable devices of the same class, never with the fleet at large, so that a Raspberry Pi
//! canary is not judged against a GPU gateway.

use std::collections::BTreeMap;
use std::fmt;

use edgefleet_protocol::wire::{DeviceId, Role};
use serde::{Deserialize, Serialize};

/// `(device class, variant)`, displayed, parsed and serialized as `class/variant` (the
/// `CohortStatus.name`), so demotions persist as plain strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CohortKey {
    pub device_class: String,
    pub variant: String,
}

impl CohortKey {
    pub fn new(device_class: impl Into<String>, variant: impl Into<String>) -> Self {
        Self {
            device_class: device_class.into(),
            variant: variant.into(),
        }
    }

    /// Reads back a `class/variant` name, e.g. from `CohortStatus.name` or a persisted demotion.
    /// Neither device classes nor variant names contain `/`.
    pub fn parse(name: &str) -> Option<Self> {
        let (class, variant) = name.split_once('/')?;
        if class.is_empty() || variant.is_empty() || variant.contains('/') {
            return None;
        }
        Some(Self::new(class, variant))
    }
}

impl TryFrom<String> for CohortKey {
    type Error = String;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::parse(&name).ok_or_else(|| format!("cohort {name:?} is not class/variant"))
    }
}

impl From<CohortKey> for String {
    fn from(key: CohortKey) -> Self {
        key.to_string()
    }
}

impl fmt::Display for CohortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.device_class, self.variant)
    }
}

/// A cohort together with the role its devices play: the same `class/variant` can be both a
/// canary cohort (new version) and a stable one (previous version).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cohort {
    pub role: Role,
    pub key: CohortKey,
}

impl fmt::Display for Cohort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.key, self.role.as_str())
    }
}

/// Groups devices by cohort; each cohort's devices come out sorted, so the result does not
/// depend on the input order.
pub fn group_by_cohort<K: Ord>(
    members: impl IntoIterator<Item = (K, DeviceId)>,
) -> BTreeMap<K, Vec<DeviceId>> {
    let mut cohorts: BTreeMap<K, Vec<DeviceId>> = BTreeMap::new();
    for (key, device) in members {
        cohorts.entry(key).or_default().push(device);
    }
    for devices in cohorts.values_mut() {
        devices.sort();
        devices.dedup();
    }
    cohorts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::id;

    #[test]
    fn key_displays_and_parses_as_class_slash_variant() {
        let key = CohortKey::new("aarch64-none-mem1g", "int8");
        assert_eq!(key.to_string(), "aarch64-none-mem1g/int8");
        assert_eq!(CohortKey::parse("aarch64-none-mem1g/int8"), Some(key));
        assert_eq!(CohortKey::parse("no-slash"), None);
        assert_eq!(CohortKey::parse("/int8"), None);
        assert_eq!(CohortKey::parse("a/b/c"), None);
    }

    #[test]
    fn key_serializes_through_its_name() {
        let key = CohortKey::new("x86_64-none-mem4g", "fp16");
        assert_eq!(String::from(key.clone()), "x86_64-none-mem4g/fp16");
        assert_eq!(
            CohortKey::try_from("x86_64-none-mem4g/fp16".to_string()),
            Ok(key)
        );
        assert!(CohortKey::try_from("fp16".to_string()).is_err());
    }

    #[test]
    fn cohort_display_names_the_role() {
        let cohort = Cohort {
            role: Role::Canary,
            key: CohortKey::new("x86_64-nvidia-memgt4g", "fp16"),
        };
        assert_eq!(cohort.to_string(), "x86_64-nvidia-memgt4g/fp16 (canary)");
    }

    #[test]
    fn grouping_sorts_and_dedups_devices_per_cohort() {
        let a = CohortKey::new("c", "a");
        let b = CohortKey::new("c", "b");
        let grouped = group_by_cohort([
            (b.clone(), id("z")),
            (a.clone(), id("y")),
            (b.clone(), id("x")),
            (b.clone(), id("z")),
        ]);
        assert_eq!(grouped[&a], [id("y")]);
        assert_eq!(grouped[&b], [id("x"), id("z")]);
    }
}
