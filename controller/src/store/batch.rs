//! Set-at-a-time reads and writes for rollouts that touch many devices: one query per chunk of
//! devices instead of one per device, and one transaction per chunk of writes. A rollout to
//! 100,000 devices is then a few hundred statements instead of several hundred thousand.

use std::collections::HashMap;

use sqlx::Row;

use super::{AssignmentRow, ModelReport, Result, Store, assignment_from_row};

/// Devices per `IN (...)` list and rows per multi-row `INSERT`: well under SQLite's 32,766
/// and PostgreSQL's 65,535 bind parameters.
pub const CHUNK: usize = 500;

/// `$first, $first+1, ...` for `count` parameters.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One desired document to store.
pub struct DesiredWrite<'a> {
    pub device: &'a str,
    pub generation: i64,
    pub document_json: &'a str,
}

/// One assignment row to upsert, with the device's report of the same model to keep.
pub(super) struct AssignmentWrite<'a> {
    pub row: &'a AssignmentRow,
    pub kept_report: Option<&'a AssignmentRow>,
}

pub(super) async fn delete_assignments(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    namespace: &str,
    name: &str,
    devices: &[&str],
) -> Result<()> {
    for chunk in devices.chunks(CHUNK) {
        let sql = format!(
            "DELETE FROM assignments WHERE namespace = $1 AND name = $2 AND device_id IN ({})",
            placeholders(3, chunk.len())
        );
        let mut query = sqlx::query(&sql).bind(namespace).bind(name);
        for device in chunk {
            query = query.bind(*device);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

pub(super) async fn upsert_assignments(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    namespace: &str,
    name: &str,
    writes: &[AssignmentWrite<'_>],
    now_ms: i64,
) -> Result<()> {
    const COLUMNS: usize = 13;
    // 13 parameters a row: stay well under the bind limits
    for chunk in writes.chunks(CHUNK / 2) {
        let values = (0..chunk.len())
            .map(|i| format!("({})", placeholders(COLUMNS * i + 1, COLUMNS)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO assignments (namespace, name, device_id, version, variant, role, reason, assignment_json,
               generation, phase, phase_reason, serving_sha256, updated_ms)
             VALUES {values}
             ON CONFLICT (namespace, name, device_id) DO UPDATE SET version = excluded.version,
               variant = excluded.variant, role = excluded.role, reason = excluded.reason,
               assignment_json = excluded.assignment_json,
               generation = excluded.generation, phase = excluded.phase,
               phase_reason = excluded.phase_reason, serving_sha256 = excluded.serving_sha256,
               updated_ms = excluded.updated_ms"
        );
        let mut query = sqlx::query(&sql);
        for write in chunk {
            let row = write.row;
            let kept = write.kept_report;
            query = query
                .bind(namespace)
                .bind(name)
                .bind(&row.device_id)
                .bind(&row.version)
                .bind(&row.variant)
                .bind(&row.role)
                .bind(&row.reason)
                .bind(&row.assignment_json)
                .bind(row.generation)
                .bind(kept.and_then(|o| o.phase.clone()))
                .bind(kept.and_then(|o| o.phase_reason.clone()))
                .bind(kept.and_then(|o| o.serving_sha256.clone()))
                .bind(now_ms);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

impl Store {
    /// Every assignment of each of `devices` across deployments, keyed by device:
    /// `(namespace, name, row)` in the order of [`Store::device_assignments`].
    pub async fn assignments_of_devices(
        &self,
        devices: &[&str],
    ) -> Result<HashMap<String, Vec<(String, String, AssignmentRow)>>> {
        let mut by_device: HashMap<String, Vec<(String, String, AssignmentRow)>> = HashMap::new();
        for chunk in devices.chunks(CHUNK) {
            let sql = format!(
                "SELECT device_id, version, variant, role, reason, generation, phase, phase_reason, serving_sha256,
                        assignment_json, namespace, name
                 FROM assignments WHERE device_id IN ({}) ORDER BY device_id, namespace, name",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for device in chunk {
                query = query.bind(*device);
            }
            for r in query.fetch_all(&self.pool).await? {
                let row = assignment_from_row(&r)?;
                let entry = (r.try_get(10)?, r.try_get(11)?, row);
                by_device
                    .entry(entry.2.device_id.clone())
                    .or_default()
                    .push(entry);
            }
        }
        Ok(by_device)
    }

    /// The stored desired document `(generation, json)` of each of `devices` that has one.
    pub async fn desired_of_devices(
        &self,
        devices: &[&str],
    ) -> Result<HashMap<String, (i64, String)>> {
        let mut documents = HashMap::with_capacity(devices.len());
        for chunk in devices.chunks(CHUNK) {
            let sql = format!(
                "SELECT device_id, generation, document_json FROM device_desired WHERE device_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for device in chunk {
                query = query.bind(*device);
            }
            for r in query.fetch_all(&self.pool).await? {
                documents.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
            }
        }
        Ok(documents)
    }

    /// Stores many desired documents in one transaction.
    pub async fn put_desired_many(
        &self,
        documents: &[DesiredWrite<'_>],
        now_ms: i64,
    ) -> Result<()> {
        if documents.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in documents.chunks(CHUNK) {
            let values = (0..chunk.len())
                .map(|i| format!("({})", placeholders(4 * i + 1, 4)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO device_desired (device_id, generation, document_json, published_ms) VALUES {values}
                 ON CONFLICT (device_id) DO UPDATE SET generation = excluded.generation,
                   document_json = excluded.document_json, published_ms = excluded.published_ms"
            );
            let mut query = sqlx::query(&sql);
            for document in chunk {
                query = query
                    .bind(document.device)
                    .bind(document.generation)
                    .bind(document.document_json)
                    .bind(now_ms);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// [`Store::record_model_state`] for many reports in one transaction; which were recorded.
    pub async fn record_model_states(
        &self,
        reports: &[ModelReport<'_>],
        now_ms: i64,
    ) -> Result<Vec<bool>> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        // Rows are locked in key order, the same in every replica: a standby recording the
        // same reports as the leader then waits for it instead of deadlocking with it.
        let mut order: Vec<usize> = (0..reports.len()).collect();
        order.sort_by_key(|&i| (reports[i].namespace, reports[i].name, reports[i].device));
        let mut tx = self.pool.begin().await?;
        let mut recorded = vec![false; reports.len()];
        for i in order {
            recorded[i] = super::record_model_state_on(&mut *tx, &reports[i], now_ms).await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str, json: &str) -> AssignmentRow {
        AssignmentRow {
            device_id: device.into(),
            version: "1".into(),
            variant: "int8".into(),
            role: "stable".into(),
            reason: String::new(),
            assignment_json: json.into(),
            generation: 1,
            phase: None,
            phase_reason: None,
            serving_sha256: None,
        }
    }

    #[tokio::test]
    async fn batched_reads_and_writes_match_the_per_device_ones() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        // more devices than one chunk, so chunking is exercised
        let devices: Vec<String> = (0..CHUNK + 7).map(|i| format!("d{i:04}")).collect();
        let rows: Vec<AssignmentRow> = devices.iter().map(|d| row(d, "{\"a\":1}")).collect();
        store
            .replace_assignments("ns", "a", &rows, 1)
            .await
            .expect("assign a");
        store
            .replace_assignments("ns", "b", &rows[..3], 1)
            .await
            .expect("assign b");
        let ids: Vec<&str> = devices.iter().map(String::as_str).collect();
        let batched = store.assignments_of_devices(&ids).await.expect("batched");
        assert_eq!(batched.len(), devices.len());
        for device in [&devices[0], &devices[CHUNK + 6]] {
            assert_eq!(
                batched[device.as_str()],
                store.device_assignments(device).await.expect("one")
            );
        }
        assert_eq!(batched["d0000"].len(), 2, "both deployments");

        let json: Vec<String> = devices
            .iter()
            .map(|d| format!("{{\"d\":\"{d}\"}}"))
            .collect();
        let writes: Vec<DesiredWrite> = devices
            .iter()
            .zip(&json)
            .map(|(device, json)| DesiredWrite {
                device,
                generation: 3,
                document_json: json,
            })
            .collect();
        store.put_desired_many(&writes, 5).await.expect("write");
        store
            .put_desired_many(&writes[..1], 6)
            .await
            .expect("overwrite");
        let stored = store.desired_of_devices(&ids).await.expect("read");
        assert_eq!(stored.len(), devices.len());
        assert_eq!(stored["d0001"], (3, "{\"d\":\"d0001\"}".to_string()));
        assert_eq!(
            store.desired("d0001").await.expect("one"),
            Some((3, "{\"d\":\"d0001\"}".to_string()))
        );
        assert!(
            store
                .desired_of_devices(&["nope"])
                .await
                .expect("read")
                .is_empty()
        );
    }
}
