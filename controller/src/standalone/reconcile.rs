//! Standalone mode's reconcile loop: `ModelDeployment`s come from SQL (written by the REST
//! API) and status goes back to SQL. The reconciler is the one Kubernetes mode uses; only the
//! source and the status sink differ. Runs on every API write, on every fleet change (`kick`)
//! and when a deployment's `requeue_after` comes due.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edgefleet_crds::ModelDeploymentSpec;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::reconcile::{DeploymentInput, ReconcileError, Reconciler};
use crate::store::StoredDeployment;

use super::api::stored_status;

/// Reconciles until `stop` turns true.
pub async fn run(
    reconciler: Arc<Reconciler>,
    changed: Arc<Notify>,
    mut kick: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut due: BTreeMap<(String, String), Instant> = BTreeMap::new();
    let mut everything = true;
    loop {
        if *stop.borrow() {
            return;
        }
        match reconciler.fleet().store.list_deployments().await {
            Ok(deployments) => {
                due.retain(|key, _| {
                    deployments
                        .iter()
                        .any(|d| (&d.namespace, &d.name) == (&key.0, &key.1))
                });
                for d in deployments {
                    let key = (d.namespace.clone(), d.name.clone());
                    let is_due = due.get(&key).is_none_or(|at| *at <= Instant::now());
                    if !(everything || is_due || d.deleting) {
                        continue;
                    }
                    let next = match once(&reconciler, &d).await {
                        Ok(after) => after,
                        Err(err) => {
                            tracing::warn!(deployment = %format!("{}/{}", d.namespace, d.name),
                                category = err.category(), %err, "reconcile failed");
                            Duration::from_secs(5)
                        }
                    };
                    due.insert(key, Instant::now() + next);
                }
            }
            Err(err) => {
                reconciler.fleet().metrics.store_errors.inc();
                tracing::warn!(%err, "listing deployments failed");
            }
        }
        let next = due
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        everything = tokio::select! {
            _ = changed.notified() => true,
            result = kick.changed() => {
                if result.is_err() { return; }
                true
            }
            _ = tokio::time::sleep_until(next) => false,
            _ = stop.changed() => return,
        };
    }
}

/// One deployment: removal if it is being deleted, else a reconcile whose status is stored
/// when it changed. Returns when to come back.
pub async fn once(
    reconciler: &Reconciler,
    d: &StoredDeployment,
) -> Result<Duration, ReconcileError> {
    let now = now_ms();
    if d.deleting {
        reconciler.remove(&d.namespace, &d.name, now).await?;
        tracing::info!(deployment = %format!("{}/{}", d.namespace, d.name), "models removed; deployment deleted");
        return Ok(Duration::from_secs(3600));
    }
    let spec: ModelDeploymentSpec = serde_json::from_str(&d.spec_json)
        .map_err(|e| crate::store::StoreError::Corrupt(format!("deployments.spec_json: {e}")))?;
    let previous = stored_status(d);
    let input = DeploymentInput {
        namespace: &d.namespace,
        name: &d.name,
        uid: &d.uid,
        generation: Some(d.generation),
        spec: &spec,
        status: previous.as_ref(),
    };
    let output = reconciler.reconcile(&input, now).await?;
    if previous.as_ref() != Some(&output.status) {
        let json = serde_json::to_string(&output.status)
            .map_err(|e| crate::store::StoreError::Corrupt(e.to_string()))?;
        reconciler
            .fleet()
            .store
            .set_deployment_status(&d.namespace, &d.name, &json)
            .await?;
    }
    for event in output.events {
        if event.warning {
            tracing::warn!(deployment = %format!("{}/{}", d.namespace, d.name), reason = event.reason, "{}", event.message);
        } else {
            tracing::info!(deployment = %format!("{}/{}", d.namespace, d.name), reason = event.reason, "{}", event.message);
        }
    }
    Ok(output.requeue_after)
}
