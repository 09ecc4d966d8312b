//! Telemetry shared by replicas through the fleet store: each window is counted once, by
//! whichever replica a shared subscription handed it to, and the leader's canary verdicts over
//! windows split between replicas (and delivered twice) are those of one replica that received
//! every window once.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::fleet::{RecordingPublisher, fleet_state_over, hello, ready_report};
use edgefleet_controller::ingest;
use edgefleet_controller::metrics::Metrics;
use edgefleet_controller::mqtt::DeviceMessage;
use edgefleet_controller::reconcile::{DeploymentInput, Reconciler};
use edgefleet_controller::store::{RollupCohort, RollupWrite, Store};
use edgefleet_controller::telemetry::Telemetry;
use edgefleet_core::analysis::CohortWindow;
use edgefleet_core::replay::Refusal;
use edgefleet_crds::{FailureAction, ModelDeploymentSpec, Phase};
use edgefleet_protocol::LatencyHistogram;
use edgefleet_protocol::wire::{
    Desired, DeviceId, ModelWindow, Role, Telemetry as TelemetryWindow,
};

/// int8 everywhere it fits, fp32 on the big x86 devices; a failing class is demoted.
fn spec(version: &str) -> ModelDeploymentSpec {
    let sha = |n: u8| format!("{n:02x}").repeat(32);
    let yaml = format!(
        r#"
model: {{name: vad, version: "{version}"}}
selector: {{matchLabels: {{site: lab}}}}
variants:
- name: fp32
  precision: fp32
  artifact: {{uri: "http://a/{version}/fp32", sha256: "{}", sizeBytes: 1000}}
  requires: {{arch: [x86_64], minMemoryMib: 2048}}
- name: int8
  precision: int8
  artifact: {{uri: "http://a/{version}/int8", sha256: "{}", sizeBytes: 300}}
  requires: {{minMemoryMib: 256}}
rollout:
  steps: [{{percent: 25}}, {{percent: 60}}]
  analysis: {{intervalSeconds: 1, minSamples: 20, failureThreshold: 2, maxP95LatencyMs: 50, stepTimeoutSeconds: 600}}
"#,
        sha(version.as_bytes()[0]),
        sha(version.as_bytes()[0] + 100),
    );
    let mut spec: ModelDeploymentSpec = serde_yaml::from_str(&yaml).expect("spec");
    spec.rollout.analysis.on_failure = FailureAction::Demote;
    spec
}

async fn replica(store: &Store, writer: &str, sent: &Arc<RecordingPublisher>) -> Reconciler {
    let telemetry = Arc::new(Telemetry::new(1000, 3_600_000, writer.into()));
    let state = fleet_state_over(store.clone(), Metrics::new(), telemetry).await;
    Reconciler::new(state, sent.clone())
}

/// What a rollout looked like from the leader after each analysis round.
type History = Vec<String>;

