//! The reconcile pipeline end to end, without a network: SQLite, an inventory fed with device
//! messages, and a recorder in place of the broker. Time is passed in, so rollouts run fast.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::fleet::{RecordingPublisher, fleet_state, fleet_state_over, hello, ready_report};
use edgefleet_controller::ingest;
use edgefleet_controller::inventory::{ChangeKind, Inventory};
use edgefleet_controller::metrics::Metrics;
use edgefleet_controller::mqtt::DeviceMessage;
use edgefleet_controller::reconcile::{DeploymentInput, Reconciler};
use edgefleet_controller::telemetry::Telemetry;
use edgefleet_crds::{ModelDeploymentSpec, ModelDeploymentStatus, Phase};
use edgefleet_protocol::LatencyHistogram;
use edgefleet_protocol::wire::{
    Desired, DeviceId, ModelWindow, Role, Telemetry as TelemetryWindow,
};

struct Fleet {
    reconciler: Reconciler,
    sent: Arc<RecordingPublisher>,
    status: Option<ModelDeploymentStatus>,
    /// Telemetry window numbers: increasing for every device, as agents number theirs.
    next_seq: std::sync::atomic::AtomicU64,
}

fn spec(version: &str, steps: &str) -> ModelDeploymentSpec {
    let sha = |n: u8| format!("{:02x}", n).repeat(32);
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
  quality: {{accuracyDrift: 0.01}}
rollout:
  steps: {steps}
  analysis: {{intervalSeconds: 1, minSamples: 20, failureThreshold: 2, maxP95LatencyMs: 50, stepTimeoutSeconds: 600}}
"#,
        sha(version.len() as u8),
        sha(version.len() as u8 + 100),
    );
    serde_yaml::from_str(&yaml).expect("spec")
}

impl Fleet {
    async fn new() -> Self {
        let fleet = fleet_state(Metrics::new(), 1000, 3_600_000).await;
        let sent = Arc::new(RecordingPublisher::default());
        Self {
            reconciler: Reconciler::new(fleet, sent.clone()),
            sent,
            status: None,
            next_seq: Default::default(),
        }
    }

    async fn reconcile(
        &mut self,
        spec: &ModelDeploymentSpec,
        now_ms: i64,
    ) -> ModelDeploymentStatus {
        let input = DeploymentInput {
            namespace: "default",
            name: "vad",
            uid: "uid-1",
            generation: Some(1),
            spec,
            status: self.status.as_ref(),
        };
        let output = self
            .reconciler
            .reconcile(&input, now_ms)
            .await
            .expect("reconcile");
        self.status = Some(output.status.clone());
        output.status
    }

    /// A restarted controller: a new engine, inventory and telemetry over the same database.
    async fn restart(&mut self) {
        let state = fleet_state_over(
            self.reconciler.fleet().store.clone(),
            Metrics::new(),
            Arc::new(Telemetry::new(1000, 3_600_000, "restarted".into())),
        )
        .await;
        self.reconciler = Reconciler::new(state, self.sent.clone());
    }

    /// The last desired document each device received.
    fn desired(&self) -> BTreeMap<String, Desired> {
        self.sent.last_documents()
    }

    /// Every device reports Ready for what it was last told to run.
    async fn devices_become_ready(&self, now_ms: i64) {
        for (device, doc) in self.desired() {
            let report = ready_report(&device, &doc);
            self.reconciler
                .fleet()
                .inventory
                .apply_state(&report, now_ms)
                .await
                .expect("state");
            for model in &report.models {
                self.reconciler.fleet().attribution.serving(
                    &model.deployment,
                    report.device_id.as_str(),
                    model.serving_sha256.as_deref(),
                );
            }
        }
    }

    /// Devices report latency windows through the ingest path (claimed and rolled up in SQL).
    async fn report_latency(&self, now_ms: i64, latency_for: impl Fn(&str, Role) -> f64) {
        self.report_latency_of(now_ms, |_, variant, role| latency_for(variant, role))
            .await;
    }

