use std::collections::{BTreeMap, BTreeSet};

use edgefleet_protocol::wire::DeviceId;
use proptest::prelude::*;

use super::*;
use crate::cohort::CohortKey;
use crate::testutil::id;

const UID: &str = "6f1c1f4e-8d2a-4a53-9a7e-1d1f0c1b2a3c";

/// 1000 devices in four cohorts of 400, 300, 200 and 100.
fn fleet() -> BTreeMap<CohortKey, Vec<DeviceId>> {
    let sizes = [("a", 400), ("b", 300), ("c", 200), ("d", 100)];
    sizes
        .iter()
        .map(|(class, n)| {
            let devices = (0..*n).map(|i| id(&format!("{class}-dev-{i}"))).collect();
            (CohortKey::new(*class, "int8"), devices)
        })
        .collect()
}

fn members_of(
    members: &BTreeSet<DeviceId>,
    cohorts: &BTreeMap<CohortKey, Vec<DeviceId>>,
    key: &CohortKey,
) -> usize {
    cohorts[key].iter().filter(|d| members.contains(*d)).count()
}

#[test]
fn count_is_the_ceiling_capped_at_the_cohort() {
    let cases = [
        (0, 10, 0),
        (10, 0, 0),
        (1, 1, 1),
        (10, 10, 1),
        (10, 11, 2),
        (25, 4, 1),
        (25, 5, 2),
        (50, 7, 4),
        (100, 7, 7),
        (250, 7, 7),
    ];
    for (percent, n, expected) in cases {
        assert_eq!(canary_count(percent, n), expected, "{percent}% of {n}");
    }
}

#[test]
fn the_position_function_is_pinned() {
    // Changing it would reshuffle the canaries of every running rollout on upgrade.
    let d = id("cam-0001");
    assert_eq!(position(UID, &d), position(UID, &id("cam-0001")));
    assert_eq!(format!("{:016x}", position(UID, &d)), PINNED);
    assert_ne!(position("ab", &id("c")), position("a", &id("bc")));
}

const PINNED: &str = "7bda5b63ee713917";

#[test]
fn hashes_lie_in_the_unit_interval_and_spread_evenly() {
    let mut below_tenth = 0;
    for i in 0..10_000 {
        let h = membership_hash(UID, &id(&format!("dev-{i}")));
        assert!((0.0..1.0).contains(&h));
        if h < 0.1 {
            below_tenth += 1;
        }
    }
    assert!((850..1150).contains(&below_tenth), "{below_tenth}");
}

#[test]
fn each_cohort_gets_its_share_of_a_thousand_devices() {
    let cohorts = fleet();
    for percent in [1, 5, 10, 33, 50, 99, 100] {
        let members = canary_members(UID, percent, &cohorts);
        let mut total = 0;
        for (key, devices) in &cohorts {
            let got = members_of(&members, &cohorts, key);
            assert_eq!(
                got,
                canary_count(percent, devices.len()),
                "{key} {percent}%"
            );
            total += got;
        }
        assert_eq!(members.len(), total);
        let share = total as f64 / 1000.0 * 100.0;
        assert!(share >= f64::from(percent) && share < f64::from(percent) + 0.5);
    }
}

#[test]
fn every_cohort_gets_a_canary_even_a_single_device() {
    let mut cohorts = fleet();
    cohorts.insert(CohortKey::new("rare", "fp32"), vec![id("lonely")]);
    let members = canary_members(UID, 1, &cohorts);
    for key in cohorts.keys() {
        assert!(members_of(&members, &cohorts, key) >= 1, "{key}");
    }
    assert!(members.contains(&id("lonely")));
    assert!(canary_members(UID, 0, &cohorts).is_empty());
}

#[test]
fn another_deployment_picks_an_independent_sample() {
    let cohorts = fleet();
    let a = canary_members(UID, 10, &cohorts);
    let b = canary_members("another-uid", 10, &cohorts);
    let overlap = a.intersection(&b).count();
    // Independent 10% samples of 1000 share about 10 devices.
    assert!(overlap < 40, "{overlap}");
}

