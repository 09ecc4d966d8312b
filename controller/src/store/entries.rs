//! `assignment_entries`: each distinct (wire assignment, reason) of a deployment stored once
//! and named by its rows' `entry_key`. Reads parse each entry once and share it between the
//! records naming it; a rollout to any number of devices has a handful of entries.

use std::collections::HashMap;
use std::sync::Arc;

use edgefleet_protocol::wire::Assignment;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Result, Store, StoreError};

/// How long an entry no row names is kept. A reader that loaded a deployment's entries before
/// its rows can meet a row naming an entry written in between; it loads the entries again, and
/// finds it as long as entries outlive that window by far.
const UNNAMED_ENTRY_GRACE_MS: i64 = 60 * 60 * 1000;

/// What the rows naming one entry share.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub assignment: Arc<Assignment>,
    pub reason: Arc<str>,
}

/// An entry as written: its key and its columns.
pub(super) struct EncodedEntry {
    pub key: String,
    pub assignment_json: String,
    pub reason: Arc<str>,
}

impl EncodedEntry {
    pub fn new(assignment: &Assignment, reason: &Arc<str>) -> Result<Self> {
        let assignment_json =
            serde_json::to_string(assignment).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // JSON text has no raw newline, so the two parts cannot run into each other
        let mut hasher = Sha256::new();
        hasher.update(assignment_json.as_bytes());
        hasher.update(b"\n");
        hasher.update(reason.as_bytes());
        Ok(Self {
            key: hex::encode(hasher.finalize()),
            assignment_json,
            reason: Arc::clone(reason),
        })
    }
}

/// A deployment's entries by key.
pub(super) type DeploymentEntries = HashMap<String, Entry>;

/// Entries read back, per deployment (namespace → name → entries), loaded on first use.
#[derive(Default)]
pub(crate) struct SharedEntries {
    deployments: HashMap<String, HashMap<String, DeploymentEntries>>,
}

impl SharedEntries {
    fn get(&self, namespace: &str, name: &str) -> Option<&DeploymentEntries> {
        self.deployments.get(namespace)?.get(name)
    }
}

impl Store {
    /// Every entry of deployment `namespace/name`, parsed.
    pub(super) async fn load_entries(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<DeploymentEntries> {
        let rows = sqlx::query(
            "SELECT entry_key, assignment_json, reason FROM assignment_entries
             WHERE namespace = $1 AND name = $2",
        )
        .bind(namespace)
        .bind(name)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                let key: String = r.try_get(0)?;
                let json: String = r.try_get(1)?;
                let assignment = serde_json::from_str(&json).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "assignment_entries.assignment_json of {namespace}/{name} entry {key}: {e}"
                    ))
                })?;
                let reason: String = r.try_get(2)?;
                let entry = Entry {
                    assignment: Arc::new(assignment),
                    reason: reason.into(),
                };
                Ok((key, entry))
            })
            .collect()
    }

    /// The entry `key` of deployment `namespace/name`, for rows read before this call: their
    /// entries were committed with them and outlive them by the grace period, so one reload of
    /// entries loaded earlier finds it, and a key still missing is corruption.
    pub(super) async fn entry_of_row(
        &self,
        shared: &mut SharedEntries,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Entry> {
        if let Some(entry) = shared.get(namespace, name).and_then(|e| e.get(key)) {
            return Ok(entry.clone());
        }
        let entries = self.load_entries(namespace, name).await?;
        let found = entries.get(key).cloned();
        shared
            .deployments
            .entry(namespace.to_string())
            .or_default()
            .insert(name.to_string(), entries);
        found.ok_or_else(|| missing_entry(namespace, name, key))
    }
}

pub(super) fn missing_entry(namespace: &str, name: &str, key: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "an assignment of {namespace}/{name} names entry {key}, which assignment_entries does not hold"
    ))
}

