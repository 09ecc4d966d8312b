//! The supervisor: applies desired documents (via the pure reconciler), runs installs
//! (pull → verify → load → self-test → switch), keeps the persisted state and reports phases.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use edgefleet_protocol::wire::{
    Assignment, Desired, DeviceId, FetchedBytes, ModelPhase, ModelState, StateReport,
};

use crate::install::assignments::{self, Action, Rejection};
use crate::install::fetch::Via;
use crate::install::load::{load_and_test, load_stored};
use crate::install::pull;
use crate::install::repository::Wanted;
use crate::install::store::PersistedState;
use crate::link::mqtt::Command;
use crate::registry::Served;
use crate::runtime::Model;

pub use crate::install::context::InstallContext;

pub enum Event {
    Progress {
        deployment: String,
        sha256: String,
        phase: ModelPhase,
        done: u64,
        total: u64,
    },
    Installed {
        // Boxed: an assignment (with its offload policy) dwarfs a progress event.
        assignment: Box<Assignment>,
        result: Result<Arc<dyn Model>, String>,
    },
}

pub struct Supervisor {
    device: DeviceId,
    ctx: Arc<InstallContext>,
    persisted: PersistedState,
    phases: BTreeMap<String, ModelState>,
    /// Deployments removed by the current generation, reported once as `Removed`.
    removed: Vec<ModelState>,
    installing: HashMap<String, (String, AbortHandle)>,
    events: mpsc::Sender<Event>,
    mqtt: mpsc::Sender<Command>,
}

fn model_state(a: &Assignment, phase: ModelPhase, serving: Option<String>) -> ModelState {
    ModelState {
        deployment: a.deployment.clone(),
        variant: a.variant.clone(),
        version: a.model.version.clone(),
        sha256: a.artifact.sha256.clone(),
        phase,
        bytes_done: None,
        bytes_total: None,
        reason: None,
        serving_sha256: serving,
        fetched: None,
    }
}

impl Supervisor {
    pub fn new(
        device: DeviceId,
        ctx: Arc<InstallContext>,
        persisted: PersistedState,
        events: mpsc::Sender<Event>,
        mqtt: mpsc::Sender<Command>,
    ) -> Supervisor {
        Supervisor {
            device,
            ctx,
            persisted,
            phases: BTreeMap::new(),
            removed: Vec::new(),
            installing: HashMap::new(),
            events,
            mqtt,
        }
    }

    fn serving_sha(&self, deployment: &str) -> Option<String> {
        self.ctx
            .registry
            .by_deployment(deployment)
            .map(|s| s.sha256().to_string())
    }

    /// Serves the models persisted by the last run (falling back to the previous one of a
    /// deployment whose current model no longer loads), before any broker is reachable.
    pub async fn restore(&mut self) {
        let records = self.persisted.deployments.clone();
        for (deployment, record) in records {
            let candidates = record.serving.iter().chain(record.previous.iter());
            let mut restored = None;
            for a in candidates {
                match load_stored(&self.ctx, a).await {
                    Ok(model) => {
                        restored = Some((a.clone(), model));
                        break;
                    }
                    Err(e) => {
                        tracing::error!(%deployment, sha = %a.artifact.sha256, error = %e, "cannot restore model")
                    }
                }
            }
            match restored {
                Some((a, model)) => {
                    tracing::info!(%deployment, sha = %a.artifact.sha256, "serving restored model");
                    self.phases.insert(
                        deployment.clone(),
                        model_state(&a, ModelPhase::Ready, Some(a.artifact.sha256.clone())),
                    );
                    let entry = self.persisted.deployments.entry(deployment).or_default();
                    if entry.serving.as_ref() != Some(&a) {
                        entry.serving = Some(a.clone());
                        entry.previous = None;
                    }
                    self.ctx.registry.insert(Served {
                        assignment: a,
                        model,
                    });
                }
                None => {
                    self.persisted.deployments.remove(&deployment);
                }
            }
        }
        self.save();
    }

    /// Re-applies the persisted desired document (resuming interrupted installs).
    pub fn resume(&mut self) {
        if let Some(desired) = self.persisted.desired.clone() {
            self.apply(desired);
        }
    }

