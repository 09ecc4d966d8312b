//! The reconcile pipeline shared by Kubernetes and standalone mode:
//! validate → plan (pure, `edgefleet-core`) → apply (SQL assignments, retained desired
//! documents) → status (pure). Where `ModelDeployment`s come from and where status goes is
//! the adapters' business.

mod attribution;
pub mod desired;
pub mod pacing;
mod progress;
mod republish;
pub mod rollout;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgefleet_core::plan::{RolloutPlan, Stage, plan_rollout};
use edgefleet_crds::validate::validate_spec;
use edgefleet_crds::wire::{Desired, DeviceId};
use edgefleet_crds::{ModelDeploymentSpec, ModelDeploymentStatus};

pub use attribution::Attribution;
use rollout::RolloutState;
use status::{StatusInput, build_status, invalid_status};

use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::mqtt::MqttLink;
use crate::store::{AssignmentRow, DesiredWrite, Store, StoreError};
use crate::telemetry::Telemetry;

/// Devices whose desired documents are rebuilt per round of reads, writes and publishes.
const PUBLISH_CHUNK: usize = 2000;

/// Where desired documents go: the broker, or a recorder in tests.
#[derive(Clone)]
pub enum Publisher {
    Mqtt(MqttLink),
    Recorder(Arc<Mutex<Vec<Desired>>>),
}

impl Publisher {
    async fn publish(&self, desired: &Desired) -> Result<(), ReconcileError> {
        match self {
            Publisher::Mqtt(link) => link
                .publish_desired(desired)
                .await
                .map_err(|e| ReconcileError::Publish(e.to_string())),
            Publisher::Recorder(sent) => {
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(desired.clone());
                Ok(())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("fleet store: {0}")]
    Store(#[from] StoreError),
    #[error("publishing a desired document: {0}")]
    Publish(String),
    #[error("Kubernetes API: {0}")]
    Kube(String),
}

impl ReconcileError {
    /// Bounded category for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Store(_) => "store",
            ReconcileError::Publish(_) => "publish",
            ReconcileError::Kube(_) => "kube",
        }
    }
}

/// One `ModelDeployment` as the adapters see it.
pub struct DeploymentInput<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a ModelDeploymentSpec,
    pub status: Option<&'a ModelDeploymentStatus>,
}

/// Something worth a Kubernetes Event (or a line in `describe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutEvent {
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

pub struct ReconcileOutput {
    pub status: ModelDeploymentStatus,
    pub requeue_after: Duration,
    pub events: Vec<RolloutEvent>,
}

pub struct Engine {
    pub store: Store,
    pub inventory: Arc<Inventory>,
    pub telemetry: Arc<Telemetry>,
    pub metrics: Metrics,
    pub attribution: Arc<Attribution>,
    publisher: Publisher,
    /// Serialises desired-document rebuilds: two deployments touching one device must not
    /// both read generation N and publish N+1.
    publish_lock: tokio::sync::Mutex<()>,
}

