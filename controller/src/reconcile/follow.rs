//! Step 3, when the last pass planned from the same specs and stage: its plan and records
//! brought up to date with the devices that changed since, read from the inventory's change
//! log. A pass then costs what changed (the rows of the devices that reported, a check per
//! device whose installed digests moved) instead of a plan, a read and a write of the whole
//! fleet. Anything the log cannot vouch for (a device announcing new facts, a row another
//! writer changed, a log that no longer reaches back) returns `None`: the caller does the full
//! pass.

use std::collections::BTreeSet;
use std::sync::Arc;

use edgefleet_core::AssignmentRecord;
use edgefleet_core::plan::follow_installed;
use edgefleet_core::rollout::RolloutState;
use edgefleet_core::site::site_caches;
use edgefleet_protocol::wire::DeviceId;

use super::carry::{Carried, Planned};
use super::{DeploymentInput, ReconcileError, Reconciler, Records};
use crate::inventory::ChangeKind;

impl Reconciler {
    /// `carried` up to date with the fleet, and the change-log position it is now up to
    /// date with; `None` when only a full pass can tell.
    pub(super) async fn follow(
        &self,
        input: &DeploymentInput<'_>,
        pinned: &RolloutState,
        carried: Carried,
        now_ms: i64,
    ) -> Result<Option<(Planned, u64)>, ReconcileError> {
        let inventory = &self.fleet.inventory;
        let Some((changes, position)) = inventory.changes_since(carried.position) else {
            return Ok(None);
        };
        let mut planned = carried.planned;
        if changes.is_empty() {
            return Ok(Some((planned, position)));
        }
        let mut reported: BTreeSet<&DeviceId> = BTreeSet::new();
        let mut installed: BTreeSet<&DeviceId> = BTreeSet::new();
        for change in &changes {
            match change.kind {
                ChangeKind::Presence => return Ok(None),
                ChangeKind::Reported { installed: moved } => {
                    reported.insert(&change.device);
                    if moved {
                        installed.insert(&change.device);
                    }
                }
            }
        }
        if !installed.is_empty() {
            let Some(devices) = inventory.devices_of(installed) else {
                return Ok(None);
            };
            let plan = Arc::make_mut(&mut planned.plan);
            let stands = follow_installed(
                plan,
                &pinned.target,
                pinned.previous.as_ref(),
                pinned.stage,
                &pinned.demotions,
                &devices,
            );
            if !stands {
                return Ok(None);
            }
        }
        let ids: Vec<&str> = reported.iter().map(|id| id.as_str()).collect();
        let store = &self.fleet.store;
        // one pass over every row costs less than looking a quarter of them up by id
        let rows = if ids.len().saturating_mul(4) > planned.records.len() {
            store.assignments(input.namespace, input.name).await?
        } else {
            store
                .assignments_of(input.namespace, input.name, &ids)
                .await?
        };
        let records: &mut Records = Arc::make_mut(&mut planned.records);
        if !patch_reports(records, &ids, &rows) {
            return Ok(None);
        }
        if planned.held_back > 0 {
            // a switch that completed frees a place for a replacement that waits
            let devices = inventory.snapshot();
            let caches = site_caches(&devices, &self.distribution.site_label);
            drop(devices);
            let old = Arc::unwrap_or_clone(planned.records);
            let (records, held_back) = self
                .apply_over(input, &planned.plan, &caches, old, now_ms)
                .await?;
            planned.records = Arc::new(records);
            planned.held_back = held_back;
        }
        Ok(Some((planned, position)))
    }
}

/// Copies what `devices` last reported from their re-read `rows` into `records` (both sorted
/// by device id). `false` when a row is not the one the records hold (written, added or
/// deleted by someone else since): then the records are no longer the deployment's.
fn patch_reports(
    records: &mut [AssignmentRecord],
    devices: &[&str],
    rows: &[AssignmentRecord],
) -> bool {
    let find = |records: &[AssignmentRecord], device: &str| {
        records
            .binary_search_by(|r| r.device_id.as_str().cmp(device))
            .ok()
    };
    for device in devices {
        match (find(records, device), find(rows, device)) {
            (None, None) => {}
            (Some(at), Some(row)) => {
                let (held, row) = (&mut records[at], &rows[row]);
                // the entry carries version, variant and role
                let same_row = held.generation == row.generation
                    && held.assignment == row.assignment
                    && held.reason == row.reason;
                if !same_row {
                    return false;
                }
                held.phase = row.phase;
                held.phase_reason.clone_from(&row.phase_reason);
                held.serving_sha256.clone_from(&row.serving_sha256);
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use edgefleet_core::testutil::record;
    use edgefleet_protocol::wire::{ModelPhase, Role};

    use super::*;

    fn rows(devices: &[&str], phase: Option<ModelPhase>) -> Vec<AssignmentRecord> {
        devices
            .iter()
            .map(|d| record(d, "2", Role::Canary, phase))
            .collect()
    }

    #[test]
    fn reports_of_the_same_rows_are_copied_and_nothing_else() {
        let mut records = rows(&["a", "b", "c"], None);
        let mut reread = rows(&["b"], Some(ModelPhase::Ready));
        reread[0].serving_sha256 = Some("d".repeat(64));
        assert!(patch_reports(&mut records, &["b", "zz"], &reread));
        assert_eq!(records[1].phase, Some(ModelPhase::Ready));
        assert_eq!(records[1].serving_sha256, reread[0].serving_sha256);
        assert_eq!(records[0].phase, None, "a did not report");
        assert_eq!(records[2].phase, None);
    }

    #[test]
    fn a_row_written_added_or_deleted_by_another_writer_means_a_full_pass() {
        let records = rows(&["a", "b"], None);
        let rewritten = vec![record("b", "3", Role::Canary, Some(ModelPhase::Ready))];
        let added = rows(&["c"], None);
        for (devices, reread) in [(&["b"][..], rewritten), (&["c"], added), (&["a"], vec![])] {
            let mut held = records.clone();
            assert!(!patch_reports(&mut held, devices, &reread), "{devices:?}");
        }
    }
}
