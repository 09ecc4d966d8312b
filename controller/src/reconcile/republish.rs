//! Republishing every stored desired document. A broker that restarts without its persisted
//! state has lost the retained documents, so devices that connect afresh would get nothing
//! until their assignment changes; the fleet store still has them all.

use edgefleet_core::desired::EncodedDesired;
use edgefleet_protocol::wire::{self, Desired};

use super::{ReconcileError, Reconciler};

impl Reconciler {
    /// Publishes each device's current document again (same generation: agents that already
    /// run it ignore it). Returns how many were published; a corrupt row is skipped, logged.
    pub async fn republish_all(&self) -> Result<usize, ReconcileError> {
        let _guard = self.publish_lock.lock().await;
        let documents = self.fleet.store.all_desired().await?;
        let mut published = 0;
        for (device, json) in documents {
            match wire::decode::<Desired>(json.as_bytes()) {
                Ok(desired) => {
                    let document = EncodedDesired {
                        desired,
                        payload: json,
                    };
                    self.publisher.publish(&document).await?;
                    published += 1;
                }
                Err(err) => {
                    tracing::error!(%device, %err, "stored desired document is unreadable; skipped");
                }
            }
        }
        Ok(published)
    }
}
