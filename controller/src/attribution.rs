//! Which role a device's telemetry window counts for. A canary's windows count as canary only
//! once the device serves the canary artifact; until its swap completes it still serves the
//! previous model, and those windows belong to the stable baseline.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use edgefleet_core::AssignmentRecord;
use edgefleet_protocol::wire::Role;

/// deployment key → device → value: looked up per telemetry window with borrowed names.
type PerDevice<T> = HashMap<String, HashMap<String, T>>;

#[derive(Default)]
pub struct Attribution {
    /// (deployment key, device) → (assigned sha256, role)
    assigned: RwLock<PerDevice<(String, Role)>>,
    /// (deployment key, device) → sha256 the device last said it serves
    serving: RwLock<PerDevice<String>>,
    /// deployment key → variant names of its target and previous specs: the only values the
    /// `variant` label may take, whatever a device sends.
    variants: RwLock<HashMap<String, BTreeSet<String>>>,
}

impl Attribution {
    /// Replaces the assignments of one deployment (`namespace/name`).
    pub fn assign(&self, deployment: &str, records: &[AssignmentRecord]) {
        let devices: HashMap<String, (String, Role)> = records
            .iter()
            .map(|r| (r.device_id.clone(), (r.sha256().to_string(), r.role)))
            .collect();
        let mut assigned = self.assigned.write().unwrap_or_else(|p| p.into_inner());
        if devices.is_empty() {
            assigned.remove(deployment);
        } else {
            assigned.insert(deployment.to_string(), devices);
        }
    }

    pub fn set_variants(&self, deployment: &str, names: BTreeSet<String>) {
        let mut variants = self.variants.write().unwrap_or_else(|p| p.into_inner());
        if names.is_empty() {
            variants.remove(deployment);
        } else {
            variants.insert(deployment.to_string(), names);
        }
    }

    /// Whether telemetry for this deployment and variant may become a series.
    pub fn is_known(&self, deployment: &str, variant: &str) -> bool {
        let variants = self.variants.read().unwrap_or_else(|p| p.into_inner());
        variants
            .get(deployment)
            .is_some_and(|names| names.contains(variant))
    }

    pub fn serving(&self, deployment: &str, device: &str, sha256: Option<&str>) {
        let mut serving = self.serving.write().unwrap_or_else(|p| p.into_inner());
        match sha256 {
            Some(sha) => {
                let devices = serving.entry(deployment.to_string()).or_default();
                if devices.get(device).map(String::as_str) != Some(sha) {
                    devices.insert(device.to_string(), sha.to_string());
                }
            }
            None => {
                if let Some(devices) = serving.get_mut(deployment) {
                    devices.remove(device);
                    if devices.is_empty() {
                        serving.remove(deployment);
                    }
                }
            }
        }
    }

    pub fn role_of(&self, deployment: &str, device: &str) -> Role {
        let assigned = self.assigned.read().unwrap_or_else(|p| p.into_inner());
        match assigned.get(deployment).and_then(|d| d.get(device)) {
            Some((sha, Role::Canary)) => {
                let serving = self.serving.read().unwrap_or_else(|p| p.into_inner());
                if serving.get(deployment).and_then(|d| d.get(device)) == Some(sha) {
                    Role::Canary
                } else {
                    Role::Stable
                }
            }
            _ => Role::Stable,
        }
    }
}