    /// As `report_latency`, with the latency chosen per device, variant and role.
    async fn report_latency_of(&self, now_ms: i64, latency_for: impl Fn(&str, &str, Role) -> f64) {
        for (device, doc) in self.desired() {
            let mut models = Vec::new();
            for a in &doc.assignments {
                let role = self
                    .reconciler
                    .fleet()
                    .attribution
                    .role_of(&a.deployment, &device);
                let mut latency = LatencyHistogram::default();
                for _ in 0..30 {
                    latency.observe(latency_for(&device, &a.variant, role));
                }
                models.push(ModelWindow {
                    deployment: a.deployment.clone(),
                    variant: a.variant.clone(),
                    requests: 30,
                    errors: 0,
                    latency,
                    offload: None,
                    llm: None,
                });
            }
            let seq = self
                .next_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let window = DeviceMessage::Telemetry(TelemetryWindow {
                device_id: DeviceId::new(&device).expect("id"),
                seq,
                window_start_ms: now_ms,
                window_seconds: 1,
                models,
            });
            ingest::handle(self.reconciler.fleet(), &window)
                .await
                .expect("telemetry recorded");
        }
    }
}

async fn fleet_of_ten() -> Fleet {
    let fleet = Fleet::new().await;
    for i in 0..5 {
        fleet
            .reconciler
            .fleet()
            .inventory
            .apply_hello(&hello(&format!("x86-{i}"), "x86_64", 8192), 0)
            .await
            .expect("hello");
        fleet
            .reconciler
            .fleet()
            .inventory
            .apply_hello(&hello(&format!("pi-{i}"), "aarch64", 512), 0)
            .await
            .expect("hello");
    }
    let mut tiny = hello("tiny", "aarch64", 128);
    tiny.labels.insert("site".into(), "lab".into());
    fleet
        .reconciler
        .fleet()
        .inventory
        .apply_hello(&tiny, 0)
        .await
        .expect("hello");
    fleet
}

#[tokio::test]
async fn first_deployment_assigns_each_device_its_variant_and_explains_no_fit() {
    let mut fleet = fleet_of_ten().await;
    let status = fleet.reconcile(&spec("1", "[{percent: 20}]"), 1_000).await;
    let desired = fleet.desired();
    assert_eq!(desired["x86-0"].assignments[0].variant, "fp32");
    assert_eq!(desired["pi-0"].assignments[0].variant, "int8");
    assert!(!desired.contains_key("tiny"), "nothing fits 128 MiB");
    assert_eq!(status.devices.matched, 11);
    assert_eq!(status.devices.no_fit, 1);
    assert_eq!(status.devices.assigned, 10);
    assert_eq!(status.phase, Phase::Progressing);

    fleet.devices_become_ready(2_000).await;
    let status = fleet.reconcile(&spec("1", "[{percent: 20}]"), 3_000).await;
    assert_eq!(status.phase, Phase::Succeeded);
    assert_eq!(status.devices.ready, 10);

    // an unchanged reconcile publishes nothing and yields the identical status
    let published = fleet.sent.0.lock().expect("lock").len();
    let again = fleet.reconcile(&spec("1", "[{percent: 20}]"), 60_000).await;
    assert_eq!(fleet.sent.0.lock().expect("lock").len(), published);
    assert_eq!(again, status);
}

