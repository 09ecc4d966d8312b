use std::collections::BTreeSet;

use edgefleet_crds::{
    DeviceSelector, ModelDeploymentSpec, Precision, SelectorOperator, SelectorRequirement,
};
use edgefleet_protocol::wire::Role;

use super::*;
use crate::canary::canary_members;
use crate::device::DeviceFacts;
use crate::testutil::{device, id, spec, variant};

const UID: &str = "0b6f3d52-5d0e-4f7e-9a55-3a1d2c4b5e6f";

/// 1.0.0 ships fp32 only; 2.0.0 ships fp16 (needs 2 GiB) and int8.
fn specs() -> (ModelDeploymentSpec, ModelDeploymentSpec) {
    let previous = spec("1.0.0", vec![variant("fp32", Precision::Fp32, None)]);
    let mut fp16 = variant("fp16", Precision::Fp16, Some(0.001));
    fp16.requires.min_memory_mib = 2048;
    let target = spec(
        "2.0.0",
        vec![fp16, variant("int8", Precision::Int8, Some(0.01))],
    );
    (target, previous)
}

/// 20 small (1 GiB) and 20 large (8 GiB) devices.
fn fleet() -> Vec<DeviceFacts> {
    (0..40)
        .map(|i| {
            let mut d = device(&format!("dev-{i:02}"));
            if i % 2 == 1 {
                d.memory_total_mib = 8192;
            }
            d
        })
        .collect()
}

const SMALL: &str = "aarch64-none-mem1g";
const LARGE: &str = "aarch64-none-memgt4g";

fn no_demotions() -> BTreeSet<CohortKey> {
    BTreeSet::new()
}

/// The first canary step (10 %) of `specs()` over `fleet()`.
fn first_step_of_fleet(demotions: &BTreeSet<CohortKey>) -> RolloutPlan {
    let (target, previous) = specs();
    plan_rollout(
        UID,
        &target,
        Some(&previous),
        Stage::Canary { step: 0 },
        &fleet(),
        demotions,
    )
}

fn canary_ids(plan: &RolloutPlan) -> BTreeSet<DeviceId> {
    plan.devices
        .iter()
        .filter(|d| {
            d.assignment
                .as_ref()
                .is_some_and(|a| a.role == Role::Canary)
        })
        .map(|d| d.device.clone())
        .collect()
}

fn assignment(plan: &RolloutPlan, name: &str) -> Arc<PlannedAssignment> {
    plan.device(&id(name))
        .and_then(|d| d.assignment.clone())
        .unwrap_or_else(|| panic!("{name} has no assignment"))
}

#[test]
fn a_first_deployment_goes_straight_to_stable() {
    let (target, _) = specs();
    let mut devices = fleet();
    devices[0].runtimes.clear(); // fits nothing
    let plan = plan_rollout(
        UID,
        &target,
        None,
        Stage::Canary { step: 0 },
        &devices,
        &no_demotions(),
    );
    assert_eq!(
        plan.counts,
        PlanCounts {
            matched: 40,
            assigned: 39,
            canary: 0,
            stable: 39,
            no_fit: 1,
            demoted: 0,
            kept_previous: 0,
            unassigned: 1,
            offline: 0,
        }
    );
    let small = assignment(&plan, "dev-02");
    assert_eq!((small.source, small.role), (Source::Target, Role::Stable));
    assert_eq!(small.variant.name, "int8");
    assert_eq!(assignment(&plan, "dev-01").variant.name, "fp16");
    let first = plan.device(&id("dev-01")).map(|d| d.reason.clone());
    assert_eq!(
        first.as_deref(),
        Some("first deployment: runs 2.0.0 directly")
    );
    assert_eq!(
        plan.device(&id("dev-00")).map(|d| &*d.reason),
        Some("no variant of 2.0.0 fits")
    );
    assert_eq!(
        plan.target_variants,
        BTreeMap::from([("fp16".into(), 20), ("int8".into(), 19)])
    );
}