#[test]
fn a_joining_device_displaces_at_most_one_canary() {
    let key = CohortKey::new("a", "int8");
    let mut cohorts = fleet();
    for i in 0..50 {
        let previous = canary_members(UID, 10, &cohorts);
        if let Some(devices) = cohorts.get_mut(&key) {
            devices.push(id(&format!("newcomer-{i}")));
        }
        let next = canary_members(UID, 10, &cohorts);
        assert!(previous.difference(&next).count() <= 1, "newcomer {i}");
    }
}

fn arb_cohorts() -> impl Strategy<Value = BTreeMap<CohortKey, Vec<DeviceId>>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["c1", "c2", "c3", "c4"]),
        prop::collection::btree_set("[a-z0-9]{1,12}", 1..60),
        1..4,
    )
    .prop_map(|cohorts| {
        cohorts
            .into_iter()
            .map(|(class, devices)| {
                let devices = devices
                    .into_iter()
                    .map(|d| id(&format!("{class}-{d}")))
                    .collect();
                (CohortKey::new(class, "v"), devices)
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn membership_is_monotonic_in_percent(
        cohorts in arb_cohorts(),
        uid in "[a-f0-9-]{8,36}",
        low in 0..=100u32,
        high in 0..=100u32,
    ) {
        let (low, high) = (low.min(high), low.max(high));
        let small = canary_members(&uid, low, &cohorts);
        let large = canary_members(&uid, high, &cohorts);
        prop_assert!(small.is_subset(&large));
    }

    #[test]
    fn membership_ignores_input_order_and_recomputation(
        cohorts in arb_cohorts(),
        uid in "[a-f0-9-]{8,36}",
        percent in 0..=100u32,
        rotate in 0..60usize,
    ) {
        let first = canary_members(&uid, percent, &cohorts);
        let reordered: BTreeMap<_, _> = cohorts
            .iter()
            .map(|(k, devices)| {
                let mut devices = devices.clone();
                devices.reverse();
                let by = rotate % devices.len();
                devices.rotate_left(by);
                (k.clone(), devices)
            })
            .collect();
        prop_assert_eq!(&first, &canary_members(&uid, percent, &reordered));
        prop_assert_eq!(&first, &canary_members(&uid, percent, &cohorts));
    }

    #[test]
    fn every_non_empty_cohort_gets_exactly_its_ceiling(
        cohorts in arb_cohorts(),
        percent in 1..=100u32,
    ) {
        let members = canary_members(UID, percent, &cohorts);
        for (key, devices) in &cohorts {
            let got = members_of(&members, &cohorts, key);
            prop_assert!(got >= 1);
            prop_assert_eq!(got, canary_count(percent, devices.len()));
        }
    }
}

#[test]
fn tiers_decide_before_positions_and_counts_stay_the_same() {
    let cohorts = fleet();
    let plain = canary_members(UID, 10, &cohorts);
    let offline: BTreeSet<DeviceId> = plain.iter().step_by(2).cloned().collect();
    let tiered = canary_members_by_tier(UID, 10, &cohorts, |d| {
        if offline.contains(d) {
            Tier::Offline
        } else {
            Tier::Online
        }
    });
    assert_eq!(tiered.len(), plain.len());
    assert!(tiered.is_disjoint(&offline));
    for key in cohorts.keys() {
        assert_eq!(
            members_of(&tiered, &cohorts, key),
            members_of(&plain, &cohorts, key)
        );
    }

    // Devices holding the target outrank everyone, even offline.
    let holder = cohorts[&CohortKey::new("d", "int8")]
        .iter()
        .find(|d| !plain.contains(*d))
        .expect("present")
        .clone();
    let with_holder = canary_members_by_tier(UID, 1, &cohorts, |d| {
        if *d == holder {
            Tier::HoldsTarget
        } else {
            Tier::Online
        }
    });
    assert!(with_holder.contains(&holder));

    // A cohort with only offline devices still gets its canary.
    let all_offline = canary_members_by_tier(UID, 10, &cohorts, |_| Tier::Offline);
    assert_eq!(all_offline, plain);
}
