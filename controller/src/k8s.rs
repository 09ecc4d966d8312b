//! Kubernetes mode: `ModelDeployment`s come from the API server through a kube-rs
//! `Controller`; status goes back through the status subresource, decisions as Events. Only
//! the holder of the Lease acts; other replicas keep watching, ready to take over.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;
use std::sync::Mutex;

use edgefleet_crds::ModelDeployment;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::clock::{now_ms, rfc3339};
use crate::reconcile::{DeploymentInput, ReconcileError, Reconciler};

mod guard;
pub use guard::{GuardedDeployment, UNREADABLE_REASON, Unreadable, UnreadableGauge};

/// Removed only after the deployment's models left every device.
pub const FINALIZER: &str = "edgefleet.io/cleanup";
const FIELD_MANAGER: &str = "edgefleet-controller";

pub struct Context {
    pub reconciler: Arc<Reconciler>,
    pub client: Client,
    pub recorder: Recorder,
    /// True while this replica holds the Lease.
    pub leader: watch::Receiver<bool>,
    /// Unreadable objects already logged at WARN (`ns/name@generation: field`), so repeated
    /// reconciles of the same one do not flood the log.
    warned_unreadable: Mutex<HashSet<String>>,
}

impl Context {
    pub fn new(reconciler: Arc<Reconciler>, client: Client, leader: watch::Receiver<bool>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("EDGEFLEET_IDENTITY").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            reconciler,
            client,
            recorder,
            leader,
            warned_unreadable: Mutex::default(),
        }
    }
}

/// Runs the controller until `shutdown` resolves. `kick` fires a reconcile of every
/// deployment (device joined or left, devices made progress).
pub async fn run(
    context: Arc<Context>,
    watch_namespace: Option<String>,
    kick: impl futures::Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Guarded: an object that does not deserialize is kept (and reported) instead of failing
    // the whole LIST, which would stop every deployment.
    let api: Api<GuardedDeployment> = match &watch_namespace {
        Some(ns) => Api::namespaced(context.client.clone(), ns),
        None => Api::all(context.client.clone()),
    };
    let (reader, writer) = reflector::store();
    if let Err(err) = context
        .reconciler
        .fleet()
        .metrics
        .registry
        .register(Box::new(UnreadableGauge::new(reader.clone())))
    {
        tracing::warn!(%err, "edgefleet_deployments_unreadable is not exported");
    }
    // Status patches must not wake the controller: only spec changes, deletion and finalizers do.
    let deployments = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_lifecycle, Default::default());
    Controller::for_stream(deployments, reader)
        .reconcile_all_on(kick)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "reconcile round ended with an error");
            }
        })
        .await;
}

fn spec_or_lifecycle(object: &GuardedDeployment) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = object.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.uid.hash(&mut hasher);
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    object.finalizers().hash(&mut hasher);
    Some(hasher.finish())
}

fn key(object: &impl Resource) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

#[tracing::instrument(skip_all, fields(deployment = %key(object.as_ref())))]
pub async fn reconcile(
    object: Arc<GuardedDeployment>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if !*context.leader.borrow() {
        if let Ok(md) = &object.0 {
            mirror(md, &context).await;
        }
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    match &object.0 {
        Ok(md) => reconcile_readable(Arc::new(md.clone()), context).await,
        Err(bad) => reconcile_unreadable(bad, object.object_ref(&()), &context).await,
    }
}

/// A standby's pass: the leader's attribution, read from the store, for the telemetry this
/// replica counts. A failure costs a log line; the next pass tries again.
async fn mirror(md: &ModelDeployment, context: &Context) {
    let namespace = md.namespace().unwrap_or_else(|| "default".into());
    let uid = md.uid().unwrap_or_default();
    let mirrored = context
        .reconciler
        .mirror(&namespace, &md.name_any(), Some(&uid))
        .await;
    if let Err(err) = mirrored {
        tracing::warn!(%err, "standby could not mirror the leader's assignments");
    }
}

async fn reconcile_readable(
    md: Arc<ModelDeployment>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let namespace = md.namespace().unwrap_or_else(|| "default".into());
    let api: Api<ModelDeployment> = Api::namespaced(context.client.clone(), &namespace);
    finalizer(&api, FINALIZER, md, |event| async {
        match event {
            Finalizer::Apply(md) => apply(&md, &context).await,
            Finalizer::Cleanup(md) => {
                cleanup(&namespace, &md.name_any(), &md.object_ref(&()), &context).await
            }
        }
    })
    .await
    .map_err(|err| match err {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Kube(other.to_string()),
    })
}

async fn apply(md: &ModelDeployment, context: &Context) -> Result<Action, ReconcileError> {
    let namespace = md.namespace().unwrap_or_else(|| "default".into());
    let name = md.name_any();
    let uid = md.uid().unwrap_or_default();
    let input = DeploymentInput {
        namespace: &namespace,
        name: &name,
        uid: &uid,
        generation: md.metadata.generation,
        spec: &md.spec,
        status: md.status.as_ref(),
    };
    let output = context.reconciler.reconcile(&input, now_ms()).await?;
    if md.status.as_ref() != Some(&output.status) {
        let api: Api<ModelDeployment> = Api::namespaced(context.client.clone(), &namespace);
        let patch = serde_json::json!({ "status": output.status });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| ReconcileError::Kube(format!("patching status: {e}")))?;
    }
    let reference = md.object_ref(&());
    for event in output.events {
        publish_event(
            context,
            &reference,
            event.reason,
            event.message,
            event.warning,
        )
        .await;
    }
    Ok(Action::requeue(output.requeue_after))
}