#[test]
fn a_canary_step_puts_a_share_of_each_cohort_on_the_target() {
    let plan = first_step_of_fleet(&no_demotions());
    // 10% of 20 in each of the two cohorts.
    assert_eq!(plan.counts.canary, 4);
    assert_eq!(plan.counts.stable, 36);
    let cohorts = plan.canary_cohorts();
    assert_eq!(
        cohorts.keys().map(|k| (*k).clone()).collect::<Vec<_>>(),
        [CohortKey::new(SMALL, "int8"), CohortKey::new(LARGE, "fp16")]
    );
    assert!(cohorts.values().all(|devices| devices.len() == 2));
    for d in &plan.devices {
        let a = d.assignment.as_ref().expect("everyone runs something");
        match a.role {
            Role::Canary => {
                assert_eq!(a.source, Source::Target);
                assert_eq!(a.model.version, "2.0.0");
                assert_eq!(&*d.reason, "canary for 2.0.0 at step 1 (10%)");
            }
            Role::Stable => {
                assert_eq!(a.source, Source::Previous);
                assert_eq!(a.variant.name, "fp32");
                assert_eq!(&*d.reason, "not a canary yet for 2.0.0; keeps 1.0.0");
            }
        }
    }
    assert_eq!(
        plan.stable_liveness()[SMALL],
        Liveness {
            online: 18,
            total: 18
        }
    );
    assert_eq!(plan.target_variants.values().sum::<u32>(), 4);
}

#[test]
fn stable_liveness_counts_the_offline_stable_devices_of_the_class_only() {
    let (target, previous) = specs();
    let mut devices = fleet();
    // Two small devices offline (canaries are picked among online devices first).
    devices[0].online = false;
    devices[2].online = false;
    let plan = plan_rollout(
        UID,
        &target,
        Some(&previous),
        Stage::Canary { step: 0 },
        &devices,
        &no_demotions(),
    );
    let small = plan.stable_liveness()[SMALL];
    assert_eq!((small.online, small.total), (16, 18));
    assert_eq!(plan.stable_liveness()[LARGE].online, 18);
    assert_eq!(
        plan.stable_liveness().get("x86_64-none-mem1g").copied(),
        None
    );
}

#[test]
fn the_plan_picks_the_same_canaries_as_canary_members() {
    let (target, previous) = specs();
    let devices = fleet();
    let plan = plan_rollout(
        UID,
        &target,
        Some(&previous),
        Stage::Canary { step: 1 },
        &devices,
        &no_demotions(),
    );
    let population = group_by_cohort(plan.devices.iter().filter_map(|d| {
        Some((
            CohortKey::new(&*d.device_class, d.target.variant_name()?),
            d.device.clone(),
        ))
    }));
    assert_eq!(canary_ids(&plan), canary_members(UID, 50, &population));
}

#[test]
fn canaries_only_grow_from_step_to_step_and_ignore_input_order() {
    let (target, previous) = specs();
    let devices = fleet();
    let mut reversed = devices.clone();
    reversed.reverse();
    reversed.push(devices[3].clone()); // a duplicate report changes nothing
    let at = |step, devices: &[DeviceFacts]| {
        canary_ids(&plan_rollout(
            UID,
            &target,
            Some(&previous),
            Stage::Canary { step },
            devices,
            &no_demotions(),
        ))
    };
    let first = at(0, &devices);
    let second = at(1, &devices);
    assert!(first.is_subset(&second));
    assert_eq!(second.len(), 20);
    assert_eq!(first, at(0, &reversed));
}

/// The plan of 2.0.0's first canary step.
fn first_step(
    target: &ModelDeploymentSpec,
    previous: &ModelDeploymentSpec,
    devices: &[DeviceFacts],
) -> RolloutPlan {
    plan_rollout(
        UID,
        target,
        Some(previous),
        Stage::Canary { step: 0 },
        devices,
        &no_demotions(),
    )
}

