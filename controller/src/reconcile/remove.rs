//! A deleted deployment: its models leave every device, then its rows, its telemetry and its
//! series go.

use std::collections::BTreeSet;

use super::status::DEVICE_STATES;
use super::{ReconcileError, Reconciler};

impl Reconciler {
    /// Takes a deleted deployment's models off its devices and forgets it.
    pub async fn remove(
        &self,
        namespace: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<(), ReconcileError> {
        let fleet = &self.fleet;
        let key = format!("{namespace}/{name}");
        self.carried.forget(&key);
        let old = fleet.store.assignments(namespace, name).await?;
        fleet
            .store
            .replace_assignments(namespace, name, &[], now_ms)
            .await?;
        let devices: Vec<String> = old.into_iter().map(|row| row.device_id).collect();
        self.publish_devices(&devices, None, now_ms).await?;
        fleet.store.purge_deployment(namespace, name).await?;
        fleet.attribution.assign(&key, &[]);
        fleet.attribution.set_variants(&key, BTreeSet::new());
        fleet.telemetry.forget_deployment(namespace, name);
        let metrics = &fleet.metrics;
        for state in DEVICE_STATES {
            let _ = metrics
                .deployment_devices
                .remove_label_values(&[namespace, name, state]);
        }
        let _ = metrics.rollout_step.remove_label_values(&[namespace, name]);
        let _ = metrics
            .rollout_progressing
            .remove_label_values(&[namespace, name]);
        Ok(())
    }
}