/// Writes `entries` (distinct keys) of one deployment, or marks them written now. A
/// statement per entry: a write names a handful whatever the number of rows.
pub(super) async fn put_entries(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    namespace: &str,
    name: &str,
    entries: &[&EncodedEntry],
    now_ms: i64,
) -> Result<()> {
    for entry in entries {
        sqlx::query(
            "INSERT INTO assignment_entries (namespace, name, entry_key, assignment_json, reason, written_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (namespace, name, entry_key) DO UPDATE SET written_ms = excluded.written_ms",
        )
        .bind(namespace)
        .bind(name)
        .bind(entry.key.as_str())
        .bind(entry.assignment_json.as_str())
        .bind(&*entry.reason)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Drops the deployment's entries that no row names and no write named within the grace period.
pub(super) async fn prune_entries(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    namespace: &str,
    name: &str,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "DELETE FROM assignment_entries
         WHERE namespace = $1 AND name = $2 AND written_ms < $3
           AND NOT EXISTS (SELECT 1 FROM assignments a
                           WHERE a.namespace = assignment_entries.namespace
                             AND a.name = assignment_entries.name
                             AND a.entry_key = assignment_entries.entry_key)",
    )
    .bind(namespace)
    .bind(name)
    .bind(now_ms - UNNAMED_ENTRY_GRACE_MS)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use edgefleet_core::AssignmentRecord;
    use edgefleet_protocol::wire::Role;

    use super::*;

    fn record(device: &str, variant: &str, reason: &str) -> AssignmentRecord {
        let mut record = edgefleet_core::testutil::record(device, "1", Role::Stable, None);
        Arc::make_mut(&mut record.assignment).variant = variant.into();
        record.reason = reason.into();
        record
    }

    async fn entry_count(store: &Store) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM assignment_entries")
            .fetch_one(store.pool())
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn rows_alike_share_one_stored_entry_and_read_back_shared() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        // equal entries behind different allocations still make one entry
        let rows = vec![
            record("d1", "int8", "fits"),
            record("d2", "int8", "fits"),
            record("d3", "fp32", "fits"),
        ];
        let stored = store
            .replace_assignments("ns", "md", &rows, 1)
            .await
            .expect("write");
        assert_eq!(stored, rows);
        assert_eq!(entry_count(&store).await, 2);
        let read = store.assignments("ns", "md").await.expect("read");
        assert_eq!(read, rows);
        assert!(Arc::ptr_eq(&read[0].assignment, &read[1].assignment));
        assert!(Arc::ptr_eq(&read[0].reason, &read[1].reason));
    }

    #[tokio::test]
    async fn an_entry_no_row_names_goes_after_the_grace_period() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        let int8 = vec![record("d1", "int8", "fits")];
        let fp32 = vec![record("d1", "fp32", "fits")];
        store
            .replace_assignments("ns", "md", &int8, 1_000)
            .await
            .expect("int8");
        store
            .replace_assignments("ns", "md", &fp32, 2_000)
            .await
            .expect("fp32");
        assert_eq!(
            entry_count(&store).await,
            2,
            "int8 kept within the grace period"
        );
        let later = 2_000 + UNNAMED_ENTRY_GRACE_MS + 1;
        let back = vec![record("d1", "fp32", "fits"), record("d2", "fp32", "fits")];
        store
            .replace_assignments("ns", "md", &back, later)
            .await
            .expect("fp32 again");
        assert_eq!(
            entry_count(&store).await,
            1,
            "int8 dropped, fp32 still named"
        );
        assert_eq!(store.assignments("ns", "md").await.expect("read"), back);
    }

    #[tokio::test]
    async fn a_row_naming_a_missing_or_unreadable_entry_is_a_clear_error() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        store
            .replace_assignments("ns", "md", &[record("d1", "int8", "fits")], 1)
            .await
            .expect("write");
        sqlx::query("UPDATE assignment_entries SET assignment_json = '{not json'")
            .execute(store.pool())
            .await
            .expect("corrupt it");
        let err = store.assignments("ns", "md").await.expect_err("corrupt");
        assert!(
            err.to_string()
                .contains("assignment_entries.assignment_json of ns/md"),
            "{err}"
        );
        sqlx::query("DELETE FROM assignment_entries")
            .execute(store.pool())
            .await
            .expect("lose it");
        for err in [
            store.assignments("ns", "md").await.expect_err("missing"),
            store.device_assignments("d1").await.expect_err("missing"),
        ] {
            assert!(
                err.to_string().contains("names entry") && err.to_string().contains("ns/md"),
                "{err}"
            );
        }
    }
}
