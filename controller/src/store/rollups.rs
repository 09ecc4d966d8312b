//! Telemetry shared by replicas: `telemetry_seqs` (which windows were counted, per device) and
//! `cohort_rollups` (each replica's per-cohort, per-interval sums). A batch of windows is
//! claimed and its roll-ups written in one transaction, so a window is counted once by exactly
//! one replica, or (transaction lost) not at all and free to be counted on redelivery.

use std::collections::BTreeMap;

use edgefleet_core::analysis::CohortWindow;
use edgefleet_core::replay::{Refusal, ReplayWindow};
use sqlx::Row;

use super::batch::{CHUNK, placeholders, value_rows};
use super::*;

/// One cohort of one deployment, as roll-ups are keyed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupCohort {
    pub variant: String,
    pub device_class: String,
    /// `canary` or `stable`.
    pub role: String,
}

/// One writer's sums of one cohort over one interval, to store.
pub struct RollupWrite {
    pub namespace: String,
    pub name: String,
    pub cohort: RollupCohort,
    pub interval_start_ms: i64,
    pub window: CohortWindow,
}

/// Every writer's roll-ups of one deployment, merged per cohort and interval start.
pub type DeploymentRollups = BTreeMap<RollupCohort, BTreeMap<i64, CohortWindow>>;

impl Store {
    /// Claims telemetry windows `(device, seq)` and, in the same transaction, writes the
    /// roll-up rows `rollups` builds from the outcome (one per claim, in order). A window
    /// number above `i64::MAX` cannot be stored and is refused as stale.
    pub async fn count_windows(
        &self,
        claims: &[(&str, u64)],
        writer: &str,
        rollups: impl FnOnce(&[Result<(), Refusal>]) -> Vec<RollupWrite>,
    ) -> Result<Vec<Result<(), Refusal>>> {
        let mut devices: Vec<&str> = claims.iter().map(|(device, _)| *device).collect();
        devices.sort_unstable();
        devices.dedup();
        let mut tx = self.pool.begin().await?;
        let mut state: BTreeMap<&str, ReplayWindow> = BTreeMap::new();
        let postgres = self.placeholders == batch::Placeholders::Numbered;
        for chunk in devices.chunks(CHUNK) {
            if postgres {
                // Rows exist before they are locked, so two replicas seeing a device's first
                // windows at once queue on one row instead of both inserting. (SQLite has one
                // writer: its transaction holds the whole file.)
                let sql = self.placeholders.sql(format!(
                    "INSERT INTO telemetry_seqs (device_id, highest_seq, seen_below) VALUES {}
                     ON CONFLICT (device_id) DO NOTHING",
                    value_rows(1, chunk.len(), 3)
                ));
                let mut query = sqlx::query(&sql);
                for device in chunk {
                    query = query.bind(*device).bind(-1i64).bind(0i64);
                }
                query.execute(&mut *tx).await?;
            }
            let lock = if postgres { " FOR UPDATE" } else { "" };
            let sql = self.placeholders.sql(format!(
                "SELECT device_id, highest_seq, seen_below FROM telemetry_seqs
                 WHERE device_id IN ({}) ORDER BY device_id{lock}",
                placeholders(1, chunk.len())
            ));
            let mut query = sqlx::query(&sql);
            for device in chunk {
                query = query.bind(*device);
            }
            for row in query.fetch_all(&mut *tx).await? {
                let device: String = row.try_get(0)?;
                let highest: i64 = row.try_get(1)?;
                let below: i64 = row.try_get(2)?;
                let Ok(index) = devices.binary_search(&device.as_str()) else {
                    continue;
                };
                state.insert(
                    devices[index],
                    ReplayWindow {
                        highest: u64::try_from(highest).ok(),
                        below: below as u64, // a bit mask stored in a signed column
                    },
                );
            }
        }
        let read = state.clone();
        let outcomes: Vec<Result<(), Refusal>> = claims
            .iter()
            .map(|(device, seq)| {
                let window = state.entry(device).or_default();
                if i64::try_from(*seq).is_err() {
                    return Err(Refusal::Stale);
                }
                window.claim(*seq).map(|next| *window = next)
            })
            .collect();
        // only devices with a window counted now: a round of duplicates writes no claim row
        let changed: Vec<(&str, ReplayWindow)> = state
            .into_iter()
            .filter(|(device, window)| read.get(device) != Some(window))
            .collect();
        for chunk in changed.chunks(CHUNK) {
            let sql = self.placeholders.sql(format!(
                "INSERT INTO telemetry_seqs (device_id, highest_seq, seen_below) VALUES {}
                 ON CONFLICT (device_id) DO UPDATE SET highest_seq = excluded.highest_seq,
                   seen_below = excluded.seen_below",
                value_rows(1, chunk.len(), 3)
            ));
            let mut query = sqlx::query(&sql);
            for (device, window) in chunk {
                let highest = window.highest.and_then(|h| i64::try_from(h).ok());
                query = query
                    .bind(*device)
                    .bind(highest.unwrap_or(-1))
                    .bind(window.below as i64);
            }
            query.execute(&mut *tx).await?;
        }
        let rows = rollups(&outcomes);
        for chunk in rows.chunks(CHUNK / 2) {
            let sql = self.placeholders.sql(format!(
                "INSERT INTO cohort_rollups (namespace, name, variant, device_class, role,
                   interval_start_ms, writer, window_json) VALUES {}
                 ON CONFLICT (namespace, name, variant, device_class, role, interval_start_ms,
                   writer) DO UPDATE SET window_json = excluded.window_json",
                value_rows(1, chunk.len(), 8)
            ));
            let mut query = sqlx::query(&sql);
            for row in chunk {
                let json = serde_json::to_string(&row.window)
                    .map_err(|e| StoreError::Corrupt(format!("roll-up not serialisable: {e}")))?;
                query = query
                    .bind(row.namespace.as_str())
                    .bind(row.name.as_str())
                    .bind(row.cohort.variant.as_str())
                    .bind(row.cohort.device_class.as_str())
                    .bind(row.cohort.role.as_str())
                    .bind(row.interval_start_ms)
                    .bind(writer)
                    .bind(json);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Every writer's roll-ups of a deployment for intervals starting at or after `since_ms`,
    /// merged per cohort and interval.
    pub async fn rollups_of(
        &self,
        namespace: &str,
        name: &str,
        since_ms: i64,
    ) -> Result<DeploymentRollups> {
        let rows = sqlx::query(
            "SELECT variant, device_class, role, interval_start_ms, window_json
             FROM cohort_rollups
             WHERE namespace = $1 AND name = $2 AND interval_start_ms >= $3",
        )
        .bind(namespace)
        .bind(name)
        .bind(since_ms)
        .fetch_all(&self.reader)
        .await?;
        let mut merged = DeploymentRollups::new();
        for row in rows {
            let cohort = RollupCohort {
                variant: row.try_get(0)?,
                device_class: row.try_get(1)?,
                role: row.try_get(2)?,
            };
            let start: i64 = row.try_get(3)?;
            let json: String = row.try_get(4)?;
            let window: CohortWindow = serde_json::from_str(&json).map_err(|e| {
                StoreError::Corrupt(format!("roll-up of {namespace}/{name} {cohort:?}: {e}"))
            })?;
            merged
                .entry(cohort)
                .or_default()
                .entry(start)
                .or_default()
                .merge(&window);
        }
        Ok(merged)
    }

    /// Drops roll-ups of intervals that started before `before_ms`.
    pub async fn prune_rollups(&self, before_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM cohort_rollups WHERE interval_start_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
