//! Desired documents out: each device's full document rebuilt from its assignments across
//! deployments, stored, and handed to a [`Publisher`] (the MQTT link in production).

use edgefleet_core::desired::{SentDocument, next_desired};
use edgefleet_protocol::wire::{Desired, DeviceId};
use futures::future::BoxFuture;

use super::{ReconcileError, Reconciler};
use crate::store::{DesiredWrite, StoreError};

/// Devices whose desired documents are rebuilt per round of reads, writes and publishes.
const PUBLISH_CHUNK: usize = 2000;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PublishError(pub String);

/// Where desired documents go. The controller publishes them retained over MQTT; tests
/// record them.
pub trait Publisher: Send + Sync {
    fn publish<'a>(&'a self, desired: &'a Desired) -> BoxFuture<'a, Result<(), PublishError>>;
}

impl Reconciler {
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
        let store = &self.fleet.store;
        // ids come from validated hellos; nothing to publish to otherwise
        let ids: Vec<(DeviceId, &str)> = devices
            .iter()
            .filter_map(|d| Some((DeviceId::new(d.as_str()).ok()?, d.as_str())))
            .collect();
        let _guard = self.publish_lock.lock().await;
        for chunk in ids.chunks(PUBLISH_CHUNK) {
            let names: Vec<&str> = chunk.iter().map(|(_, name)| *name).collect();
            let mut records = store.assignments_of_devices(&names).await?;
            let sent = store.desired_of_devices(&names).await?;
            let mut documents = Vec::new();
            for (id, name) in chunk {
                let assignments = records
                    .remove(*name)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(_, _, record)| record.assignment)
                    .collect();
                let previous = sent.get(*name).map(|(generation, json)| SentDocument {
                    generation: *generation,
                    assignments: serde_json::from_str::<Desired>(json)
                        .ok()
                        .map(|d| d.assignments),
                });
                if let Some(doc) = next_desired(id, assignments, previous.as_ref()) {
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
            store.put_desired_many(&writes, now_ms).await?;
            for (doc, _) in &documents {
                self.publisher.publish(doc).await?;
            }
        }
        Ok(())
    }
}
