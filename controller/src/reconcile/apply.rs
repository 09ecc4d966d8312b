//! Step 3: the plan's assignments written to SQL, paced by `maxUnavailablePercent`, and the
//! desired documents of devices whose assignment changed rebuilt and published. Each
//! assignment names the device's site cache, if its site has one online.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use edgefleet_core::AssignmentRecord;
use edgefleet_core::pacing;
use edgefleet_core::plan::{RolloutPlan, Source};
use edgefleet_core::site::SiteCaches;
use edgefleet_protocol::wire::{Assignment, Role};

use super::publish::Written;
use super::{DeploymentInput, ReconcileError, Reconciler, Records};

impl Reconciler {
    /// Writes the plan's assignments, republishes the documents of devices whose assignment
    /// for this deployment changed, and returns the deployment's records as stored (sorted by
    /// device id) with the number of replacements pacing kept back.
    pub(super) async fn apply(
        &self,
        input: &DeploymentInput<'_>,
        plan: &RolloutPlan,
        caches: &SiteCaches,
        now_ms: i64,
    ) -> Result<(Records, usize), ReconcileError> {
        let old = self
            .fleet
            .store
            .assignments(input.namespace, input.name)
            .await?;
        self.apply_over(input, plan, caches, old, now_ms).await
    }

    /// [`Reconciler::apply`] over the deployment's rows as the caller holds them.
    pub(super) async fn apply_over(
        &self,
        input: &DeploymentInput<'_>,
        plan: &RolloutPlan,
        caches: &SiteCaches,
        old: Records,
        now_ms: i64,
    ) -> Result<(Records, usize), ReconcileError> {
        let store = &self.fleet.store;
        let key = input.key();
        let new = planned_records(input, &key, plan, caches);
        let online: BTreeSet<&str> = plan
            .devices
            .iter()
            .filter(|d| d.online)
            .map(|d| d.device.as_str())
            .collect();
        let budget = pacing::budget(
            input.spec.rollout.max_unavailable_percent,
            plan.counts.matched,
        );
        let pacing::Paced {
            rows: new,
            held_back,
        } = pacing::pace(&old, new, &online, budget);
        let changed = changed_devices(&old, &new);
        // unchanged documents may still carry new reasons or generations to keep in SQL
        let unchanged = changed.is_empty()
            && old.len() == new.len()
            && old
                .iter()
                .zip(&new)
                .all(|(o, n)| o.reason == n.reason && o.generation == n.generation);
        let stored = if unchanged {
            old
        } else {
            let stored = store
                .replace_assignments_over(input.namespace, input.name, &old, new, now_ms)
                .await?;
            drop(old); // the deployment's rows are held once, not twice, while documents go out
            stored
        };
        // as written: the same assignments as planned, with the devices' kept reports
        self.fleet.attribution.assign(&key, &stored);
        let written = Written {
            namespace: input.namespace,
            name: input.name,
            assignments: stored
                .iter()
                .map(|r| (r.device_id.as_str(), &*r.assignment))
                .collect(),
        };
        self.publish_devices(&changed, Some(&written), now_ms)
            .await?;
        Ok((stored, held_back))
    }
}

/// A record per device the plan assigns something to; reports are filled in by the store.
/// Devices with the same entry (same spec, variant, role and site cache) share it, and
/// devices with the same reason share its sentence.
fn planned_records(
    input: &DeploymentInput<'_>,
    key: &str,
    plan: &RolloutPlan,
    caches: &SiteCaches,
) -> Records {
    type EntryKey<'a> = (Source, &'a str, Role, Option<&'a String>);
    let mut shared: HashMap<EntryKey<'_>, Arc<Assignment>> = HashMap::new();
    let mut reasons: HashMap<(Arc<str>, Arc<str>), Arc<str>> = HashMap::new();
    plan.devices
        .iter()
        .filter_map(|device| {
            let assignment = device.assignment.as_ref()?;
            let site_cache = caches.get(device.device.as_str());
            // within one plan, the source spec, variant and role decide everything else
            let entry_key = (
                assignment.source,
                assignment.variant.name.as_str(),
                assignment.role,
                site_cache,
            );
            let wire = shared
                .entry(entry_key)
                .or_insert_with(|| {
                    let mut wire = assignment.to_wire(key);
                    wire.site_cache = site_cache.cloned();
                    Arc::new(wire)
                })
                .clone();
            Some(AssignmentRecord {
                device_id: device.device.to_string(),
                reason: reasons
                    .entry((device.reason.clone(), assignment.variant_reason.clone()))
                    .or_insert_with_key(|(why, variant)| format!("{why}; {variant}").into())
                    .clone(),
                assignment: wire,
                generation: input.generation.unwrap_or(0),
                phase: None,
                phase_reason: None,
                serving_sha256: None,
            })
        })
        .collect()
}

/// Devices whose assignment differs between `old` and `new`, sorted.
fn changed_devices(old: &[AssignmentRecord], new: &[AssignmentRecord]) -> Vec<String> {
    fn index(records: &[AssignmentRecord]) -> HashMap<&str, &Assignment> {
        records
            .iter()
            .map(|r| (r.device_id.as_str(), &*r.assignment))
            .collect()
    }
    let (old_index, new_index) = (index(old), index(new));
    let mut changed: Vec<String> = old_index
        .keys()
        .chain(new_index.keys().filter(|d| !old_index.contains_key(*d)))
        .filter(|device| old_index.get(*device) != new_index.get(*device))
        .map(|device| device.to_string())
        .collect();
    changed.sort_unstable();
    changed
}
