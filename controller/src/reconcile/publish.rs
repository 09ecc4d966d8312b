//! Desired documents out: each device's full document rebuilt from its assignments across
//! deployments, stored, and handed to a [`Publisher`] (the MQTT link in production).

use std::collections::HashMap;

use edgefleet_core::desired::{EncodedDesired, SentDocument, next_desired};
use edgefleet_protocol::wire::{Assignment, DeviceId};
use futures::future::BoxFuture;

use super::{ReconcileError, Reconciler};
use crate::store::DesiredWrite;

/// Devices whose desired documents are rebuilt per round of reads, writes and publishes.
const PUBLISH_CHUNK: usize = 2000;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PublishError(pub String);

/// Where desired documents go. The controller publishes them retained over MQTT; tests
/// record them.
pub trait Publisher: Send + Sync {
    fn publish<'a>(
        &'a self,
        document: &'a EncodedDesired,
    ) -> BoxFuture<'a, Result<(), PublishError>>;
}

/// One deployment's assignments as the caller has just written them, so that rebuilding the
/// documents reads only the other deployments' rows back (and parses none of these).
pub(super) struct Written<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// Device id → its assignment for this deployment; absent: none.
    pub assignments: HashMap<&'a str, &'a Assignment>,
}

impl Reconciler {
    /// Rebuilds one device's full desired document and publishes it if it changed.
    pub async fn publish_device(&self, device: &str, now_ms: i64) -> Result<(), ReconcileError> {
        self.publish_devices(&[device.to_string()], None, now_ms)
            .await
    }

    /// Rebuilds the full desired documents of `devices` and publishes those that changed.
    /// Reads and writes go set-at-a-time, a chunk of devices per query and per transaction;
    /// each chunk is stored before it is published, and published while the next chunk is
    /// read, built and stored.
    pub(super) async fn publish_devices(
        &self,
        devices: &[String],
        written: Option<&Written<'_>>,
        now_ms: i64,
    ) -> Result<(), ReconcileError> {
        // ids come from validated hellos; nothing to publish to otherwise
        let ids: Vec<(DeviceId, &str)> = devices
            .iter()
            .filter_map(|d| Some((DeviceId::new(d.as_str()).ok()?, d.as_str())))
            .collect();
        let _guard = self.publish_lock.lock().await;
        let mut stored: Vec<EncodedDesired> = Vec::new();
        for chunk in ids.chunks(PUBLISH_CHUNK) {
            let (next, published) = tokio::join!(
                self.build_and_store(chunk, written, now_ms),
                self.publish_all(&stored)
            );
            published?;
            stored = next?;
        }
        self.publish_all(&stored).await
    }

    /// The chunk's documents that changed, stored.
    async fn build_and_store(
        &self,
        chunk: &[(DeviceId, &str)],
        written: Option<&Written<'_>>,
        now_ms: i64,
    ) -> Result<Vec<EncodedDesired>, ReconcileError> {
        let store = &self.fleet.store;
        let names: Vec<&str> = chunk.iter().map(|(_, name)| *name).collect();
        let mut others = match written {
            Some(w) => {
                store
                    .assignments_of_devices_except(&names, w.namespace, w.name)
                    .await?
            }
            None => store.assignments_of_devices(&names).await?,
        };
        let sent = store.desired_of_devices(&names).await?;
        let mut documents = Vec::new();
        for (id, name) in chunk {
            let mut assignments: Vec<Assignment> = others
                .remove(*name)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, _, record)| std::sync::Arc::unwrap_or_clone(record.assignment))
                .collect();
            if let Some(mine) = written.and_then(|w| w.assignments.get(name)) {
                assignments.push((*mine).clone());
            }
            let previous = sent.get(*name).map(|(generation, payload)| SentDocument {
                generation: *generation,
                payload,
            });
            documents.extend(next_desired(id, assignments, previous.as_ref()));
        }
        let writes: Vec<DesiredWrite> = documents
            .iter()
            .map(|doc| DesiredWrite {
                device: doc.desired.device_id.as_str(),
                generation: i64::try_from(doc.desired.generation).unwrap_or(i64::MAX),
                document_json: &doc.payload,
            })
            .collect();
        store.put_desired_many(&writes, now_ms).await?;
        Ok(documents)
    }

    async fn publish_all(&self, documents: &[EncodedDesired]) -> Result<(), ReconcileError> {
        for document in documents {
            self.publisher.publish(document).await?;
        }
        Ok(())
    }
}
