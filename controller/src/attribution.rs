//! Which role a device's telemetry window counts for. A canary's windows count as canary only
//! once the device serves the canary artifact; until its swap completes it still serves the
//! previous model, and those windows belong to the stable baseline.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use edgefleet_core::AssignmentRecord;
use edgefleet_core::shared::Pool;
use edgefleet_protocol::wire::{Assignment, Role};

/// deployment key → device → value: looked up per telemetry window with borrowed names.
type PerDevice<T> = HashMap<String, HashMap<String, T>>;

#[derive(Default)]
struct Serving {
    devices: PerDevice<Arc<str>>,
    digests: Pool<str>,
}

impl Serving {
    fn digest(&mut self, sha256: &str) -> Arc<str> {
        self.digests.share_ref(sha256)
    }
}

#[derive(Default)]
pub struct Attribution {
    /// (deployment key, device) → its assignment (the records' shared entry: the artifact's
    /// sha256 and the role)
    assigned: RwLock<PerDevice<Arc<Assignment>>>,
    /// (deployment key, device) → sha256 the device last said it serves; a fleet serves a
    /// handful of distinct digests, each kept once in `digests`
    serving: RwLock<Serving>,
    /// deployment key → variant names of its target and previous specs: the only values the
    /// `variant` label may take, whatever a device sends.
    variants: RwLock<HashMap<String, BTreeSet<String>>>,
}

impl Attribution {
    /// Replaces the assignments of one deployment (`namespace/name`).
    pub fn assign(&self, deployment: &str, records: &[AssignmentRecord]) {
        let devices: HashMap<String, Arc<Assignment>> = records
            .iter()
            .map(|r| (r.device_id.clone(), r.assignment.clone()))
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
                let known = serving
                    .devices
                    .get(deployment)
                    .and_then(|d| d.get(device))
                    .is_some_and(|kept| &**kept == sha);
                if !known {
                    let digest = serving.digest(sha);
                    let devices = serving.devices.entry(deployment.to_string()).or_default();
                    devices.insert(device.to_string(), digest);
                }
            }
            None => {
                if let Some(devices) = serving.devices.get_mut(deployment) {
                    devices.remove(device);
                    if devices.is_empty() {
                        serving.devices.remove(deployment);
                    }
                }
            }
        }
    }

    pub fn role_of(&self, deployment: &str, device: &str) -> Role {
        let assigned = self.assigned.read().unwrap_or_else(|p| p.into_inner());
        match assigned.get(deployment).and_then(|d| d.get(device)) {
            Some(assignment) if assignment.role == Role::Canary => {
                let serving = self.serving.read().unwrap_or_else(|p| p.into_inner());
                let sha = assignment.artifact.sha256.as_str();
                let served = serving.devices.get(deployment).and_then(|d| d.get(device));
                if served.is_some_and(|served| &**served == sha) {
                    Role::Canary
                } else {
                    Role::Stable
                }
            }
            _ => Role::Stable,
        }
    }
}