/// The target variant's artifact digest for `device` in `plan`.
fn target_sha256(target: &ModelDeploymentSpec, plan: &RolloutPlan, device: &DeviceId) -> String {
    let name = plan
        .device(device)
        .expect("present")
        .target
        .variant_name()
        .expect("present");
    let variant = target
        .variants
        .iter()
        .find(|v| v.name == name)
        .expect("present");
    variant.artifact.sha256.clone()
}

#[test]
fn canaries_that_hold_the_target_stay_canaries_while_offline() {
    let (target, previous) = specs();
    let mut devices = fleet();
    let plan = |devices: &[DeviceFacts]| first_step(&target, &previous, devices);
    let first = plan(&devices);
    let before = canary_ids(&first);
    for d in devices.iter_mut() {
        if before.contains(&d.id) {
            let sha256 = target_sha256(&target, &first, &d.id);
            Arc::make_mut(&mut d.installed_sha256).insert(sha256);
        }
    }
    for d in devices.iter_mut().step_by(3) {
        d.online = false;
    }
    let after = plan(&devices);
    assert!(
        before
            .iter()
            .any(|c| !after.device(c).expect("planned").online),
        "the test should take a canary offline"
    );
    assert_eq!(before, canary_ids(&after));
    assert_eq!(after.counts.offline, 14);
}

#[test]
fn a_canary_offline_before_it_got_the_target_is_replaced_by_an_online_device() {
    let (target, previous) = specs();
    let mut devices = fleet();
    let plan = |devices: &[DeviceFacts]| first_step(&target, &previous, devices);
    let before = canary_ids(&plan(&devices));
    let gone = before.iter().next().expect("present").clone();
    devices
        .iter_mut()
        .find(|d| d.id == gone)
        .expect("present")
        .online = false;
    let after = plan(&devices);
    let now = canary_ids(&after);
    assert!(
        !now.contains(&gone),
        "an unreachable canary is not waited for"
    );
    assert_eq!(now.len(), before.len(), "the cohort keeps its canary count");
    assert_eq!(
        before.difference(&now).count(),
        1,
        "only the offline one changes"
    );
    let substitute = now.difference(&before).next().expect("present");
    let plan_of = |d: &DeviceId| after.device(d).expect("present");
    assert!(plan_of(substitute).online);
    assert_eq!(plan_of(substitute).cohort().expect("present").key, {
        let gone = plan_of(&gone);
        CohortKey::new(
            &*gone.device_class,
            gone.target.variant_name().expect("present"),
        )
    });

    // Back before the substitute installed anything: the original ranking returns.
    devices
        .iter_mut()
        .find(|d| d.id == gone)
        .expect("present")
        .online = true;
    assert_eq!(canary_ids(&plan(&devices)), before);
}

#[test]
fn past_the_last_step_is_promotion() {
    let (target, previous) = specs();
    let devices = fleet();
    for stage in [Stage::Promoted, Stage::Canary { step: 2 }] {
        let plan = plan_rollout(
            UID,
            &target,
            Some(&previous),
            stage,
            &devices,
            &no_demotions(),
        );
        assert_eq!(plan.counts.stable, 40);
        assert!(plan.devices.iter().all(|d| {
            &*d.reason == "promoted to 2.0.0"
                && d.assignment
                    .as_ref()
                    .is_some_and(|a| a.source == Source::Target)
        }));
    }
}

#[test]
fn rollback_returns_everyone_to_the_previous_spec_and_its_selector() {
    let (mut target, mut previous) = specs();
    previous
        .selector
        .match_labels
        .insert("tier".into(), "cam".into());
    target.selector = DeviceSelector::default();
    let mut devices = fleet();
    for d in devices.iter_mut().take(10) {
        Arc::make_mut(&mut d.labels).insert("tier".into(), "cam".into());
    }
    let plan = plan_rollout(
        UID,
        &target,
        Some(&previous),
        Stage::RolledBack,
        &devices,
        &no_demotions(),
    );
    assert_eq!(plan.counts.matched, 10);
    assert!(plan.devices.iter().all(|d| {
        &*d.reason == "rolled back; keeps 1.0.0"
            && d.assignment
                .as_ref()
                .is_some_and(|a| a.source == Source::Previous && a.role == Role::Stable)
    }));
    let none = plan_rollout(
        UID,
        &target,
        None,
        Stage::RolledBack,
        &devices,
        &no_demotions(),
    );
    assert_eq!(none.counts.unassigned, 40);
}

