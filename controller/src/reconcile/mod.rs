//! The reconcile pipeline shared by Kubernetes and standalone mode, one file per step:
//! [`validate`] → [`load`] → plan (pure, `edgefleet-core`) → [`apply`] (assignments in SQL,
//! desired documents through a [`Publisher`]; both [`carry`]-ed to the next pass while
//! nothing they read changes) → [`progress`] (the canary turn, pure) →
//! [`status`] (pure, plus its metrics). Where `ModelDeployment`s come from and where status
//! goes is the adapters' business. Only `load`, `apply` and `status` touch the store.

mod apply;
mod carry;
mod follow;
mod load;
mod mirror;
mod progress;
mod publish;
mod remove;
mod republish;
mod resolve;
mod status;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use edgefleet_core::plan::{RolloutPlan, Stage, plan_rollout};
use edgefleet_core::rollout::{RolloutEvent, RolloutState};
use edgefleet_core::site::site_caches;
use edgefleet_core::{AssignmentRecord, DeviceFacts};
use edgefleet_crds::{ModelDeploymentSpec, ModelDeploymentStatus, Phase};

use carry::{Carried, CarriedPasses, PassInputs, Planned};
pub use publish::{PublishError, Publisher};

use crate::attribution::Attribution;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;

/// The fleet state reconcile and ingest share: the fleet store, what devices announced, their
/// aggregated telemetry, which role their windows count for, and the metrics.
#[derive(Clone)]
pub struct FleetState {
    pub store: Store,
    pub inventory: Arc<Inventory>,
    pub telemetry: Arc<Telemetry>,
    pub attribution: Arc<Attribution>,
    pub metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("fleet store: {0}")]
    Store(#[from] StoreError),
    #[error("publishing a desired document: {0}")]
    Publish(#[from] PublishError),
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

impl DeploymentInput<'_> {
    /// `namespace/name`, as assignments and telemetry name the deployment.
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

pub struct ReconcileOutput {
    pub status: ModelDeploymentStatus,
    pub requeue_after: Duration,
    pub events: Vec<RolloutEvent>,
}

/// Where artifacts come from besides plain URLs: the OCI registry client (with the
/// controller's credentials) and the device label that names a device's site.
pub struct Distribution {
    pub registry: Arc<edgefleet_oci::Registry>,
    pub site_label: String,
}

impl Default for Distribution {
    fn default() -> Self {
        Self {
            registry: Arc::new(edgefleet_oci::Registry::new(&[], Default::default())),
            site_label: "site".into(),
        }
    }
}

pub struct Reconciler {
    fleet: FleetState,
    publisher: Arc<dyn Publisher>,
    distribution: Distribution,
    /// Serialises desired-document rebuilds: two deployments touching one device must not
    /// both read generation N and publish N+1.
    publish_lock: tokio::sync::Mutex<()>,
    /// Each deployment's last plan and records, for passes in which nothing they depend on
    /// changed.
    carried: CarriedPasses,
}

impl Reconciler {
    pub fn new(fleet: FleetState, publisher: Arc<dyn Publisher>) -> Self {
        Self {
            fleet,
            publisher,
            distribution: Distribution::default(),
            publish_lock: tokio::sync::Mutex::new(()),
            carried: CarriedPasses::default(),
        }
    }

    pub fn with_distribution(mut self, distribution: Distribution) -> Self {
        self.distribution = distribution;
        self
    }

    pub fn fleet(&self) -> &FleetState {
        &self.fleet
    }

    /// One pass over one deployment. Failures are counted here, once, by category.
    pub async fn reconcile(
        &self,
        input: &DeploymentInput<'_>,
        now_ms: i64,
    ) -> Result<ReconcileOutput, ReconcileError> {
        let metrics = &self.fleet.metrics;
        let timer = metrics.reconcile_duration.start_timer();
        let result = self.pipeline(input, now_ms).await;
        timer.observe_duration();
        if let Err(err) = &result {
            metrics
                .reconcile_errors
                .with_label_values(&[err.category()])
                .inc();
        }
        result
    }

    async fn pipeline(
        &self,
        input: &DeploymentInput<'_>,
        now_ms: i64,
    ) -> Result<ReconcileOutput, ReconcileError> {
        if let Some(invalid) = validate::invalid_spec(input, now_ms) {
            return Ok(invalid);
        }
        let mut loaded = load::rollout(&self.fleet.store, input, now_ms).await?;
        let pinned = match self.pinned(input, &loaded.state, now_ms).await? {
            Ok(pinned) => pinned,
            Err(unresolved) => return Ok(resolve::unresolved_output(input, unresolved, now_ms)),
        };
        self.fleet
            .attribution
            .set_variants(&input.key(), loaded.state.variant_names());

        let planned = self.plan_and_apply(input, &pinned, None, now_ms).await?;
        let rollups = progress::load_rollups(&self.fleet, input, &loaded.state, now_ms).await?;
        let turn = progress::turn(
            &self.fleet,
            input,
            &mut loaded.state,
            &planned.plan,
            &planned.records,
            &rollups,
            now_ms,
        );
        let planned = match turn.event {
            // the stage moved: the devices' assignments follow at once
            Some(event) => {
                // the first plan is out of date: not held beside the new one; its rows are
                // what the new plan is written over (up to date as the pass followed them)
                let rows = self.carried.remove(&input.key());
                drop(planned);
                load::record_event(&self.fleet.store, input, &event, now_ms).await?;
                loaded.events.push(event);
                let pinned = RolloutState {
                    target: pinned.target,
                    previous: pinned.previous,
                    ..loaded.state.clone()
                };
                self.plan_and_apply(input, &pinned, rows, now_ms).await?
            }
            None => planned,
        };
        load::save(&self.fleet.store, input, &loaded, now_ms).await?;

        let status = status::build(
            &self.fleet,
            input,
            &loaded.state,
            &planned.plan,
            &planned.records,
            status::Observed {
                verdicts: &turn.verdicts,
                rollups: &rollups,
            },
            now_ms,
        );
        let requeue_after = requeue_after(&loaded.state, status.phase);
        Ok(ReconcileOutput {
            status,
            requeue_after,
            events: loaded.events,
        })
    }
}

impl Reconciler {
    /// The plan over the fleet and the records its write stored: the last pass's brought up
    /// to date when it planned from the same specs and stage, else planned now and written over
    /// `rows` (this pass's, when its stage moved) or over the rows as stored.
    async fn plan_and_apply(
        &self,
        input: &DeploymentInput<'_>,
        pinned: &RolloutState,
        rows: Option<Carried>,
        now_ms: i64,
    ) -> Result<Planned, ReconcileError> {
        let key = input.key();
        let inputs = PassInputs::new(input, pinned);
        if rows.is_none()
            && let Some(carried) = self.carried.take(&key, &inputs, now_ms)
        {
            let whole_at_ms = carried.whole_at_ms;
            if let Some((planned, position)) = self.follow(input, pinned, carried, now_ms).await? {
                self.count_plan("followed");
                let carry = (position, whole_at_ms);
                self.carried.put(key, inputs, planned.clone(), carry);
                return Ok(planned);
            }
        }
        let (position, whole_at_ms, old) = match rows {
            // rows up to date at `position`: the next pass follows what came after
            Some(rows) => {
                let old = Arc::unwrap_or_clone(rows.planned.records);
                (rows.position, rows.whole_at_ms, Some(old))
            }
            // read before the fleet and the rows it covers
            None => (self.fleet.inventory.revision(), now_ms, None),
        };
        let devices = self.fleet.inventory.snapshot();
        let caches = site_caches(&devices, &self.distribution.site_label);
        let plan = plan(input.uid, pinned, &devices);
        drop(devices);
        let (records, held_back) = match old {
            Some(old) => self.apply_over(input, &plan, &caches, old, now_ms).await?,
            None => self.apply(input, &plan, &caches, now_ms).await?,
        };
        let planned = Planned {
            plan: Arc::new(plan),
            records: Arc::new(records),
            held_back,
        };
        self.carried
            .put(key, inputs, planned.clone(), (position, whole_at_ms));
        self.count_plan("planned");
        Ok(planned)
    }

    fn count_plan(&self, how: &str) {
        let plans = &self.fleet.metrics.reconcile_plans;
        plans.with_label_values(&[how]).inc();
    }
}

fn plan(uid: &str, state: &RolloutState, devices: &[Arc<DeviceFacts>]) -> RolloutPlan {
    plan_rollout(
        uid,
        &state.target,
        state.previous.as_ref(),
        state.stage,
        devices,
        &state.demotions,
    )
}

/// How soon to look again: often during a canary, until devices settle after promotion,
/// rarely once settled.
fn requeue_after(state: &RolloutState, phase: Phase) -> Duration {
    match state.stage {
        Stage::Canary { .. } => Duration::from_secs(
            u64::from(state.target.rollout.analysis.interval_seconds).clamp(1, 10),
        ),
        Stage::Promoted if phase != Phase::Succeeded => Duration::from_secs(5),
        _ => Duration::from_secs(60),
    }
}

/// The records of the deployment that `apply` wrote, for the later steps.
type Records = Vec<AssignmentRecord>;
