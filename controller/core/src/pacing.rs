//! `maxUnavailablePercent`: how many devices may be switching models at once. A device is
//! switching from the moment it is told to replace its model until it reports the new one
//! Ready. Devices that run nothing of the deployment yet (first install), offline devices and
//! devices whose switch failed (they keep serving their previous model) do not count.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_protocol::wire::Role;

use crate::assignment::AssignmentRecord;

/// How many devices may be switching at once for `matched` devices: at least one.
pub fn budget(max_unavailable_percent: u32, matched: u32) -> usize {
    (u64::from(max_unavailable_percent.min(100)) * u64::from(matched))
        .div_ceil(100)
        .max(1) as usize
}

/// The rows to write, and how many of the planned replacements wait.
#[derive(Debug)]
pub struct Paced {
    pub rows: Vec<AssignmentRecord>,
    /// Replacements kept at their current row for now: while any wait, a device finishing
    /// its switch changes what to write.
    pub held_back: usize,
}

/// The rows to write: `planned`, except that replacements beyond the budget keep their
/// current row until earlier switches complete. Canaries go first, then by device id.
pub fn pace(
    current: &[AssignmentRecord],
    planned: Vec<AssignmentRecord>,
    online: &BTreeSet<&str>,
    budget: usize,
) -> Paced {
    let current: BTreeMap<&str, &AssignmentRecord> =
        current.iter().map(|r| (r.device_id.as_str(), r)).collect();
    let switching = |row: &AssignmentRecord| {
        online.contains(row.device_id.as_str()) && !(row.is_ready() || row.is_failed())
    };
    let planned_assignments: BTreeMap<&str, _> = planned
        .iter()
        .map(|p| (p.device_id.as_str(), &p.assignment))
        .collect();
    let mut in_flight = current
        .values()
        .filter(|row| switching(row))
        .filter(|row| planned_assignments.get(row.device_id.as_str()) == Some(&&row.assignment))
        .count();

    let mut order: Vec<usize> = (0..planned.len()).collect();
    let order_key = |i: usize| {
        (
            planned[i].role() != Role::Canary,
            planned[i].device_id.as_str(),
        )
    };
    order.sort_by(|&a, &b| order_key(a).cmp(&order_key(b)));
    let mut keep_current = BTreeSet::new();
    for i in order {
        let row = &planned[i];
        let Some(old) = current.get(row.device_id.as_str()) else {
            continue; // first install: nothing is taken away from the device
        };
        if old.assignment == row.assignment || !online.contains(row.device_id.as_str()) {
            continue;
        }
        if in_flight < budget {
            in_flight += 1;
        } else {
            keep_current.insert(row.device_id.as_str());
        }
    }
    let keep_current: BTreeSet<String> = keep_current.into_iter().map(str::to_string).collect();
    let rows = planned
        .into_iter()
        .map(|row| match current.get(row.device_id.as_str()) {
            Some(old) if keep_current.contains(&row.device_id) => (*old).clone(),
            _ => row,
        })
        .collect();
    Paced {
        rows,
        held_back: keep_current.len(),
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_protocol::wire::ModelPhase;

    use super::*;
    use crate::testutil::record;

    fn row(device: &str, version: &str, role: &str, phase: Option<&str>) -> AssignmentRecord {
        let role = Role::parse(role).expect("test role");
        record(device, version, role, phase.and_then(ModelPhase::parse))
    }

    fn versions(rows: &[AssignmentRecord]) -> Vec<&str> {
        rows.iter()
            .map(|r| r.assignment.model.version.as_str())
            .collect()
    }

    fn online<'a>(ids: &[&'a str]) -> BTreeSet<&'a str> {
        ids.iter().copied().collect()
    }

    #[test]
    fn budget_rounds_up_and_is_at_least_one() {
        assert_eq!(budget(25, 10), 3);
        assert_eq!(budget(25, 1), 1);
        assert_eq!(budget(1, 0), 1);
        assert_eq!(budget(100, 7), 7);
    }

    #[test]
    fn replacements_beyond_the_budget_wait_canaries_first() {
        let current: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|d| row(d, "v1", "stable", Some("Ready")))
            .collect();
        let planned = vec![
            row("a", "v2", "stable", None),
            row("b", "v2", "stable", None),
            row("c", "v2", "canary", None),
            row("d", "v1", "stable", None),
        ];
        let paced = pace(&current, planned, &online(&["a", "b", "c", "d"]), 2);
        assert_eq!(
            versions(&paced.rows),
            ["v2", "v1", "v2", "v1"],
            "the canary c and then a switch; b waits"
        );
        assert_eq!(paced.held_back, 1);
    }

    #[test]
    fn devices_still_switching_use_the_budget() {
        let current = vec![
            row("a", "v2", "stable", Some("Downloading")),
            row("b", "v1", "stable", Some("Ready")),
        ];
        let planned = vec![
            row("a", "v2", "stable", None),
            row("b", "v2", "stable", None),
        ];
        let paced = pace(&current, planned.clone(), &online(&["a", "b"]), 1);
        assert_eq!(versions(&paced.rows)[1], "v1", "b waits for a");
        assert_eq!(paced.held_back, 1);
        // once a is ready, b may go
        let current = vec![
            row("a", "v2", "stable", Some("Ready")),
            row("b", "v1", "stable", Some("Ready")),
        ];
        let paced = pace(&current, planned, &online(&["a", "b"]), 1);
        assert_eq!(versions(&paced.rows)[1], "v2");
        assert_eq!(paced.held_back, 0);
    }

    #[test]
    fn offline_failed_and_new_devices_never_block() {
        let current = vec![
            row("off", "v2", "stable", Some("Downloading")),
            row("bad", "v2", "stable", Some("Failed")),
            row("b", "v1", "stable", Some("Ready")),
        ];
        let planned = vec![
            row("off", "v2", "stable", None),
            row("bad", "v2", "stable", None),
            row("b", "v2", "stable", None),
            row("new", "v2", "stable", None),
        ];
        let paced = pace(&current, planned, &online(&["bad", "b", "new"]), 1);
        assert_eq!(versions(&paced.rows), ["v2", "v2", "v2", "v2"]);
        assert_eq!(paced.held_back, 0);
    }
}
