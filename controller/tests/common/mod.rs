//! Shared test helpers.
#![allow(dead_code)]

use sqlx::Connection;

/// A throw-away PostgreSQL database on 127.0.0.1:5432 (or `EDGEFLEET_TEST_POSTGRES`).
pub struct TempPostgres {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TempPostgres {
    pub async fn create(purpose: &str) -> Self {
        let admin_url = std::env::var("EDGEFLEET_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!(
            "edgefleet_{purpose}_{}_{}",
            std::process::id(),
            rand_suffix()
        );
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 (scripts/test.sh starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(admin_url.clone());
        Self {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        }
    }

    pub async fn drop(self) {
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
    }
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos % 1_000_000
}

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
    use edgefleet_protocol::wire::Desired;
    use futures::future::BoxFuture;

    /// Keeps every document it is asked to publish.
    #[derive(Default)]
    pub struct RecordingPublisher(pub Mutex<Vec<Desired>>);

    impl Publisher for RecordingPublisher {
        fn publish<'a>(&'a self, desired: &'a Desired) -> BoxFuture<'a, Result<(), PublishError>> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(desired.clone());
            Box::pin(std::future::ready(Ok(())))
        }
    }

    /// Fleet state over a fresh in-memory store, telemetry sliced per `slice_ms`.
    pub async fn fleet_state(metrics: Metrics, slice_ms: i64, retention_ms: i64) -> FleetState {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        fleet_state_over(
            store,
            metrics,
            Arc::new(Telemetry::new(slice_ms, retention_ms)),
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
}