#[test]
fn a_device_the_previous_spec_does_not_serve_waits_for_the_rollout() {
    let (target, mut previous) = specs();
    previous
        .selector
        .match_expressions
        .push(SelectorRequirement {
            key: "legacy".into(),
            operator: SelectorOperator::DoesNotExist,
            values: vec![],
        });
    let mut devices = fleet();
    for d in devices.iter_mut() {
        Arc::make_mut(&mut d.labels).insert("legacy".into(), "no".into());
    }
    let canaries = {
        let plan = plan_rollout(
            UID,
            &target,
            Some(&previous),
            Stage::Canary { step: 0 },
            &devices,
            &no_demotions(),
        );
        assert_eq!(plan.counts.unassigned, 36);
        let waiting = plan
            .devices
            .iter()
            .find(|d| d.assignment.is_none())
            .map(|d| d.reason.clone());
        assert_eq!(
            waiting.as_deref(),
            Some("not a canary yet for 2.0.0; 1.0.0 did not select it")
        );
        canary_ids(&plan)
    };
    assert_eq!(canaries.len(), 4);
}

#[test]
fn demotion_moves_only_the_failing_class_to_its_next_best_variant() {
    let plan = first_step_of_fleet(&BTreeSet::from([CohortKey::new(LARGE, "fp16")]));
    let cohorts = plan.canary_cohorts();
    assert_eq!(
        cohorts.keys().map(|k| (*k).clone()).collect::<Vec<_>>(),
        [CohortKey::new(SMALL, "int8"), CohortKey::new(LARGE, "int8")]
    );
    let large = plan.device(&id("dev-01")).expect("planned");
    assert_eq!(large.target.variant_name(), Some("int8"));
    assert!(large.target.to_string().contains("fp16 was demoted"));
}

#[test]
fn a_class_with_every_variant_demoted_keeps_the_previous_version() {
    let (target, previous) = specs();
    let demoted = BTreeSet::from([CohortKey::new(SMALL, "int8")]);
    let plan = plan_rollout(
        UID,
        &target,
        Some(&previous),
        Stage::Canary { step: 1 },
        &fleet(),
        &demoted,
    );
    let small = plan.device(&id("dev-00")).expect("planned");
    assert_eq!(small.target.variant_name(), None);
    assert_eq!(small.demoted_from.as_deref(), Some("int8"));
    assert_eq!(
        &*small.reason,
        "2.0.0's int8 was demoted for aarch64-none-mem1g and no other variant fits; keeps 1.0.0"
    );
    assert_eq!(assignment(&plan, "dev-00").source, Source::Previous);
    assert_eq!(plan.counts.no_fit, 0, "demoted is not no-fit");
    assert_eq!(plan.counts.demoted, 20);
    assert_eq!(plan.counts.kept_previous, 20);
    assert_eq!(plan.counts.canary, 10);
    assert_eq!(plan.canary_cohorts().len(), 1);
}

/// The plan once the canary passed for the large class and the small class was demoted.
fn promoted_with(demoted: &BTreeSet<CohortKey>, devices: &[DeviceFacts]) -> RolloutPlan {
    let (target, previous) = specs();
    plan_rollout(
        UID,
        &target,
        Some(&previous),
        Stage::Promoted,
        devices,
        demoted,
    )
}