#[tokio::test]
async fn a_good_version_is_promoted_step_by_step() {
    let mut fleet = fleet_of_ten().await;
    let steps = "[{percent: 20}, {percent: 60}]";
    fleet.reconcile(&spec("1", steps), 0).await;
    fleet.devices_become_ready(10).await;
    fleet.reconcile(&spec("1", steps), 20).await;

    let mut now = 1_000;
    let status = fleet.reconcile(&spec("2", steps), now).await;
    assert_eq!((status.phase, status.current_step), (Phase::Progressing, 1));
    let canaries: Vec<String> = fleet
        .desired()
        .into_iter()
        .filter(|(_, d)| d.assignments[0].role == Role::Canary)
        .map(|(id, _)| id)
        .collect();
    // 20% of each cohort (5 x86/fp32 and 5 pi/int8), at least one each
    assert_eq!(canaries.len(), 2, "{canaries:?}");

    for _ in 0..20 {
        fleet.devices_become_ready(now).await;
        fleet.report_latency(now, |_, _| 0.010).await;
        now += 1_500;
        let status = fleet.reconcile(&spec("2", steps), now).await;
        if status.phase == Phase::Succeeded {
            assert_eq!(status.current_step, 3);
            assert!(
                fleet
                    .desired()
                    .values()
                    .all(|d| d.assignments[0].model.version == "2"
                        && d.assignments[0].role == Role::Stable)
            );
            let history = fleet
                .reconciler
                .fleet()
                .store
                .history("default", "vad")
                .await
                .expect("history");
            let events: Vec<&str> = history.iter().map(|h| h.1.as_str()).collect();
            assert_eq!(events, ["StepAdvanced", "Promoted"]);
            return;
        }
    }
    panic!("not promoted: {:?}", fleet.status);
}

#[tokio::test]
async fn a_slow_version_is_rolled_back_before_it_leaves_the_canaries() {
    let mut fleet = fleet_of_ten().await;
    let steps = "[{percent: 20}, {percent: 60}]";
    fleet.reconcile(&spec("1", steps), 0).await;
    fleet.devices_become_ready(10).await;
    fleet.reconcile(&spec("1", steps), 20).await;

    let mut now = 1_000;
    fleet.reconcile(&spec("2", steps), now).await;
    let canaries: Vec<String> = fleet
        .desired()
        .into_iter()
        .filter(|(_, d)| d.assignments[0].role == Role::Canary)
        .map(|(id, _)| id)
        .collect();
    for _ in 0..20 {
        fleet.devices_become_ready(now).await;
        // the new version is 20x slower than the 50 ms limit
        fleet
            .report_latency(
                now,
                |_, role| if role == Role::Canary { 1.0 } else { 0.010 },
            )
            .await;
        now += 1_500;
        let status = fleet.reconcile(&spec("2", steps), now).await;
        assert!(
            status.current_step <= 1,
            "never advanced past the first step"
        );
        if status.phase == Phase::RolledBack {
            let desired = fleet.desired();
            assert!(
                desired
                    .values()
                    .all(|d| d.assignments[0].model.version == "1"),
                "all back on version 1"
            );
            // only the first step's canaries ever received version 2
            let got_v2: Vec<String> = fleet
                .sent
                .0
                .lock()
                .expect("lock")
                .iter()
                .filter(|d| d.assignments.iter().any(|a| a.model.version == "2"))
                .map(|d| d.device_id.to_string())
                .collect();
            assert!(
                got_v2.iter().all(|d| canaries.contains(d)),
                "{got_v2:?} vs {canaries:?}"
            );
            assert!(status.cohorts.iter().any(|c| c.consecutive_failures >= 2));
            return;
        }
    }
    panic!("not rolled back: {:?}", fleet.status);
}

#[tokio::test]
async fn deleting_removes_the_model_from_every_device() {
    let mut fleet = fleet_of_ten().await;
    fleet.reconcile(&spec("1", "[{percent: 20}]"), 0).await;
    fleet
        .reconciler
        .remove("default", "vad", 100)
        .await
        .expect("remove");
    assert!(fleet.desired().values().all(|d| d.assignments.is_empty()));
    assert!(
        fleet
            .reconciler
            .fleet()
            .store
            .rollout("default", "vad")
            .await
            .expect("rollout")
            .is_none()
    );
}

