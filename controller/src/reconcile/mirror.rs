//! A replica that does not reconcile (a standby, an ingest worker) decides nothing and writes
//! nothing, but counts the telemetry a shared MQTT subscription hands it; it learns from the
//! fleet store which devices are canaries and which variants are known, exactly as the leader
//! last wrote them.

use super::{ReconcileError, Reconciler};
use crate::store::rollout_state;

impl Reconciler {
    /// Mirrors one deployment's attribution (roles, known variants) from the store; with
    /// `uid`, only if the stored rollout belongs to that object (not to an older one of the
    /// same name).
    pub async fn mirror(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Result<(), ReconcileError> {
        let fleet = &self.fleet;
        let key = format!("{namespace}/{name}");
        // the leader writes this deployment's rows now: a pass carried from when this
        // replica led is out of date
        self.carried.forget(&key);
        let stored = fleet.store.rollout(namespace, name).await?;
        let Some(row) = stored.filter(|row| uid.is_none_or(|uid| row.uid == uid)) else {
            return Ok(()); // the leader has not reconciled this deployment yet
        };
        let state = rollout_state(&row)?;
        let records = fleet.store.assignments(namespace, name).await?;
        fleet.attribution.set_variants(&key, state.variant_names());
        fleet.attribution.assign(&key, &records);
        Ok(())
    }

    /// Mirrors every deployment the store has a rollout for; one that fails is logged and
    /// tried again next time.
    pub async fn mirror_all(&self) -> Result<(), ReconcileError> {
        for (namespace, name) in self.fleet.store.rollout_keys().await? {
            if let Err(err) = self.mirror(&namespace, &name, None).await {
                tracing::warn!(%err, deployment = %format!("{namespace}/{name}"),
                    "could not mirror the leader's assignments");
            }
        }
        Ok(())
    }
}