#[test]
fn promotion_keeps_the_previous_version_on_a_class_with_every_variant_demoted() {
    let demoted = BTreeSet::from([CohortKey::new(SMALL, "int8")]);
    let plan = promoted_with(&demoted, &fleet());
    // every device served before promotion, and every one still does
    assert_eq!(plan.counts.matched, 40);
    assert_eq!(plan.counts.assigned, 40);
    assert_eq!(plan.counts.unassigned, 0);
    assert_eq!(plan.counts.no_fit, 0);
    assert_eq!((plan.counts.demoted, plan.counts.kept_previous), (20, 20));
    let small = plan.device(&id("dev-00")).expect("planned");
    let kept = assignment(&plan, "dev-00");
    assert_eq!((kept.source, kept.role), (Source::Previous, Role::Stable));
    assert_eq!(
        (kept.model.version.as_str(), kept.variant.name.as_str()),
        ("1.0.0", "fp32")
    );
    assert_eq!(
        &*small.reason,
        "promoted to 2.0.0, but 2.0.0's int8 was demoted for aarch64-none-mem1g and no other \
         variant fits; keeps 1.0.0"
    );
    let large = assignment(&plan, "dev-01");
    assert_eq!(
        (large.source, large.variant.name.as_str()),
        (Source::Target, "fp16")
    );
    assert_eq!(plan.target_variants, BTreeMap::from([("fp16".into(), 20)]));
}

#[test]
fn promotion_gives_a_demoted_class_its_next_best_target_variant() {
    let demoted = BTreeSet::from([CohortKey::new(LARGE, "fp16")]);
    let plan = promoted_with(&demoted, &fleet());
    let large = assignment(&plan, "dev-01");
    assert_eq!(
        (large.source, large.variant.name.as_str()),
        (Source::Target, "int8")
    );
    assert_eq!(
        plan.device(&id("dev-01"))
            .and_then(|d| d.demoted_from.as_deref()),
        Some("fp16")
    );
    assert_eq!((plan.counts.demoted, plan.counts.kept_previous), (20, 0));
    assert_eq!(plan.counts.assigned, 40);
    assert_eq!(plan.target_variants, BTreeMap::from([("int8".into(), 40)]));
}

#[test]
fn promotion_still_leaves_a_device_nothing_fits_without_an_assignment() {
    let demoted = BTreeSet::from([CohortKey::new(SMALL, "int8")]);
    let mut devices = fleet();
    devices[1].runtimes.clear(); // a large device that fits no variant of either version
    let plan = promoted_with(&demoted, &devices);
    let nothing = plan.device(&id("dev-01")).expect("planned");
    assert!(nothing.assignment.is_none());
    assert_eq!(nothing.demoted_from, None);
    assert_eq!(plan.counts.no_fit, 1);
    assert_eq!(plan.counts.kept_previous, 20);
}

#[test]
fn unselected_devices_are_not_in_the_plan() {
    let (mut target, previous) = specs();
    target
        .selector
        .match_labels
        .insert("site".into(), "a".into());
    let mut devices = fleet();
    Arc::make_mut(&mut devices[5].labels).insert("site".into(), "a".into());
    let plan = plan_rollout(
        UID,
        &target,
        Some(&previous),
        Stage::Canary { step: 0 },
        &devices,
        &no_demotions(),
    );
    assert_eq!(plan.devices.len(), 1);
    assert_eq!(plan.counts.matched, 1);
    // A cohort of one gets its canary.
    assert_eq!(plan.counts.canary, 1);
}

#[test]
fn assignments_convert_to_the_wire_form() {
    let (target, _) = specs();
    let plan = plan_rollout(
        UID,
        &target,
        None,
        Stage::Promoted,
        &fleet(),
        &no_demotions(),
    );
    let planned = assignment(&plan, "dev-00");
    let wire = planned.to_wire("edge/vad");
    assert_eq!(wire.deployment, "edge/vad");
    assert_eq!(wire.model, target.model);
    assert_eq!(wire.variant, "int8");
    assert_eq!(wire.precision, Precision::Int8);
    assert_eq!(wire.runtime, planned.variant.runtime);
    assert_eq!(wire.artifact, planned.variant.artifact);
    assert_eq!(wire.role, Role::Stable);
    assert!(planned.variant_reason.contains("int8 fits"));
    let cohort = plan.device(&id("dev-00")).and_then(DevicePlan::cohort);
    assert_eq!(
        cohort.map(|c| c.to_string()).as_deref(),
        Some("aarch64-none-mem1g/int8 (stable)")
    );
}

