//! A plan brought up to date after devices' installed artifacts changed, checked device by
//! device instead of planning the fleet again. During a rollout every device that finishes a
//! download reports a new digest; re-planning 100,000 devices for each such batch made the
//! controller's work follow the fleet's size rather than what changed.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashSet};

use edgefleet_crds::ModelDeploymentSpec;

use super::{
    Shared, Stage, assign, classify, consented_offload, effective_stage, selector_in_force,
};
use crate::cohort::CohortKey;
use crate::device::DeviceFacts;
use crate::plan::RolloutPlan;
use edgefleet_protocol::wire::Role;

/// Brings `plan` (made by [`super::plan_rollout`] from these specs, stage and demotions) up to
/// date with `changed`: devices whose installed digests are all that changed since. Returns
/// `false` when that cannot be shown device by device (the caller plans again; `plan` may
/// then be half updated).
///
/// The plan stands when every changed device keeps its class, target choice and assignment,
/// and canary membership cannot move: a canary's tier may only improve and another device's
/// only worsen, so the first places of every cohort stay with the same devices. Only the
/// changed devices' tiers are written.
pub fn follow_installed(
    plan: &mut RolloutPlan,
    spec: &ModelDeploymentSpec,
    previous: Option<&ModelDeploymentSpec>,
    stage: Stage,
    demotions: &BTreeSet<CohortKey>,
    changed: &[impl Borrow<DeviceFacts>],
) -> bool {
    let stage = effective_stage(spec, stage);
    let selector = selector_in_force(spec, previous, stage);
    let offload = consented_offload(spec);
    let mut seen = HashSet::new();
    for device in changed.iter().map(Borrow::borrow) {
        if !seen.insert(&device.id) {
            continue;
        }
        let index = plan.devices.binary_search_by(|d| d.device.cmp(&device.id));
        let index = match (index, device.is_selected_by(selector)) {
            (Ok(index), true) => index,
            (Err(_), false) => continue, // not in the plan, before or now
            _ => return false,
        };
        let planned = &plan.devices[index];
        let mut shared = Shared::default();
        let classified = classify(spec, demotions, device, &mut shared);
        let member = planned.assignment.as_ref().map(|a| a.role) == Some(Role::Canary);
        let tier = classified.tier(spec);
        // tiers rank devices for canary places only while a canary step chooses them
        let ranked = matches!(stage, Stage::Canary { .. }) && previous.is_some();
        let membership_kept = !ranked
            || tier == planned.tier
            || (member && tier < planned.tier)
            || (!member && tier > planned.tier);
        if *classified.class != *planned.device_class
            || classified.target != planned.target
            || classified.demoted_from != planned.demoted_from
            || device.online != planned.online
            || !membership_kept
        {
            return false;
        }
        let canaries: BTreeSet<_> = member.then(|| device.id.clone()).into_iter().collect();
        let (pick, reason) = assign((spec, previous), stage, &classified, &canaries, &mut shared);
        let assignment = pick.map(|pick| shared.assignment(pick, &offload));
        let same_assignment = match (&assignment, &planned.assignment) {
            (Some(now), Some(before)) => now == before,
            (None, None) => true,
            _ => false,
        };
        if !same_assignment || *reason != *planned.reason {
            return false;
        }
        plan.devices[index].tier = tier;
    }
    true
}

#[cfg(test)]
mod tests;
