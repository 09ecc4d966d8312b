use edgefleet_core::testutil::{device, record, spec, variant};
use edgefleet_crds::{
    CanaryStep, CohortStatus, Condition, DeviceCounts, ModelDeploymentStatus, Phase, Precision,
    Verdict,
};
use edgefleet_protocol::wire::{ModelPhase, Role};

use super::*;
use crate::standalone::page::history::LatencyHistory;

fn stored(
    name: &str,
    spec_json: String,
    status: Option<&ModelDeploymentStatus>,
) -> StoredDeployment {
    StoredDeployment {
        namespace: "default".into(),
        name: name.into(),
        uid: "u".into(),
        generation: 1,
        spec_json,
        status_json: status.map(|s| serde_json::to_string(s).expect("status json")),
        deleting: false,
    }
}

fn canary_status() -> ModelDeploymentStatus {
    ModelDeploymentStatus {
        phase: Phase::Progressing,
        target_version: Some("2.0.0".into()),
        current_step: 1,
        devices: DeviceCounts {
            matched: 3,
            ready: 1,
            no_fit: 1,
            ..Default::default()
        },
        cohorts: vec![CohortStatus {
            name: "aarch64-1g/int8".into(),
            devices: 1,
            verdict: Verdict::Pass,
            samples: 120,
            p95_latency_ms: Some(4.5),
            ..Default::default()
        }],
        conditions: vec![Condition {
            type_: "Progressing".into(),
            status: "True".into(),
            reason: "CanaryStep".into(),
            message: "step 1 of 2".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn shows_deployments_cohorts_with_their_history_devices_and_newest_events() {
    let mut canary_spec = spec("2.0.0", vec![variant("int8", Precision::Int8, None)]);
    let step = |percent| CanaryStep {
        percent,
        pause_seconds: 0,
    };
    canary_spec.rollout.steps = vec![step(34), step(67)];
    // A variant for x86_64 only: an aarch64 device gets none.
    let mut x86_only = variant("fp32", Precision::Fp32, None);
    x86_only.requires.arch = vec!["x86_64".into()];
    let other_spec = spec("1.0.0", vec![x86_only]);

    let status = canary_status();
    let mut downloading = record(
        "dev-b",
        "2.0.0",
        Role::Canary,
        Some(ModelPhase::Downloading),
    );
    downloading.reason = "canary member; int8: best fit".into();
    let mut ready = record("dev-a", "2.0.0", Role::Stable, Some(ModelPhase::Ready));
    ready.reason = "int8: fits 1024 MiB".into();
    let mut failed = record("dev-c", "2.0.0", Role::Stable, Some(ModelPhase::Failed));
    failed.reason = "int8: fits".into();
    failed.phase_reason = Some("sha256 mismatch".into());
    let deployments = vec![
        DeploymentInput {
            stored: stored(
                "cnn",
                serde_json::to_string(&canary_spec).expect("spec"),
                Some(&status),
            ),
            assignments: vec![ready, downloading, failed],
            history: vec![
                (1_000, "Created".into(), "v1".into()),
                (3_000, "StepPromoted".into(), "step 1".into()),
            ],
        },
        DeploymentInput {
            stored: stored(
                "x86-only",
                serde_json::to_string(&other_spec).expect("spec"),
                None,
            ),
            assignments: vec![],
            history: vec![(2_000, "Created".into(), "x86".into())],
        },
    ];
    let devices: Vec<DeviceInput> = ["dev-c", "dev-a", "dev-b"]
        .iter()
        .map(|id| DeviceInput {
            facts: device(id),
            downloads: if *id == "dev-b" {
                [(
                    "default/cnn".to_string(),
                    Progress {
                        done: 45,
                        total: 100,
                    },
                )]
                .into()
            } else {
                Default::default()
            },
        })
        .collect();
    let history = LatencyHistory::default();
    history.record("default/cnn", &status, 10);
    history.record("default/cnn", &status, 20);

    let view = build(&deployments, &devices, &history.snapshot(), 5_000);

    let cnn = &view.deployments[0];
    assert_eq!(
        (cnn.name.as_str(), cnn.phase.as_str()),
        ("default/cnn", "Progressing")
    );
    assert_eq!((cnn.step, cnn.steps, cnn.ready, cnn.matched), (1, 2, 1, 3));
    assert_eq!(cnn.conditions[0].reason, "CanaryStep");
    assert_eq!(cnn.cohorts[0].verdict, "Pass");
    assert_eq!(cnn.cohorts[0].p95_history, vec![(10, 4.5), (20, 4.5)]);
    assert_eq!(view.deployments[1].phase, "Pending", "no status yet");

    let ids: Vec<&str> = view.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["dev-a", "dev-b", "dev-c"], "sorted by id");
    let b = &view.devices[1].runs;
    assert_eq!(b[0].state, "Downloading");
    assert_eq!(b[0].progress.as_deref(), Some("45% of 0.0 MB"));
    assert_eq!(b[0].reason, "canary member; int8: best fit");
    assert_eq!(b[1].deployment, "default/x86-only");
    assert_eq!(b[1].state, "NoFit");
    assert!(
        b[1].reason.starts_with("no variant fits"),
        "{}",
        b[1].reason
    );
    assert!(b[1].reason.contains("x86_64"), "{}", b[1].reason);
    let c = &view.devices[2].runs[0];
    assert_eq!(c.state, "Failed");
    assert_eq!(
        c.reason, "sha256 mismatch (int8: fits)",
        "the device's error first"
    );

    let events: Vec<&str> = view.events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        events,
        ["StepPromoted", "Created", "Created"],
        "newest first"
    );
    assert_eq!(view.events[1].deployment, "default/x86-only");
    assert_eq!((view.devices_total, view.devices_online), (3, 3));
}

#[test]
fn large_fleets_are_capped_and_counted() {
    let devices: Vec<DeviceInput> = (0..MAX_DEVICES + 7)
        .map(|i| DeviceInput {
            facts: {
                let mut d = device(&format!("dev-{i:05}"));
                d.online = i % 2 == 0;
                d
            },
            downloads: Default::default(),
        })
        .collect();
    let view = build(&[], &devices, &Default::default(), 0);
    assert_eq!(view.devices.len(), MAX_DEVICES);
    assert_eq!(view.devices_total, MAX_DEVICES + 7);
    assert_eq!(view.devices_online, (MAX_DEVICES + 7).div_ceil(2));
    assert!(view.devices[0].runs.is_empty(), "not selected by anything");
}

#[test]
fn events_are_bounded_and_an_unreadable_spec_does_not_hide_the_rest() {
    let history: Vec<(i64, String, String)> = (0..MAX_EVENTS as i64 + 5)
        .map(|t| (t, format!("e{t}"), String::new()))
        .collect();
    let deployments = vec![DeploymentInput {
        stored: stored("broken", "{not json".into(), None),
        assignments: vec![],
        history,
    }];
    let view = build(&deployments, &[], &Default::default(), 0);
    assert_eq!(view.events.len(), MAX_EVENTS);
    assert_eq!(view.events[0].event, format!("e{}", MAX_EVENTS + 4));
    assert_eq!(view.deployments[0].steps, 0);
    assert_eq!(view.deployments[0].model, "");
}