#[tokio::test]
async fn an_invalid_spec_touches_no_device() {
    let mut fleet = fleet_of_ten().await;
    let mut bad = spec("1", "[{percent: 50}, {percent: 20}]");
    bad.variants[1].name = "fp32".into();
    let status = fleet.reconcile(&bad, 0).await;
    assert_eq!(status.phase, Phase::Failed);
    let condition = &status.conditions[0];
    assert_eq!(
        (condition.type_.as_str(), condition.status.as_str()),
        ("SpecValid", "False")
    );
    assert!(
        condition.message.contains("spec.variants[1].name"),
        "{}",
        condition.message
    );
    assert!(
        condition.message.contains("spec.rollout.steps[1].percent"),
        "{}",
        condition.message
    );
    assert!(fleet.desired().is_empty());

    // A valid deployment next to it is reconciled as usual.
    let good = spec("1", "[{percent: 50}]");
    let input = DeploymentInput {
        namespace: "default",
        name: "other",
        uid: "uid-2",
        generation: Some(1),
        spec: &good,
        status: None,
    };
    let output = fleet
        .reconciler
        .reconcile(&input, 0)
        .await
        .expect("reconcile");
    assert_ne!(output.status.phase, Phase::Failed, "{:?}", output.status);
    assert!(
        !fleet.desired().is_empty(),
        "the valid deployment was held back"
    );
}

#[tokio::test]
async fn a_restarted_controller_knows_which_devices_already_hold_the_target() {
    let mut fleet = fleet_of_ten().await;
    let steps = "[{percent: 20}, {percent: 60}]";
    fleet.reconcile(&spec("1", steps), 0).await;
    fleet.devices_become_ready(10).await;
    fleet.reconcile(&spec("2", steps), 1_000).await;
    fleet.devices_become_ready(1_010).await;
    let canaries: BTreeMap<String, String> = fleet
        .desired()
        .into_iter()
        .filter(|(_, d)| d.assignments[0].role == Role::Canary)
        .map(|(id, d)| (id, d.assignments[0].artifact.sha256.clone()))
        .collect();
    assert_eq!(canaries.len(), 2, "{canaries:?}");

    // A new process over the same database, before any device reports again.
    let reloaded = Inventory::load(fleet.reconciler.fleet().store.clone(), Metrics::new())
        .await
        .expect("inventory");
    for (device, target) in &canaries {
        let facts = reloaded
            .device(&DeviceId::new(device.as_str()).expect("id"))
            .expect("known device");
        assert!(
            facts.installed_sha256.contains(target),
            "{device} holds {target} but the reloaded inventory has {:?}",
            facts.installed_sha256
        );
    }
}

/// A canary whose new assignment it has not reported on yet (its row forgot what it served
/// when the version changed) keeps its place across a restart: the new controller knows from
/// the device's last report that it holds the target's bytes, so no canary moves.
#[tokio::test]
async fn a_restarted_controller_keeps_the_canaries_before_they_report_again() {
    let mut fleet = fleet_of_ten().await;
    let steps = "[{percent: 20}, {percent: 60}]";
    fleet.reconcile(&spec("1", steps), 0).await;
    fleet.devices_become_ready(10).await;
    // version 2's artifacts are version 1's bytes (same digests): every device holds them
    fleet.reconcile(&spec("2", steps), 1_000).await;
    let before = fleet.desired();
    let canaries = before
        .values()
        .filter(|d| d.assignments[0].role == Role::Canary)
        .count();
    assert_eq!(canaries, 2, "{before:?}");
    let published = fleet.sent.0.lock().expect("lock").len();

    // A new process over the same database; no device has reported since version 2.
    fleet.restart().await;
    fleet.reconcile(&spec("2", steps), 2_000).await;
    let moved: Vec<_> = fleet.sent.0.lock().expect("lock")[published..]
        .iter()
        .map(|d| d.device_id.to_string())
        .collect();
    assert!(moved.is_empty(), "the restart moved canaries: {moved:?}");
    assert_eq!(fleet.desired(), before);
}