    pub fn on_desired(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            // Someone cleared the retained document: that withdraws nothing by itself (the
            // controller removes models with a document that lists fewer of them).
            tracing::info!("desired document cleared on the broker; keeping the current models");
            return;
        }
        match assignments::accept(&self.device, payload, self.persisted.applied_generation()) {
            Ok(desired) => {
                tracing::info!(
                    generation = desired.generation,
                    assignments = desired.assignments.len(),
                    "applying desired state"
                );
                self.ctx.metrics.desired_applied.inc();
                self.apply(desired);
            }
            // The retained document comes again on every reconnect: expected, not a problem.
            Err(Rejection::Stale {
                generation,
                applied,
            }) if generation == applied => {
                tracing::debug!(generation, "desired document already applied");
            }
            Err(rejection) => {
                self.ctx
                    .metrics
                    .desired_rejected
                    .with_label_values(&[rejection.kind()])
                    .inc();
                tracing::warn!(reason = rejection.kind(), error = %rejection, "ignoring desired message");
            }
        }
    }

    fn apply(&mut self, desired: Desired) {
        self.removed.clear();
        let serving: BTreeMap<String, Assignment> = self
            .persisted
            .deployments
            .iter()
            .filter_map(|(d, r)| r.serving.clone().map(|a| (d.clone(), a)))
            .collect();
        for action in assignments::plan(&desired, &serving) {
            match action {
                Action::Remove(deployment) => self.remove(&deployment),
                Action::Update(a) => {
                    self.abort(&a.deployment);
                    if let Some(old) = self.ctx.registry.by_deployment(&a.deployment) {
                        self.ctx.registry.insert(Served {
                            assignment: a.clone(),
                            model: old.model.clone(),
                        });
                    }
                    let sha = a.artifact.sha256.clone();
                    self.phases.insert(
                        a.deployment.clone(),
                        model_state(&a, ModelPhase::Ready, Some(sha)),
                    );
                    let deployment = a.deployment.clone();
                    self.persisted
                        .deployments
                        .entry(deployment)
                        .or_default()
                        .serving = Some(a);
                }
                Action::Install(a) => self.start_install(a),
            }
        }
        // Installs of deployments that were never serving and are no longer wanted.
        let wanted = |d: &str| desired.assignments.iter().any(|a| a.deployment == d);
        let stale: Vec<String> = self
            .phases
            .keys()
            .chain(self.installing.keys())
            .filter(|d| !wanted(d))
            .cloned()
            .collect();
        for deployment in stale {
            self.remove(&deployment);
        }
        for a in &desired.assignments {
            let settled = serving
                .get(&a.deployment)
                .is_some_and(|current| assignments::same_artifact(current, a));
            if settled {
                // Back to what already serves (after a failed or superseded install of another
                // artifact): that install is moot and its phase no longer describes the device.
                self.abort(&a.deployment);
                let sha = a.artifact.sha256.clone();
                self.phases.insert(
                    a.deployment.clone(),
                    model_state(a, ModelPhase::Ready, Some(sha)),
                );
            } else if !self.phases.contains_key(&a.deployment) {
                let sha = self.serving_sha(&a.deployment);
                self.phases
                    .insert(a.deployment.clone(), model_state(a, ModelPhase::Ready, sha));
            }
        }
        self.persisted.desired = Some(desired);
        self.save();
        self.gc();
        self.report();
    }

    fn remove(&mut self, deployment: &str) {
        self.abort(deployment);
        let old = self.ctx.registry.remove(deployment);
        let record = self.persisted.deployments.remove(deployment);
        let phase = self.phases.remove(deployment);
        let assignment = record
            .and_then(|r| r.serving)
            .or_else(|| old.map(|s| s.assignment.clone()));
        if let Some(a) = assignment {
            tracing::info!(%deployment, "model removed");
            self.removed
                .push(model_state(&a, ModelPhase::Removed, None));
        } else if let Some(mut state) = phase {
            state.phase = ModelPhase::Removed;
            state.serving_sha256 = None;
            self.removed.push(state);
        }
    }

    fn abort(&mut self, deployment: &str) {
        if let Some((sha, handle)) = self.installing.remove(deployment) {
            tracing::info!(%deployment, %sha, "cancelling superseded install");
            handle.abort();
        }
    }

    pub fn abort_all(&mut self) {
        for (_, (_, handle)) in self.installing.drain() {
            handle.abort();
        }
    }

    fn start_install(&mut self, a: Assignment) {
        let deployment = a.deployment.clone();
        let sha = a.artifact.sha256.clone();
        if let Some((installing, _)) = self.installing.get(&deployment)
            && *installing == sha
        {
            return;
        }
        self.abort(&deployment);
        let phase = if self.ctx.store.has_artifact(&sha) {
            ModelPhase::Loading
        } else {
            ModelPhase::Downloading
        };
        let mut state = model_state(&a, phase, self.serving_sha(&deployment));
        if phase == ModelPhase::Downloading {
            state.bytes_done = Some(0);
            state.bytes_total = Some(a.artifact.size_bytes);
        }
        self.phases.insert(deployment.clone(), state);
        tracing::info!(%deployment, %sha, uri = %a.artifact.uri, "installing model");
        let task = tokio::spawn(install(self.ctx.clone(), a, self.events.clone()));
        self.installing
            .insert(deployment, (sha, task.abort_handle()));
    }

    pub fn on_event(&mut self, event: Event) {
        match event {
            Event::Progress {
                deployment,
                sha256,
                phase,
                done,
                total,
            } => {
                if self.installing.get(&deployment).map(|(s, _)| s) != Some(&sha256) {
                    return;
                }
                if let Some(state) = self.phases.get_mut(&deployment) {
                    state.phase = phase;
                    let downloading = phase == ModelPhase::Downloading;
                    state.bytes_done = downloading.then_some(done);
                    state.bytes_total = downloading.then_some(total);
                }
                self.report();
            }
            Event::Installed { assignment, result } => self.on_installed(*assignment, result),
        }
    }

    fn on_installed(&mut self, installed: Assignment, result: Result<Arc<dyn Model>, String>) {
        let deployment = installed.deployment.clone();
        let sha = installed.artifact.sha256.clone();
        if self.installing.get(&deployment).map(|(s, _)| s) != Some(&sha) {
            return;
        }
        self.installing.remove(&deployment);
        // The current assignment (its role may have changed while this was installing).
        let current = self
            .persisted
            .desired
            .as_ref()
            .and_then(|d| d.assignments.iter().find(|a| a.deployment == deployment))
            .filter(|a| assignments::same_artifact(a, &installed))
            .cloned();
        let Some(a) = current else {
            return;
        };
        match result {
            Ok(model) => {
                self.ctx.registry.insert(Served {
                    assignment: a.clone(),
                    model,
                });
                let record = self
                    .persisted
                    .deployments
                    .entry(deployment.clone())
                    .or_default();
                if let Some(old) = record.serving.take()
                    && old.artifact.sha256 != sha
                {
                    record.previous = Some(old);
                }
                record.serving = Some(a.clone());
                self.phases.insert(
                    deployment.clone(),
                    model_state(&a, ModelPhase::Ready, Some(sha.clone())),
                );
                self.ctx
                    .metrics
                    .model_switches
                    .with_label_values(&["ready"])
                    .inc();
                tracing::info!(%deployment, %sha, "model ready and serving");
                self.save();
                self.gc();
            }
            Err(reason) => {
                let serving = self.serving_sha(&deployment);
                let mut state = model_state(&a, ModelPhase::Failed, serving.clone());
                state.reason = Some(reason.clone());
                self.phases.insert(deployment.clone(), state);
                self.ctx
                    .metrics
                    .model_switches
                    .with_label_values(&["failed"])
                    .inc();
                tracing::error!(%deployment, %sha, %reason, serving = ?serving, "install failed; keeping the previous model");
                // A verified download stays (still wanted): a retry needs no download.
                self.gc();
            }
        }
        self.report();
    }

    fn save(&self) {
        if let Err(e) = self.ctx.store.save_state(&self.persisted) {
            tracing::error!(error = %e, "cannot persist the agent state");
        }
    }

    fn gc(&self) {
        let mut keep = self.persisted.referenced();
        keep.extend(self.installing.values().map(|(sha, _)| sha.clone()));
        // the per-source byte counts go with the artifacts they describe
        self.ctx
            .fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|sha, _| keep.contains(sha));
        match self.ctx.store.gc(&keep) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(?removed, "garbage-collected old artifacts");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }

    /// The applied document's assignments with their phases, for the repository index.
    fn publish_install_states(&self) {
        let wanted = self
            .persisted
            .desired
            .iter()
            .flat_map(|d| &d.assignments)
            .filter_map(|a| {
                self.phases.get(&a.deployment).map(|state| Wanted {
                    model: a.model.name.clone(),
                    state: state.clone(),
                })
            })
            .collect();
        self.ctx.install_states.publish(wanted);
    }

    pub fn state_report(&self) -> Option<StateReport> {
        let desired = self.persisted.desired.as_ref()?;
        let fetched = self.ctx.fetched.lock().unwrap_or_else(|e| e.into_inner());
        let models = desired
            .assignments
            .iter()
            .filter_map(|a| self.phases.get(&a.deployment).cloned())
            .map(|mut state| {
                state.fetched = fetched.get(&state.sha256).copied();
                state
            })
            .chain(self.removed.iter().cloned())
            .collect();
        Some(StateReport {
            device_id: self.device.clone(),
            generation: desired.generation,
            models,
        })
    }

    fn report(&self) {
        self.publish_install_states();
        if let Some(report) = self.state_report()
            && self.mqtt.try_send(Command::State(report)).is_err()
        {
            tracing::warn!("MQTT command queue full; a state report was dropped");
        }
    }
}