/// One rollout of version 2 over 12 devices; the aarch64 canaries are slow. Every device
/// message goes to every replica (hello, status and state are not shared), except telemetry:
/// window `n` goes to replica `n % replicas`, and with `redeliver` every third window goes
/// to the next replica as well, as a QoS 1 redelivery after a replica died would.
async fn rollout(replicas: &[Reconciler], sent: &RecordingPublisher, redeliver: bool) -> History {
    let leader = &replicas[0];
    let to_all = async |message: DeviceMessage| {
        for replica in replicas {
            ingest::handle(replica.fleet(), &message)
                .await
                .expect("device message");
        }
    };
    for i in 0..4 {
        to_all(DeviceMessage::Hello(hello(
            &format!("x86-{i}"),
            "x86_64",
            8192,
        )))
        .await;
        to_all(DeviceMessage::Hello(hello(
            &format!("pi-{i}"),
            "aarch64",
            512,
        )))
        .await;
        to_all(DeviceMessage::Hello(hello(
            &format!("small-{i}"),
            "x86_64",
            1024,
        )))
        .await;
    }
    let mut status = None;
    let mut seq = 0u64;
    let mut history = History::new();
    for (round, now) in (0..40).map(|round| (round, 1_000 + round * 1_500)) {
        // version 1 settles first (two passes), then version 2 rolls out
        let version = if round < 2 { "1" } else { "2" };
        let spec = spec(version);
        let input = DeploymentInput {
            namespace: "default",
            name: "vad",
            uid: "uid-1",
            generation: Some(1),
            spec: &spec,
            status: status.as_ref(),
        };
        let output = leader.reconcile(&input, now).await.expect("reconcile");
        for standby in &replicas[1..] {
            standby
                .mirror("default", "vad", Some("uid-1"))
                .await
                .expect("mirror");
        }
        let phase = output.status.phase;
        history.push(format!(
            "step {} {:?} cohorts {:?}",
            output.status.current_step,
            phase,
            output
                .status
                .cohorts
                .iter()
                .map(|c| (&c.device_class, &c.variant, c.consecutive_failures))
                .collect::<Vec<_>>()
        ));
        status = Some(output.status);
        if round > 2 && phase == Phase::Succeeded {
            break;
        }
        let desired = sent.last_documents();
        for (device, doc) in &desired {
            to_all(DeviceMessage::State(ready_report(device, doc))).await;
        }
        for (device, doc) in &desired {
            let window = window(leader, device, doc, seq, now);
            let first = seq as usize % replicas.len();
            let mut to = vec![first];
            if redeliver && seq.is_multiple_of(3) {
                to.push((first + 1) % replicas.len());
            }
            for index in to {
                ingest::handle(replicas[index].fleet(), &window)
                    .await
                    .expect("telemetry");
            }
            seq += 1;
        }
    }
    history
}

/// 30 requests of the device's model: 1 s on aarch64 canaries, 10 ms everywhere else.
fn window(leader: &Reconciler, device: &str, doc: &Desired, seq: u64, now: i64) -> DeviceMessage {
    let models = doc
        .assignments
        .iter()
        .map(|a| {
            let role = leader.fleet().attribution.role_of(&a.deployment, device);
            let seconds = if role == Role::Canary && device.starts_with("pi") {
                1.0
            } else {
                0.010
            };
            let mut latency = LatencyHistogram::default();
            (0..30).for_each(|_| latency.observe(seconds));
            ModelWindow {
                deployment: a.deployment.clone(),
                variant: a.variant.clone(),
                requests: 30,
                errors: 0,
                latency,
                offload: None,
                llm: None,
            }
        })
        .collect();
    DeviceMessage::Telemetry(TelemetryWindow {
        device_id: DeviceId::new(device).expect("id"),
        seq,
        window_start_ms: now,
        window_seconds: 1,
        models,
    })
}

fn counted(replica: &Reconciler, result: &str) -> u64 {
    replica
        .fleet()
        .metrics
        .telemetry_windows
        .with_label_values(&[result])
        .get()
}

