//! What the controller knows about a device, which deployments select it, and the bounded
//! device class that cohorts, canary analysis and Prometheus labels are keyed by.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use edgefleet_crds::{DeviceSelector, Runtime, SelectorOperator};
use edgefleet_protocol::KNOWN_ARCHES;
use edgefleet_protocol::wire::{DeviceId, Hello};

use crate::shared::Pool;

/// A device's capabilities and liveness: the inventory every decision is made from. Its maps
/// and sets are shared by devices that announce the same ones ([`SharedFacts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFacts {
    pub id: DeviceId,
    pub labels: Arc<BTreeMap<String, String>>,
    /// As Rust's `std::env::consts::ARCH` names it.
    pub arch: String,
    pub cores: u32,
    /// Lower-cased, so that `AVX2` from one agent and `avx2` in a spec agree.
    pub cpu_features: Arc<BTreeSet<String>>,
    pub memory_total_mib: u64,
    pub memory_available_mib: u64,
    pub disk_free_mib: u64,
    /// Lower-cased, like `cpu_features`.
    pub accelerators: Arc<BTreeSet<String>>,
    pub runtimes: BTreeSet<Runtime>,
    pub online: bool,
    /// SHA-256 digests of artifacts already on the device (from its state reports). Their size
    /// is not demanded from free disk again; otherwise a device whose download filled its disk
    /// would stop fitting the very variant it runs, and the plan would flap on every reconcile.
    pub installed_sha256: Arc<BTreeSet<String>>,
    /// Set when the device serves its site's artifacts (the `site` module picks caches).
    pub site_cache_url: Option<String>,
}

impl From<&Hello> for DeviceFacts {
    /// A device that says hello is online; the controller overrides `online` from `status` and
    /// fills `installed_sha256` from state reports.
    fn from(hello: &Hello) -> Self {
        Self {
            id: hello.device_id.clone(),
            labels: Arc::new(hello.labels.clone()),
            arch: hello.arch.clone(),
            cores: hello.cores,
            cpu_features: Arc::new(lower_set(&hello.cpu_features)),
            memory_total_mib: hello.memory_total_mib,
            memory_available_mib: hello.memory_available_mib,
            disk_free_mib: hello.disk_free_mib,
            accelerators: Arc::new(lower_set(&hello.accelerators)),
            runtimes: hello.runtimes.iter().copied().collect(),
            online: true,
            installed_sha256: Default::default(),
            site_cache_url: hello.site_cache_url.clone(),
        }
    }
}

fn lower_set(items: &[String]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_ascii_lowercase()).collect()
}

/// Label maps and capability sets that devices announce alike, kept once: a fleet of 100,000
/// devices has a few hundred distinct ones.
#[derive(Debug, Default)]
pub struct SharedFacts {
    labels: Pool<BTreeMap<String, String>>,
    sets: Pool<BTreeSet<String>>,
}

impl SharedFacts {
    /// `facts` with its maps and sets replaced by the shared copies.
    pub fn share(&mut self, mut facts: DeviceFacts) -> DeviceFacts {
        facts.labels = self.labels.share(facts.labels);
        facts.cpu_features = self.sets.share(facts.cpu_features);
        facts.accelerators = self.sets.share(facts.accelerators);
        facts.installed_sha256 = self.sets.share(facts.installed_sha256);
        facts
    }

    /// The shared copy of a set (a device's installed digests after a state report).
    pub fn set(&mut self, set: BTreeSet<String>) -> Arc<BTreeSet<String>> {
        self.sets.share(Arc::new(set))
    }

    /// How many distinct label maps are kept.
    pub fn label_maps(&self) -> usize {
        self.labels.len()
    }
}

impl DeviceFacts {
    pub fn is_selected_by(&self, selector: &DeviceSelector) -> bool {
        selector_matches(selector, &self.labels)
    }
}

/// Kubernetes label-selector semantics: every `matchLabels` pair and every expression must
/// hold; an empty selector selects everything. Malformed expressions (which validation
/// reports) fail closed: `In` without values selects nothing.
pub fn selector_matches(selector: &DeviceSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_hold = selector
        .match_labels
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value));
    labels_hold
        && selector.match_expressions.iter().all(|req| {
            let value = labels.get(&req.key);
            match req.operator {
                SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
                SelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
                SelectorOperator::Exists => value.is_some(),
                SelectorOperator::DoesNotExist => value.is_none(),
            }
        })
}

/// Accelerators a class may name, in priority order: the first one a device has is its
/// primary accelerator. Unknown accelerators are `other`; none at all is `none`.
const CLASS_ACCELERATORS: &[&str] = &["nvidia", "coral", "hailo", "npu", "dri"];

/// Memory tiers as (upper bound in MiB, label); above the last bound is `memgt4g`.
const MEMORY_TIERS: &[(u64, &str)] = &[(512, "mem512m"), (1024, "mem1g"), (4096, "mem4g")];

/// `arch-accelerator-memtier`, e.g. `aarch64-none-mem1g`. Devices of one class should perform
/// alike, which is what makes comparing a canary cohort against the stable one meaningful.
/// At most 8 arches × 7 accelerators × 4 tiers = 224 classes, whatever devices announce.
pub fn device_class(device: &DeviceFacts) -> String {
    // Architectures outside the known list are `other`, so a misbehaving agent cannot mint
    // new label values.
    let arch = KNOWN_ARCHES
        .iter()
        .find(|a| **a == device.arch)
        .copied()
        .unwrap_or("other");
    let accelerator = if device.accelerators.is_empty() {
        "none"
    } else {
        CLASS_ACCELERATORS
            .iter()
            .find(|a| device.accelerators.contains(**a))
            .copied()
            .unwrap_or("other")
    };
    let memory = MEMORY_TIERS
        .iter()
        .find(|(bound, _)| device.memory_total_mib <= *bound)
        .map_or("memgt4g", |(_, label)| label);
    format!("{arch}-{accelerator}-{memory}")
}

#[cfg(test)]
mod tests;