#[test]
fn only_changes_to_what_devices_run_need_a_rollout() {
    let (target, previous) = specs();
    assert!(!needs_rollout(&target, None));
    assert!(needs_rollout(&target, Some(&previous)));
    let mut edited = target.clone();
    edited
        .selector
        .match_labels
        .insert("tier".into(), "x".into());
    edited.rollout.steps.clear();
    assert!(!needs_rollout(&edited, Some(&target)));
    edited.selection.min_accuracy = Some(0.9);
    assert!(needs_rollout(&edited, Some(&target)));
}

fn offload_policy(consent: bool) -> edgefleet_crds::OffloadPolicy {
    edgefleet_crds::OffloadPolicy {
        inputs_may_leave_device: consent,
        endpoint: edgefleet_crds::OffloadEndpoint {
            url: "http://cloud:8080".into(),
            model: "m".into(),
            protocol: Default::default(),
        },
        triggers: edgefleet_crds::OffloadTriggers {
            queue_depth_above: Some(4),
            ..Default::default()
        },
        rate_limit: Default::default(),
        timeout_ms: 500,
    }
}

#[test]
fn the_offload_policy_in_force_reaches_every_device_only_with_consent() {
    let (mut target, mut previous) = specs();
    previous.offload = Some(offload_policy(true));
    target.offload = None;
    let devices = fleet();
    let plan = |target: &ModelDeploymentSpec, previous: &ModelDeploymentSpec| {
        plan_rollout(
            UID,
            target,
            Some(previous),
            Stage::Canary { step: 0 },
            &devices,
            &no_demotions(),
        )
    };
    // Mid-rollout, devices still on 1.0.0 follow the CR as it is now: consent withdrawn.
    let withdrawn = plan(&target, &previous);
    assert!(withdrawn.devices.iter().any(|d| {
        d.assignment
            .as_ref()
            .is_some_and(|a| a.source == Source::Previous)
    }));
    assert!(
        withdrawn
            .devices
            .iter()
            .filter_map(|d| d.assignment.as_ref())
            .all(|a| a.offload.is_none())
    );

    target.offload = Some(offload_policy(true));
    let granted = plan(&target, &previous);
    let wire = assignment(&granted, "dev-00").to_wire("default/m");
    assert_eq!(wire.offload, target.offload);
    assert!(
        granted
            .devices
            .iter()
            .filter_map(|d| d.assignment.as_ref())
            .all(|a| a.offload == target.offload)
    );

    // A policy without consent never reaches a device, even if validation was bypassed.
    target.offload = Some(offload_policy(false));
    assert!(
        plan(&target, &previous)
            .devices
            .iter()
            .filter_map(|d| d.assignment.as_ref())
            .all(|a| a.offload.is_none())
    );
}

#[test]
fn devices_alike_share_one_assignment_class_and_reason() {
    let plan = first_step_of_fleet(&no_demotions());
    let stable_small: Vec<&DevicePlan> = plan
        .devices
        .iter()
        .filter(|d| &*d.device_class == SMALL)
        .filter(|d| {
            d.assignment
                .as_ref()
                .is_some_and(|a| a.role == Role::Stable)
        })
        .collect();
    assert_eq!(stable_small.len(), 18);
    let first = stable_small[0];
    let shared = |d: &DevicePlan| d.assignment.clone().expect("assigned");
    for d in &stable_small[1..] {
        assert!(Arc::ptr_eq(&shared(d), &shared(first)));
        assert!(Arc::ptr_eq(&d.reason, &first.reason));
        assert!(Arc::ptr_eq(&d.device_class, &first.device_class));
    }
    // a different role is a different assignment
    let canary = plan
        .devices
        .iter()
        .find(|d| &*d.device_class == SMALL && d.cohort().is_some_and(|c| c.role == Role::Canary))
        .expect("a small canary");
    assert_eq!(shared(canary).role, Role::Canary);
}