#[tokio::test]
async fn the_leaders_verdicts_over_split_and_redelivered_windows_equal_one_replicas() {
    let one_db = tempfile::tempdir().expect("tempdir");
    let url = |dir: &tempfile::TempDir| format!("sqlite://{}", dir.path().join("f.db").display());
    let sent = Arc::new(RecordingPublisher::default());
    let store = Store::connect(&url(&one_db)).await.expect("store");
    let alone = [replica(&store, "alone", &sent).await];
    let expected = rollout(&alone, &sent, false).await;
    assert!(
        expected.iter().any(|h| h.contains("Succeeded")),
        "{expected:#?}"
    );
    assert!(
        expected.iter().any(|h| h.contains("aarch64")),
        "the slow aarch64 canaries were judged: {expected:#?}"
    );

    let two_db = tempfile::tempdir().expect("tempdir");
    let sent = Arc::new(RecordingPublisher::default());
    let store = Store::connect(&url(&two_db)).await.expect("store");
    let pair = [
        replica(&store, "leader", &sent).await,
        replica(&store, "standby", &sent).await,
    ];
    let history = rollout(&pair, &sent, true).await;
    assert_eq!(history, expected);

    let (leader, standby) = (&pair[0], &pair[1]);
    assert!(counted(leader, "counted") > 0 && counted(standby, "counted") > 0);
    assert_eq!(
        counted(leader, "counted") + counted(standby, "counted"),
        counted(&alone[0], "counted"),
        "every window counted once between the two"
    );
    assert_eq!(
        counted(leader, "duplicate") + counted(standby, "duplicate"),
        counted(&alone[0], "counted").div_ceil(3),
        "every redelivered window refused"
    );
    assert_eq!(
        counted(standby, "unknown_model"),
        0,
        "the standby knew every model"
    );
    // the roll-ups both wrote hold exactly what the one replica counted, cohort by cohort
    let totals = async |replica: &Reconciler| -> BTreeMap<RollupCohort, (u64, u64)> {
        let rollups = replica.fleet().store.rollups_of("default", "vad", 0).await;
        rollups
            .expect("roll-ups")
            .into_iter()
            .map(|(cohort, slices)| {
                let requests = slices.values().map(|w| w.requests).sum();
                let samples = slices.values().map(|w| w.latency.count()).sum();
                (cohort, (requests, samples))
            })
            .collect()
    };
    let expected = totals(&alone[0]).await;
    assert!(expected.keys().any(|c| c.role == "canary"), "{expected:?}");
    assert_eq!(totals(leader).await, expected);
}

/// Two replicas claiming the same windows at the same time (PostgreSQL, row locks): each
/// window is counted by exactly one of them, and the roll-ups they wrote add up to it.
#[tokio::test]
async fn concurrent_replicas_claim_each_window_once_on_postgres() {
    let db = common::TempPostgres::create("replicas_claims").await;
    let stores = [
        Store::connect(&db.url).await.expect("store a"),
        Store::connect(&db.url).await.expect("store b"),
    ];
    let devices: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    let windows: Vec<(&str, u64)> = (0..30u64)
        .flat_map(|seq| devices.iter().map(move |d| (d.as_str(), seq)))
        .collect();
    let claim_all = async |store: &Store, writer: &str, reversed: bool| {
        let mut order = windows.clone();
        if reversed {
            order.reverse();
        }
        let mut counted = 0;
        for (index, batch) in order.chunks(50).enumerate() {
            let outcomes = store
                .count_windows(batch, writer, |outcomes| {
                    let mut sum = CohortWindow::default();
                    let ok = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
                    sum.add(ok, 0, &LatencyHistogram::default());
                    vec![RollupWrite {
                        namespace: "default".into(),
                        name: "vad".into(),
                        cohort: cohort(),
                        interval_start_ms: index as i64, // a row per batch
                        window: sum,
                    }]
                })
                .await
                .expect("claims");
            counted += outcomes.iter().filter(|o| o.is_ok()).count();
            assert!(outcomes.iter().all(|o| *o != Err(Refusal::Stale)));
        }
        counted
    };
    let (a, b) = tokio::join!(
        claim_all(&stores[0], "a", false),
        claim_all(&stores[1], "b", true)
    );
    assert_eq!(a + b, windows.len(), "a counted {a}, b counted {b}");
    let rollups = stores[0]
        .rollups_of("default", "vad", 0)
        .await
        .expect("read");
    let total: u64 = rollups[&cohort()].values().map(|w| w.requests).sum();
    assert_eq!(total, windows.len() as u64);
    db.drop().await;
}

fn cohort() -> RollupCohort {
    RollupCohort {
        variant: "int8".into(),
        device_class: "x86_64-none-mem1g".into(),
        role: "canary".into(),
    }
}
