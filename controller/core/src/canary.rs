//! Canary membership: which devices run the new version at a given step.
//!
//! Each device gets a stable pseudo-random position from SHA-256 of (deployment uid, device
//! id). Within each cohort devices are sorted by that position and the first
//! `ceil(percent × n / 100)` are canaries. Hence:
//! - the same devices are chosen after a controller restart or in any input order;
//! - membership is monotonic: a canary at one percentage is a canary at every higher one, so
//!   advancing a step only adds devices;
//! - every non-empty cohort has at least one canary once `percent > 0`, so every (class,
//!   variant) combination is exercised before it reaches the whole fleet;
//! - another deployment (another uid) picks an independent sample, so the same unlucky
//!   devices are not the canaries of everything.
//!
//! Membership depends on the cohort's population, which is why the population should be
//! every matched device, online or not: a device going offline must not change how many
//! canaries a cohort has. When devices join or leave a cohort, at most one member per joining
//! or leaving device changes.
//!
//! Which devices fill those places also weighs [`Tier`]: devices that already hold the target
//! come first (a canary stays a canary while it is offline), then online devices, then offline
//! ones. An offline device is skipped rather than waited for, so a cohort whose first-ranked
//! device is partitioned still gets a canary that can report.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_protocol::wire::DeviceId;
use sha2::{Digest, Sha256};

use crate::cohort::CohortKey;

/// The device's position for this deployment: the first 64 bits of
/// `sha256(uid || 0x00 || device id)`, big-endian. The separator keeps `("ab", "c")` and
/// `("a", "bc")` apart. Changing this function reshuffles the canaries of running rollouts.
pub fn position(uid: &str, device: &DeviceId) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(uid.as_bytes());
    hasher.update([0u8]);
    hasher.update(device.as_str().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// [`position`] mapped to `[0, 1)`, for humans and histograms.
pub fn membership_hash(uid: &str, device: &DeviceId) -> f64 {
    // The top 53 bits convert to f64 exactly, so the result is strictly below 1.
    (position(uid, device) >> 11) as f64 / (1u64 << 53) as f64
}

/// How many of `n` devices a step of `percent` takes: `ceil(percent × n / 100)`, capped at `n`.
pub fn canary_count(percent: u32, n: usize) -> usize {
    let percent = u64::from(percent.min(100));
    let n64 = n as u64;
    (percent * n64).div_ceil(100) as usize
}

/// How suitable a device is to fill a canary place right now, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Already holds the target variant: keeping it a canary changes nothing on the device.
    HoldsTarget,
    Online,
    /// Cannot download or report now; picked only when too few others exist.
    Offline,
}

/// The canaries of a step at `percent`, over cohorts of (class, target variant), every device
/// equally suitable.
pub fn canary_members(
    uid: &str,
    percent: u32,
    cohorts: &BTreeMap<CohortKey, Vec<DeviceId>>,
) -> BTreeSet<DeviceId> {
    canary_members_by_tier(uid, percent, cohorts, |_| Tier::Online)
}

/// The canaries of a step at `percent`: per cohort, `canary_count` devices taken by
/// ([`Tier`], position).
pub fn canary_members_by_tier(
    uid: &str,
    percent: u32,
    cohorts: &BTreeMap<CohortKey, Vec<DeviceId>>,
    tier: impl Fn(&DeviceId) -> Tier,
) -> BTreeSet<DeviceId> {
    let mut members = BTreeSet::new();
    for devices in cohorts.values() {
        let mut ranked: Vec<(Tier, u64, &DeviceId)> = devices
            .iter()
            .map(|d| (tier(d), position(uid, d), d))
            .collect();
        // The id breaks (astronomically unlikely) ties, so the order is total.
        ranked.sort();
        ranked.dedup();
        let take = canary_count(percent, ranked.len());
        members.extend(ranked.into_iter().take(take).map(|(_, _, d)| d.clone()));
    }
    members
}

#[cfg(test)]
mod tests;