async fn install(ctx: Arc<InstallContext>, a: Assignment, events: mpsc::Sender<Event>) {
    let result = install_inner(&ctx, &a, &events).await;
    let _ = events
        .send(Event::Installed {
            assignment: Box::new(a),
            result,
        })
        .await;
}

async fn install_inner(
    ctx: &Arc<InstallContext>,
    a: &Assignment,
    events: &mpsc::Sender<Event>,
) -> Result<Arc<dyn Model>, String> {
    if ctx.backend(a.runtime).is_none() {
        return Err(format!(
            "runtime {} is not available on this device",
            a.runtime.as_str()
        ));
    }
    // Before any byte is downloaded: an unsigned or forged artifact costs no bandwidth.
    ctx.trusted_keys
        .verify(&a.artifact)
        .map_err(|e| format!("signature: {e}"))?;
    let reported = AtomicU64::new(u64::MAX);
    let step = (a.artifact.size_bytes / 20).max(64 * 1024);
    let progress = |via: Via, new: u64, done: u64, total: u64| {
        ctx.metrics
            .download_bytes
            .with_label_values(&[via.as_str()])
            .inc_by(new);
        let last = reported.load(Ordering::Relaxed);
        if last == u64::MAX || done >= total || done.abs_diff(last) >= step {
            reported.store(done, Ordering::Relaxed);
            let phase = if done >= total {
                ModelPhase::Verifying
            } else {
                ModelPhase::Downloading
            };
            let _ = events.try_send(Event::Progress {
                deployment: a.deployment.clone(),
                sha256: a.artifact.sha256.clone(),
                phase,
                done,
                total,
            });
        }
    };
    let site_cache = a.site_cache.as_deref();
    let pulled = pull::pull(
        &ctx.sources,
        &ctx.store,
        &a.artifact,
        site_cache,
        ctx.free_limit,
        &progress,
    )
    .await
    .map_err(|e| format!("{}: {e}", e.kind()))?;
    if pulled.fetched != FetchedBytes::default() {
        ctx.fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(a.artifact.sha256.clone(), pulled.fetched);
    }
    let path = pulled.path;
    let _ = events
        .send(Event::Progress {
            deployment: a.deployment.clone(),
            sha256: a.artifact.sha256.clone(),
            phase: ModelPhase::Loading,
            done: 0,
            total: 0,
        })
        .await;
    load_and_test(ctx, a, path).await
}
