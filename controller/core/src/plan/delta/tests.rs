use std::collections::BTreeSet;
use std::sync::Arc;

use edgefleet_crds::{ModelDeploymentSpec, Precision};
use edgefleet_protocol::wire::Role;

use super::*;
use crate::plan::plan_rollout;
use crate::testutil::{device, spec, variant};

const UID: &str = "5f1c9a2e-0d3b-4c6a-8e7f-1a2b3c4d5e6f";

/// 1.0.0 ships fp32; 2.0.0 ships fp16 (needs 2 GiB memory) and int8. Every variant keeps
/// 100 MiB free beside its 1 MiB artifact.
fn specs() -> (ModelDeploymentSpec, ModelDeploymentSpec) {
    let reserve = |mut v: edgefleet_crds::Variant| {
        v.requires.min_free_disk_mib = 100;
        v
    };
    let previous = spec(
        "1.0.0",
        vec![reserve(variant("fp32", Precision::Fp32, None))],
    );
    let mut fp16 = reserve(variant("fp16", Precision::Fp16, Some(0.001)));
    fp16.requires.min_memory_mib = 2048;
    let target = spec(
        "2.0.0",
        vec![fp16, reserve(variant("int8", Precision::Int8, Some(0.01)))],
    );
    (target, previous)
}

/// 60 devices, half with 8 GiB; every fifth has exactly the reserve free, so an artifact
/// fits it only once it is installed.
fn fleet() -> Vec<DeviceFacts> {
    (0..60)
        .map(|i| {
            let mut d = device(&format!("dev-{i:02}"));
            if i % 2 == 1 {
                d.memory_total_mib = 8192;
            }
            if i % 5 == 0 {
                d.disk_free_mib = 100;
            }
            d
        })
        .collect()
}

const STAGES: [Stage; 4] = [
    Stage::Canary { step: 0 },
    Stage::Canary { step: 1 },
    Stage::Promoted,
    Stage::RolledBack,
];

fn plan_of(stage: Stage, devices: &[DeviceFacts]) -> RolloutPlan {
    let (target, previous) = specs();
    plan_rollout(
        UID,
        &target,
        Some(&previous),
        stage,
        devices,
        &BTreeSet::new(),
    )
}

/// Applies `install` to the devices it picks, then checks `follow_installed` against a plan
/// made from scratch: when it says the plan stands, the plan must equal the fresh one.
/// Returns its answer.
fn check(stage: Stage, pick: impl Fn(&DeviceFacts, &RolloutPlan) -> Option<String>) -> bool {
    let (target, previous) = specs();
    let before = fleet();
    let mut plan = plan_of(stage, &before);
    let mut after = before.clone();
    let mut changed = Vec::new();
    for device in &mut after {
        if let Some(digest) = pick(device, &plan) {
            Arc::make_mut(&mut device.installed_sha256).insert(digest);
            changed.push(device.clone());
        }
    }
    assert!(!changed.is_empty(), "the scenario changes someone");
    let holds = follow_installed(
        &mut plan,
        &target,
        Some(&previous),
        stage,
        &BTreeSet::new(),
        &changed,
    );
    if holds {
        assert_eq!(
            plan,
            plan_of(stage, &after),
            "{stage:?}: the plan said to stand"
        );
    }
    holds
}

fn assigned_digest(device: &DeviceFacts, plan: &RolloutPlan) -> Option<(Role, String)> {
    let planned = plan.device(&device.id)?.assignment.as_ref()?;
    Some((planned.role, planned.variant.artifact.sha256.clone()))
}

#[test]
fn devices_installing_what_they_were_assigned_leave_the_plan_standing() {
    for stage in STAGES {
        let holds = check(stage, |device, plan| {
            assigned_digest(device, plan).map(|(_, digest)| digest)
        });
        assert!(holds, "{stage:?}");
    }
}

#[test]
fn a_device_that_is_not_a_canary_gaining_the_target_is_planned_again() {
    let (target, _) = specs();
    let int8 = target.variants[1].artifact.sha256.clone();
    // small stable devices get int8 as their target; holding it would move them up the ranking
    let holds = check(Stage::Canary { step: 0 }, |device, plan| {
        let (role, _) = assigned_digest(device, plan)?;
        (role == Role::Stable && device.memory_total_mib == 1024 && device.disk_free_mib > 100)
            .then(|| int8.clone())
    });
    assert!(!holds);
}

#[test]
fn an_install_that_changes_what_fits_is_planned_again() {
    let (target, _) = specs();
    let int8 = target.variants[1].artifact.sha256.clone();
    // devices with only the reserve free fit nothing until int8 is on them
    for stage in [Stage::Promoted, Stage::Canary { step: 1 }] {
        let holds = check(stage, |device, _| {
            (device.disk_free_mib == 100).then(|| int8.clone())
        });
        assert!(!holds, "{stage:?}");
    }
}

#[test]
fn digests_of_no_variant_change_nothing() {
    for stage in STAGES {
        assert!(
            check(stage, |_, _| Some(format!("{:0>64}", "ab"))),
            "{stage:?}"
        );
    }
}

#[test]
fn a_device_outside_the_plan_that_now_matches_is_planned_again() {
    let (target, previous) = specs();
    let mut plan = plan_of(Stage::Promoted, &fleet());
    let mut stranger = device("dev-new");
    Arc::make_mut(&mut stranger.installed_sha256).insert("x".repeat(64));
    assert!(!follow_installed(
        &mut plan,
        &target,
        Some(&previous),
        Stage::Promoted,
        &BTreeSet::new(),
        &[stranger],
    ));
}