async fn cleanup(
    namespace: &str,
    name: &str,
    reference: &ObjectReference,
    context: &Context,
) -> Result<Action, ReconcileError> {
    context.reconciler.remove(namespace, name, now_ms()).await?;
    publish_event(
        context,
        reference,
        "ModelsRemoved",
        "the model was removed from every device".into(),
        false,
    )
    .await;
    Ok(Action::await_change())
}

/// An object this controller cannot read gets `SpecValid=False` naming the field and a
/// warning Event, once per change; its devices keep what they run. Deleting it still works:
/// cleanup needs only its name, so the finalizer is removed without reading the spec.
async fn reconcile_unreadable(
    bad: &Unreadable,
    reference: ObjectReference,
    context: &Context,
) -> Result<Action, ReconcileError> {
    let namespace = bad.metadata.namespace.as_deref().unwrap_or("default");
    let name = bad.metadata.name.as_deref().unwrap_or_default();
    let api: Api<GuardedDeployment> = Api::namespaced(context.client.clone(), namespace);
    if bad.metadata.deletion_timestamp.is_some() {
        let finalizers = bad.metadata.finalizers.clone().unwrap_or_default();
        if finalizers.iter().any(|f| f == FINALIZER) {
            cleanup(namespace, name, &reference, context).await?;
            let remaining: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
            // resourceVersion makes the merge patch fail rather than drop a finalizer added since
            let patch = serde_json::json!({ "metadata": {
                "finalizers": remaining,
                "resourceVersion": bad.metadata.resource_version,
            }});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| ReconcileError::Kube(format!("removing the finalizer: {e}")))?;
        }
        return Ok(Action::await_change());
    }
    let warned = format!(
        "{namespace}/{name}@{}: {}",
        bad.metadata.generation.unwrap_or_default(),
        bad.field
    );
    let first_time = context
        .warned_unreadable
        .lock()
        .map(|mut seen| seen.insert(warned))
        .unwrap_or(true);
    if first_time {
        tracing::warn!(
            deployment = %format!("{namespace}/{name}"),
            field = %bad.field,
            error = %bad.error,
            "cannot read this ModelDeployment; it is not reconciled until it is fixed"
        );
    }
    let status = guard::unreadable_status(bad, &rfc3339(now_ms()));
    if bad.status.as_ref() != Some(&status) {
        publish_event(
            context,
            &reference,
            UNREADABLE_REASON,
            guard::unreadable_message(bad),
            true,
        )
        .await;
        let patch = serde_json::json!({ "status": status });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| ReconcileError::Kube(format!("patching status: {e}")))?;
    }
    Ok(Action::await_change())
}

/// Events are best effort: a failure to record one never fails the reconcile.
async fn publish_event(
    context: &Context,
    reference: &ObjectReference,
    reason: &str,
    note: String,
    warning: bool,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = context.recorder.publish(&event, reference).await {
        tracing::warn!(%err, reason, "could not record an Event");
    }
}

fn error_policy(
    object: Arc<GuardedDeployment>,
    error: &ReconcileError,
    context: Arc<Context>,
) -> Action {
    tracing::warn!(deployment = %key(object.as_ref()), category = error.category(), %error, "reconcile failed");
    // Store and publish failures were counted by the reconciler; only the Kubernetes API's
    // own failures (patching status, events) are counted here, so each failure counts once.
    if let ReconcileError::Kube(_) = error {
        context
            .reconciler
            .fleet()
            .metrics
            .reconcile_errors
            .with_label_values(&[error.category()])
            .inc();
    }
    Action::requeue(Duration::from_secs(5))
}

/// Holds the Lease (or pretends to, when leader election is off) and reports leadership.
pub async fn leadership(
    client: Client,
    lease_name: &str,
    lease_namespace: &str,
    identity: &str,
    metrics: crate::metrics::Metrics,
) -> Result<
    (watch::Receiver<bool>, tokio::task::JoinHandle<()>),
    kube_lease_manager::LeaseManagerError,
> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, lease_name)
        .with_namespace(lease_namespace)
        .with_identity(identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leader, task) = manager.watch().await;
    let (tx, rx) = watch::channel(false);
    let relay = tokio::spawn(async move {
        loop {
            let is_leader = *leader.borrow_and_update();
            metrics.leader.set(i64::from(is_leader));
            tracing::info!(is_leader, "leadership");
            if tx.send(is_leader).is_err() || leader.changed().await.is_err() {
                break;
            }
        }
        metrics.leader.set(0);
        drop(leader);
        if let Ok(Err(err)) = task.await {
            tracing::warn!(%err, "lease manager stopped");
        }
    });
    Ok((rx, relay))
}