impl Engine {
    pub fn new(
        store: Store,
        inventory: Arc<Inventory>,
        telemetry: Arc<Telemetry>,
        metrics: Metrics,
        publisher: Publisher,
    ) -> Self {
        Self {
            store,
            inventory,
            telemetry,
            metrics,
            attribution: Arc::new(Attribution::default()),
            publisher,
            publish_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn reconcile(
        &self,
        input: &DeploymentInput<'_>,
        now_ms: i64,
    ) -> Result<ReconcileOutput, ReconcileError> {
        let timer = self.metrics.reconcile_duration.start_timer();
        let result = self.reconcile_inner(input, now_ms).await;
        timer.observe_duration();
        if let Err(err) = &result {
            self.metrics
                .reconcile_errors
                .with_label_values(&[err.category()])
                .inc();
        }
        result
    }

    async fn reconcile_inner(
        &self,
        input: &DeploymentInput<'_>,
        now_ms: i64,
    ) -> Result<ReconcileOutput, ReconcileError> {
        let now_text = rfc3339(now_ms);
        // validate
        let errors = validate_spec(input.spec);
        if !errors.is_empty() {
            let status = invalid_status(input.generation, &errors, input.status, &now_text);
            let message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return Ok(ReconcileOutput {
                status,
                requeue_after: Duration::from_secs(300),
                events: vec![RolloutEvent {
                    reason: "InvalidSpec",
                    message,
                    warning: true,
                }],
            });
        }

        // plan
        let stored = self.store.rollout(input.namespace, input.name).await?;
        let before = match &stored {
            Some(row) if row.uid == input.uid => Some(RolloutState::from_row(row)?),
            _ => None, // a deployment recreated under the same name starts afresh
        };
        let mut state = match before.clone() {
            None => RolloutState::first(input.spec, now_ms),
            Some(state) => state.with_spec(input.spec, now_ms),
        };
        let mut events = Vec::new();
        if before.as_ref().map(|b| &b.target.model) != Some(&state.target.model) {
            events.push(RolloutEvent {
                reason: "RolloutStarted",
                message: state.last_decision.clone(),
                warning: false,
            });
        }
        let devices = self.inventory.snapshot();
        let mut plan = self.plan(input.uid, &state, &devices);
        let key = format!("{}/{}", input.namespace, input.name);
        let variant_names = state
            .target
            .variants
            .iter()
            .chain(state.previous.iter().flat_map(|p| &p.variants));
        self.attribution
            .set_variants(&key, variant_names.map(|v| v.name.clone()).collect());
        let mut rows = self.apply(input, &key, &plan, now_ms).await?;

        // progress the canary, then re-plan at once if the stage moved
        let mut verdicts = BTreeMap::new();
        if let Stage::Canary { .. } = state.stage {
            let progress =
                progress::step(self, input, &mut state, &plan, &rows, now_ms, &mut verdicts);
            if let Some(event) = progress {
                self.store
                    .append_history(
                        input.namespace,
                        input.name,
                        event.reason,
                        &event.message,
                        now_ms,
                    )
                    .await?;
                events.push(event);
                plan = self.plan(input.uid, &state, &devices);
                rows = self.apply(input, &key, &plan, now_ms).await?;
            }
        }

        let row = state.to_row(input.uid)?;
        if stored.as_ref() != Some(&row) {
            self.store
                .put_rollout(input.namespace, input.name, &row, now_ms)
                .await?;
        }

        let variant_p95_ms = self.variant_p95(input, &state, now_ms);
        let status = build_status(&StatusInput {
            generation: input.generation,
            state: &state,
            plan: &plan,
            rows: &rows,
            verdicts: &verdicts,
            variant_p95_ms: &variant_p95_ms,
            previous: input.status,
            now_rfc3339: &now_text,
        });
        self.export_status_metrics(input, &status);
        let requeue_after = match state.stage {
            Stage::Canary { .. } => Duration::from_secs(
                u64::from(state.target.rollout.analysis.interval_seconds).clamp(1, 10),
            ),
            Stage::Promoted if status.phase != edgefleet_crds::Phase::Succeeded => {
                Duration::from_secs(5)
            }
            _ => Duration::from_secs(60),
        };
        Ok(ReconcileOutput {
            status,
            requeue_after,
            events,
        })
    }

    fn plan(
        &self,
        uid: &str,
        state: &RolloutState,
        devices: &[edgefleet_core::DeviceFacts],
    ) -> RolloutPlan {
        plan_rollout(
            uid,
            &state.target,
            state.previous.as_ref(),
            state.stage,
            devices,
            &state.demotions,
        )
    }

    /// Writes the plan's assignments, republishes the documents of devices whose assignment
    /// for this deployment changed, and returns the deployment's rows as stored.
    async fn apply(
        &self,
        input: &DeploymentInput<'_>,
        key: &str,
        plan: &RolloutPlan,
        now_ms: i64,
    ) -> Result<Vec<AssignmentRow>, ReconcileError> {
        let old = self.store.assignments(input.namespace, input.name).await?;
        let new: Vec<AssignmentRow> = plan
            .devices
            .iter()
            .filter_map(|device| {
                let assignment = device.assignment.as_ref()?;
                let wire = serde_json::to_string(&assignment.to_wire(key)).ok()?;
                Some(AssignmentRow {
                    device_id: device.device.to_string(),
                    version: assignment.model.version.clone(),
                    variant: assignment.variant.name.clone(),
                    role: assignment.role.as_str().to_string(),
                    reason: format!("{}; {}", device.reason, assignment.variant_reason),
                    assignment_json: wire,
                    generation: input.generation.unwrap_or(0),
                    phase: None,
                    phase_reason: None,
                    serving_sha256: None,
                })
            })
            .collect();
        let online: BTreeSet<String> = plan
            .devices
            .iter()
            .filter(|d| d.online)
            .map(|d| d.device.to_string())
            .collect();
        let budget = pacing::budget(
            input.spec.rollout.max_unavailable_percent,
            plan.counts.matched,
        );
        let new = pacing::pace(&old, new, &online, budget);
        let changed: Vec<String> = changed_devices(&old, &new);
        // unchanged documents may still carry new reasons or generations to keep in SQL
        let unchanged = changed.is_empty()
            && old.len() == new.len()
            && old
                .iter()
                .zip(&new)
                .all(|(o, n)| o.reason == n.reason && o.generation == n.generation);
        let stored = if unchanged {
            old
        } else {
            self.store
                .replace_assignments_over(input.namespace, input.name, &old, &new, now_ms)
                .await?
        };
        self.attribution.assign(key, &new);
        self.publish_devices(&changed, now_ms).await?;
        Ok(stored)
    }

    /// Rebuilds one device's full desired document and publishes it if it changed.
    pub async fn publish_device(&self, device: &str, now_ms: i64) -> Result<(), ReconcileError> {
        self.publish_devices(&[device.to_string()], now_ms).await
    }

    /// Rebuilds the full desired documents of `devices` and publishes those that changed.
    /// Reads and writes go set-at-a-time, a chunk of devices per query and per transaction;
    /// each chunk is stored before it is published.
    pub async fn publish_devices(
        &self,
        devices: &[String],
        now_ms: i64,
    ) -> Result<(), ReconcileError> {
        // ids come from validated hellos; nothing to publish to otherwise
        let ids: Vec<(DeviceId, &str)> = devices
            .iter()
            .filter_map(|d| Some((DeviceId::new(d.as_str()).ok()?, d.as_str())))
            .collect();
        let _guard = self.publish_lock.lock().await;
        for chunk in ids.chunks(PUBLISH_CHUNK) {
            let names: Vec<&str> = chunk.iter().map(|(_, name)| *name).collect();
            let rows = self.store.assignments_of_devices(&names).await?;
            let previous = self.store.desired_of_devices(&names).await?;
            let mut documents = Vec::new();
            for (id, name) in chunk {
                let rows = rows.get(*name).map(Vec::as_slice).unwrap_or_default();
                let previous_ref = previous.get(*name).map(|(g, json)| (*g, json.as_str()));
                if let Some(doc) = desired::next_desired(id, rows, previous_ref)? {
                    let json = serde_json::to_string(&doc)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    documents.push((doc, json));
                }
            }
            let writes: Vec<DesiredWrite> = documents
                .iter()
                .map(|(doc, json)| DesiredWrite {
                    device: doc.device_id.as_str(),
                    generation: i64::try_from(doc.generation).unwrap_or(i64::MAX),
                    document_json: json,
                })
                .collect();
            self.store.put_desired_many(&writes, now_ms).await?;
            for (doc, _) in &documents {
                self.publisher.publish(doc).await?;
            }
        }
        Ok(())
    }

    /// Takes a deleted deployment's models off its devices and forgets it.
    pub async fn remove(
        &self,
        namespace: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<(), ReconcileError> {
        let old = self.store.assignments(namespace, name).await?;
        self.store
            .replace_assignments(namespace, name, &[], now_ms)
            .await?;
        let devices: Vec<String> = old.into_iter().map(|row| row.device_id).collect();
        self.publish_devices(&devices, now_ms).await?;
        self.store.purge_deployment(namespace, name).await?;
        let key = format!("{namespace}/{name}");
        self.attribution.assign(&key, &[]);
        self.attribution.set_variants(&key, BTreeSet::new());
        self.telemetry.forget_deployment(namespace, name);
        for state in [
            "matched",
            "assigned",
            "updated",
            "ready",
            "failed",
            "offline",
            "no_fit",
            "demoted",
            "kept_previous",
        ] {
            let _ = self
                .metrics
                .deployment_devices
                .remove_label_values(&[namespace, name, state]);
        }
        let _ = self
            .metrics
            .rollout_step
            .remove_label_values(&[namespace, name]);
        let _ = self
            .metrics
            .rollout_progressing
            .remove_label_values(&[namespace, name]);
        Ok(())
    }

    /// p95 per target variant over the last 5 minutes, leaving out demoted cohorts: their
    /// canary data is why they were demoted and says nothing of the classes that run it now.
    fn variant_p95(
        &self,
        input: &DeploymentInput<'_>,
        state: &RolloutState,
        now_ms: i64,
    ) -> BTreeMap<String, f64> {
        let since = now_ms - 5 * 60 * 1000;
        let demoted = |labels: &crate::telemetry::CohortLabels| {
            state
                .demotions
                .iter()
                .any(|k| k.device_class == labels.device_class && k.variant == labels.variant)
        };
        state
            .target
            .variants
            .iter()
            .filter_map(|v| {
                let window = self
                    .telemetry
                    .since_where(input.namespace, input.name, since, |l| {
                        l.variant == v.name && !demoted(l)
                    });
                Some((v.name.clone(), window.p95_ms()?))
            })
            .collect()
    }

    fn export_status_metrics(&self, input: &DeploymentInput<'_>, status: &ModelDeploymentStatus) {
        let d = &status.devices;
        for (state, value) in [
            ("matched", d.matched),
            ("assigned", d.assigned),
            ("updated", d.updated),
            ("ready", d.ready),
            ("failed", d.failed),
            ("offline", d.offline),
            ("no_fit", d.no_fit),
            ("demoted", d.demoted),
            ("kept_previous", d.kept_previous),
        ] {
            self.metrics
                .deployment_devices
                .with_label_values(&[input.namespace, input.name, state])
                .set(i64::from(value));
        }
        let labels = [input.namespace, input.name];
        self.metrics
            .rollout_step
            .with_label_values(&labels)
            .set(i64::from(status.current_step));
        let progressing = status.phase == edgefleet_crds::Phase::Progressing;
        self.metrics
            .rollout_progressing
            .with_label_values(&labels)
            .set(i64::from(progressing));
    }
}

/// Devices whose assignment document differs between `old` and `new`, sorted.
fn changed_devices(old: &[AssignmentRow], new: &[AssignmentRow]) -> Vec<String> {
    fn index(rows: &[AssignmentRow]) -> HashMap<&str, &str> {
        rows.iter()
            .map(|r| (r.device_id.as_str(), r.assignment_json.as_str()))
            .collect()
    }
    let (old_index, new_index) = (index(old), index(new));
    let mut changed: Vec<String> = old_index
        .keys()
        .chain(new_index.keys().filter(|d| !old_index.contains_key(*d)))
        .filter(|device| old_index.get(*device) != new_index.get(*device))
        .map(|device| device.to_string())
        .collect();
    changed.sort_unstable();
    changed
}

pub fn rfc3339(ms: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.round(k8s_openapi::jiff::Unit::Second)
                .map(|t| t.to_string())
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
