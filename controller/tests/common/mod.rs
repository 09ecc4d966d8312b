//! Shared test helpers.
#![allow(dead_code, unused_imports)]

/// A throw-away PostgreSQL database, from the shared end-to-end harness.
pub use edgefleet_e2e::TempPostgres;

/// A reconciler over an in-memory SQLite fleet store whose desired documents are recorded
/// instead of published.
pub mod fleet {
    use std::sync::{Arc, Mutex};

    use edgefleet_controller::attribution::Attribution;
    use edgefleet_controller::inventory::Inventory;
    use edgefleet_controller::metrics::Metrics;
    use edgefleet_controller::reconcile::{FleetState, PublishError, Publisher, Reconciler};
    use edgefleet_controller::store::Store;
    use edgefleet_controller::telemetry::Telemetry;
    use edgefleet_core::desired::EncodedDesired;
    use edgefleet_protocol::wire::{Desired, DeviceId, Hello, ModelPhase, ModelState, StateReport};
    use futures::future::BoxFuture;

    /// Keeps every document it is asked to publish.
    #[derive(Default)]
    pub struct RecordingPublisher(pub Mutex<Vec<Desired>>);

    impl Publisher for RecordingPublisher {
        fn publish<'a>(
            &'a self,
            document: &'a EncodedDesired,
        ) -> BoxFuture<'a, Result<(), PublishError>> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(document.desired.clone());
            Box::pin(std::future::ready(Ok(())))
        }
    }

    /// Fleet state over a fresh in-memory store, telemetry sliced per `slice_ms`.
    pub async fn fleet_state(metrics: Metrics, slice_ms: i64, retention_ms: i64) -> FleetState {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        fleet_state_over(
            store,
            metrics,
            Arc::new(Telemetry::new(slice_ms, retention_ms, "first".into())),
        )
        .await
    }

    /// Fleet state over an existing store (a restarted controller).
    pub async fn fleet_state_over(
        store: Store,
        metrics: Metrics,
        telemetry: Arc<Telemetry>,
    ) -> FleetState {
        let inventory = Inventory::load(store.clone(), metrics.clone())
            .await
            .expect("inventory");
        FleetState {
            store,
            inventory: Arc::new(inventory),
            telemetry,
            attribution: Arc::new(Attribution::default()),
            metrics,
        }
    }

    pub fn reconciler(fleet: FleetState, publisher: Arc<RecordingPublisher>) -> Reconciler {
        Reconciler::new(fleet, publisher)
    }

    impl RecordingPublisher {
        /// The last desired document each device received.
        pub fn last_documents(&self) -> std::collections::BTreeMap<String, Desired> {
            let sent = self.0.lock().unwrap_or_else(|p| p.into_inner());
            sent.iter()
                .map(|d| (d.device_id.to_string(), d.clone()))
                .collect()
        }
    }

    /// A tract device of the `lab` site.
    pub fn hello(id: &str, arch: &str, memory_mib: u64) -> Hello {
        Hello {
            device_id: DeviceId::new(id).expect("id"),
            agent_version: "test".into(),
            labels: std::collections::BTreeMap::from([("site".into(), "lab".into())]),
            arch: arch.into(),
            cores: 4,
            cpu_features: vec![],
            memory_total_mib: memory_mib,
            memory_available_mib: memory_mib / 2,
            disk_free_mib: 10_000,
            accelerators: vec![],
            runtimes: vec![edgefleet_crds::Runtime::Tract],
            site_cache_url: None,
        }
    }

    /// `device` serves, Ready, every model of its desired document `doc`.
    pub fn ready_report(device: &str, doc: &Desired) -> StateReport {
        StateReport {
            device_id: DeviceId::new(device).expect("id"),
            generation: doc.generation,
            models: doc
                .assignments
                .iter()
                .map(|a| ModelState {
                    deployment: a.deployment.clone(),
                    variant: a.variant.clone(),
                    version: a.model.version.clone(),
                    sha256: a.artifact.sha256.clone(),
                    phase: ModelPhase::Ready,
                    bytes_done: None,
                    bytes_total: None,
                    reason: None,
                    serving_sha256: Some(a.artifact.sha256.clone()),
                    fetched: None,
                })
                .collect(),
        }
    }
}