/// Issue 17: a cohort demoted during the canary must keep serving once the others promote.
#[tokio::test]
async fn a_demoted_class_keeps_serving_after_promotion_and_after_a_restart() {
    let mut fleet = fleet_of_ten().await;
    // small x86 devices run int8 too, and it is fast there
    for i in 0..5 {
        let small = hello(&format!("x86small-{i}"), "x86_64", 1024);
        fleet
            .reconciler
            .fleet()
            .inventory
            .apply_hello(&small, 0)
            .await
            .expect("hello");
    }
    let steps = "[{percent: 20}, {percent: 60}]";
    let demote = |version: &str| {
        let mut s = spec(version, steps);
        s.rollout.analysis.on_failure = edgefleet_crds::FailureAction::Demote;
        s
    };
    fleet.reconcile(&demote("1"), 0).await;
    fleet.devices_become_ready(10).await;
    fleet.reconcile(&demote("1"), 20).await;
    let served_before: Vec<String> = fleet.desired().keys().cloned().collect();
    assert_eq!(served_before.len(), 15);

    let mut now = 1_000;
    let mut status = fleet.reconcile(&demote("2"), now).await;
    for _ in 0..40 {
        fleet.devices_become_ready(now).await;
        // version 2's int8 is 20x over the 50 ms limit on the aarch64 class only
        fleet
            .report_latency_of(now, |device, variant, role| {
                if role == Role::Canary && variant == "int8" && device.starts_with("pi") {
                    1.0
                } else {
                    0.010
                }
            })
            .await;
        now += 1_500;
        status = fleet.reconcile(&demote("2"), now).await;
        if status.phase == Phase::Succeeded {
            break;
        }
    }
    assert_eq!(status.phase, Phase::Succeeded, "{status:#?}");

    let check = |status: &ModelDeploymentStatus, desired: &BTreeMap<String, Desired>| {
        // every device that served before promotion still serves
        for device in &served_before {
            let doc = desired.get(device).expect("still has a document");
            assert_eq!(doc.assignments.len(), 1, "{device} serves nothing: {doc:?}");
            let a = &doc.assignments[0];
            let expected = if device.starts_with("x86small") {
                ("2", "int8")
            } else if device.starts_with("x86") {
                ("2", "fp32")
            } else {
                ("1", "int8")
            };
            assert_eq!(
                (a.model.version.as_str(), a.variant.as_str()),
                expected,
                "{device}"
            );
            assert_eq!(a.role, Role::Stable);
        }
        let d = &status.devices;
        assert_eq!((d.matched, d.assigned), (16, 15), "{d:?}");
        assert_eq!((d.demoted, d.kept_previous, d.no_fit), (5, 5, 1), "{d:?}");
        let demoted = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Demoted")
            .expect("a Demoted condition");
        assert_eq!(demoted.status, "True");
        assert!(
            demoted.message.contains("aarch64") && demoted.message.contains("5 keep 1"),
            "{}",
            demoted.message
        );
        // the promoted int8's figure comes from the class that runs it (~10 ms), not blended
        // with the demoted class's 1 s canary windows
        let int8 = status
            .variants
            .iter()
            .find(|v| v.name == "int8")
            .expect("int8 in status");
        assert_eq!(int8.devices, 5, "only the small x86 devices run 2/int8");
        let p95 = int8.p95_latency_ms.expect("int8 p95");
        assert!(p95 < 50.0, "int8 p95 {p95} ms blends the demoted cohort in");
    };
    fleet.devices_become_ready(now).await;
    fleet.report_latency(now, |_, _| 0.010).await;
    let status = fleet.reconcile(&demote("2"), now + 1_000).await;
    check(&status, &fleet.desired());

    // A restarted controller (new engine over the same database) keeps it that way and does
    // not republish anything.
    let published = fleet.sent.0.lock().expect("lock").len();
    fleet.restart().await;
    fleet.report_latency(now + 59_000, |_, _| 0.010).await;
    let status = fleet.reconcile(&demote("2"), now + 60_000).await;
    check(&status, &fleet.desired());
    assert_eq!(fleet.sent.0.lock().expect("lock").len(), published);
}

#[tokio::test]
async fn a_pass_follows_the_devices_that_reported_and_reads_everything_again_within_30_s() {
    let mut fleet = fleet_of_ten().await;
    let md = spec("1", "[{percent: 20}]");
    assert_eq!(fleet.reconcile(&md, 1_000).await.devices.ready, 0);
    let pool = fleet.reconciler.fleet().store.pool().clone();
    let behind_the_controllers_back = |device: &'static str, phase: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query("UPDATE assignments SET phase = $1 WHERE device_id = $2")
                .bind(phase)
                .bind(device)
                .execute(&pool)
                .await
                .expect("update");
        }
    };
    let plans = |fleet: &Fleet, how: &str| {
        let metrics = &fleet.reconciler.fleet().metrics;
        metrics.reconcile_plans.with_label_values(&[how]).get()
    };

    // nothing this replica heard of changed: the pass reuses its plan and rows, unread
    behind_the_controllers_back("x86-0", "Ready").await;
    assert_eq!(fleet.reconcile(&md, 2_000).await.devices.ready, 0);

    // a report through the inventory is seen by the very next pass: that device's row re-read
    let doc = fleet.desired()["x86-1"].clone();
    fleet
        .reconciler
        .fleet()
        .inventory
        .apply_state(&ready_report("x86-1", &doc), 2_500)
        .await
        .expect("state");
    assert_eq!(fleet.reconcile(&md, 3_000).await.devices.ready, 1);

    // every device reports its model Ready and installed: followed, not planned again
    fleet.devices_become_ready(3_500).await;
    let status = fleet.reconcile(&md, 4_000).await;
    assert_eq!(status.devices.ready, status.devices.assigned);
    assert!(status.devices.assigned > 0);
    assert_eq!(
        (plans(&fleet, "planned"), plans(&fleet, "followed")),
        (1, 3)
    );

    // what this replica did not hear of is read within 30 s of the last whole read
    behind_the_controllers_back("x86-2", "Failed").await;
    assert_eq!(fleet.reconcile(&md, 30_500).await.devices.failed, 0);
    assert_eq!(fleet.reconcile(&md, 31_000).await.devices.failed, 1);
    assert_eq!(plans(&fleet, "planned"), 2);

    // a device announcing itself is planned over the whole fleet
    fleet
        .reconciler
        .fleet()
        .inventory
        .apply_hello(&hello("x86-9", "x86_64", 8192), 31_500)
        .await
        .expect("hello");
    let status = fleet.reconcile(&md, 32_000).await;
    assert_eq!(plans(&fleet, "planned"), 3);
    assert!(fleet.desired().contains_key("x86-9"));
    assert_eq!(
        status.devices.ready + 2,
        status.devices.assigned,
        "x86-2 failed, x86-9 new"
    );
}

#[tokio::test]
async fn the_inventory_logs_which_devices_changed_and_how() {
    let mut fleet = fleet_of_ten().await;
    let md = spec("1", "[{percent: 20}]");
    fleet.reconcile(&md, 1_000).await;
    let inventory = &fleet.reconciler.fleet().inventory;
    let (hellos, end) = inventory.changes_since(0).expect("the log reaches back");
    assert_eq!(hellos.len(), 11);
    assert!(hellos.iter().all(|c| c.kind == ChangeKind::Presence));
    assert_eq!(end, inventory.revision());

    // a hello that changes nothing is not a change
    inventory
        .apply_hello(&hello("pi-0", "aarch64", 512), 1_500)
        .await
        .expect("hello");
    assert_eq!(inventory.revision(), end);

    // a report: its device, and whether the digests it holds moved
    let report = ready_report("pi-0", &fleet.desired()["pi-0"]);
    inventory.apply_state(&report, 2_000).await.expect("state");
    inventory.apply_state(&report, 2_500).await.expect("state");
    let (reports, _) = inventory.changes_since(end).expect("the log reaches back");
    let kinds: Vec<_> = reports
        .iter()
        .map(|c| (c.device.as_str(), c.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("pi-0", ChangeKind::Reported { installed: true }),
            ("pi-0", ChangeKind::Reported { installed: false }),
        ]
    );
}
