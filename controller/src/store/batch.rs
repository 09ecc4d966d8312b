//! Set-at-a-time reads and writes for rollouts that touch many devices: one query per chunk of
//! devices instead of one per device, and one transaction per chunk of writes. A rollout to
//! 100,000 devices is then a few hundred statements instead of several hundred thousand.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sqlx::Row;

use edgefleet_protocol::wire::ModelPhase;

use super::entries::{self, EncodedEntry, SharedEntries};
use super::{
    ASSIGNMENT_COLUMNS, AssignmentRecord, ENTRY_KEY_COLUMN, ModelReport, Result, Store,
    assignment_from_row,
};

/// Devices per `IN (...)` list and rows per multi-row `INSERT`: well under SQLite's 32,766
/// and PostgreSQL's 65,535 bind parameters.
pub const CHUNK: usize = 500;

/// `$first, $first+1, ...` for `count` parameters.
pub(super) fn placeholders(first: usize, count: usize) -> String {
    let mut out = String::with_capacity(count * 7);
    push_placeholders(&mut out, first, count);
    out
}

/// `($first, …), ($first+columns, …), …`: the VALUES rows of a multi-row statement. Written
/// into one buffer: a chunk's statement has thousands of placeholders, and a rollout to 100k
/// devices builds hundreds of statements.
pub(super) fn value_rows(first: usize, rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * (columns * 7 + 4));
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        push_placeholders(&mut out, first + columns * row, columns);
        out.push(')');
    }
    out
}

fn push_placeholders(out: &mut String, first: usize, count: usize) {
    use std::fmt::Write as _;
    for i in first..first + count {
        if i > first {
            out.push_str(", ");
        }
        let _ = write!(out, "${i}"); // writing to a String cannot fail
    }
}

/// How the database wants statement parameters written. Batch statements are built with
/// `$1..$N` in order of appearance; SQLite resolves each `$N` by a linear search over the
/// statement's parameter names (when parsing and again when binding), so a multi-row statement
/// with thousands of them costs O(n²). Anonymous `?`, bound in order, costs O(n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placeholders {
    /// PostgreSQL: `$N` as written.
    Numbered,
    /// SQLite: every `$N` becomes `?`.
    Positional,
}

impl Placeholders {
    pub(super) fn sql(self, sql: String) -> String {
        if self == Placeholders::Numbered {
            return sql;
        }
        let mut out = String::with_capacity(sql.len());
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                while chars.peek().is_some_and(char::is_ascii_digit) {
                    chars.next();
                }
                out.push('?');
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// Assignments keyed by device: `(namespace, name, row)` per deployment.
pub type DeviceAssignments = HashMap<String, Vec<(String, String, AssignmentRecord)>>;

/// One desired document to store.
pub struct DesiredWrite<'a> {
    pub device: &'a str,
    pub generation: i64,
    pub document_json: &'a str,
}

/// One assignment row to upsert, with the device's report of the same model to keep.
pub(super) struct AssignmentWrite<'a> {
    pub row: &'a AssignmentRecord,
    pub kept_report: Option<&'a AssignmentRecord>,
}

pub(super) async fn delete_assignments(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    dialect: Placeholders,
    namespace: &str,
    name: &str,
    devices: &[&str],
) -> Result<()> {
    for chunk in devices.chunks(CHUNK) {
        let sql = dialect.sql(format!(
            "DELETE FROM assignments WHERE namespace = $1 AND name = $2 AND device_id IN ({})",
            placeholders(3, chunk.len())
        ));
        let mut query = sqlx::query(&sql).bind(namespace).bind(name);
        for device in chunk {
            query = query.bind(*device);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Upserts `writes` of one deployment and the entries they name (each distinct one written
/// once).
pub(super) async fn upsert_assignments(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    dialect: Placeholders,
    namespace: &str,
    name: &str,
    writes: &[AssignmentWrite<'_>],
    now_ms: i64,
) -> Result<()> {
    // Rows share their entries: each distinct (assignment, reason) pair is encoded once, found
    // by address (every entry stays alive, borrowed by `writes`, for the whole call), and
    // written once per key (equal entries behind different addresses have one key).
    let mut key_of: HashMap<(usize, usize), usize> = HashMap::new();
    let mut encoded: Vec<EncodedEntry> = Vec::new();
    let mut row_keys: Vec<usize> = Vec::with_capacity(writes.len());
    for write in writes {
        let row = write.row;
        let address = (
            Arc::as_ptr(&row.assignment).addr(),
            Arc::as_ptr(&row.reason).cast::<u8>().addr(),
        );
        let index = match key_of.entry(address) {
            Entry::Occupied(index) => *index.get(),
            Entry::Vacant(slot) => {
                encoded.push(EncodedEntry::new(&row.assignment, &row.reason)?);
                *slot.insert(encoded.len() - 1)
            }
        };
        row_keys.push(index);
    }
    let mut distinct: BTreeMap<&str, &EncodedEntry> = BTreeMap::new();
    for entry in &encoded {
        distinct.insert(entry.key.as_str(), entry);
    }
    let distinct: Vec<&EncodedEntry> = distinct.into_values().collect();
    entries::put_entries(tx, namespace, name, &distinct, now_ms).await?;

    const COLUMNS: usize = 12;
    let mut keys = row_keys.iter().map(|&index| encoded[index].key.as_str());
    for chunk in writes.chunks(CHUNK / 2) {
        let values = value_rows(1, chunk.len(), COLUMNS);
        let sql = format!(
            "INSERT INTO assignments (namespace, name, device_id, version, variant, role, entry_key,
               generation, phase, phase_reason, serving_sha256, updated_ms)
             VALUES {values}
             ON CONFLICT (namespace, name, device_id) DO UPDATE SET version = excluded.version,
               variant = excluded.variant, role = excluded.role, entry_key = excluded.entry_key,
               generation = excluded.generation, phase = excluded.phase,
               phase_reason = excluded.phase_reason, serving_sha256 = excluded.serving_sha256,
               updated_ms = excluded.updated_ms"
        );
        let sql = dialect.sql(sql);
        let mut query = sqlx::query(&sql);
        for (write, key) in chunk.iter().zip(&mut keys) {
            let row = write.row;
            let kept = write.kept_report;
            query = query
                .bind(namespace)
                .bind(name)
                .bind(&row.device_id)
                .bind(row.version())
                .bind(row.variant())
                .bind(row.role().as_str())
                .bind(key)
                .bind(row.generation)
                .bind(kept.and_then(|o| o.phase).map(ModelPhase::as_str))
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
    pub async fn assignments_of_devices(&self, devices: &[&str]) -> Result<DeviceAssignments> {
        self.assignments_of_devices_where(devices, None).await
    }

    /// [`Store::assignments_of_devices`] without deployment `namespace/name`'s rows.
    pub async fn assignments_of_devices_except(
        &self,
        devices: &[&str],
        namespace: &str,
        name: &str,
    ) -> Result<DeviceAssignments> {
        self.assignments_of_devices_where(devices, Some((namespace, name)))
            .await
    }

    async fn assignments_of_devices_where(
        &self,
        devices: &[&str],
        except: Option<(&str, &str)>,
    ) -> Result<DeviceAssignments> {
        let mut by_device = DeviceAssignments::new();
        let mut shared = SharedEntries::default();
        for chunk in devices.chunks(CHUNK) {
            // parameters in order of appearance (SQLite binds `?` positionally)
            let n = chunk.len();
            let excluded = match except {
                Some(_) => format!("AND NOT (namespace = ${} AND name = ${})", n + 1, n + 2),
                None => String::new(),
            };
            let sql = format!(
                "SELECT {ASSIGNMENT_COLUMNS}, namespace, name
                 FROM assignments WHERE device_id IN ({}) {excluded}
                 ORDER BY device_id, namespace, name",
                placeholders(1, n)
            );
            let sql = self.placeholders.sql(sql);
            let mut query = sqlx::query(&sql);
            for device in chunk {
                query = query.bind(*device);
            }
            if let Some((namespace, name)) = except {
                query = query.bind(namespace).bind(name);
            }
            for r in query.fetch_all(&self.reader).await? {
                let (key, namespace, name): (&str, String, String) = (
                    r.try_get(ENTRY_KEY_COLUMN)?,
                    r.try_get(ENTRY_KEY_COLUMN + 1)?,
                    r.try_get(ENTRY_KEY_COLUMN + 2)?,
                );
                let entry = self
                    .entry_of_row(&mut shared, &namespace, &name, key)
                    .await?;
                let row = assignment_from_row(&r, &entry)?;
                by_device
                    .entry(row.device_id.clone())
                    .or_default()
                    .push((namespace, name, row));
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
            let sql = self.placeholders.sql(sql);
            let mut query = sqlx::query(&sql);
            for device in chunk {
                query = query.bind(*device);
            }
            for r in query.fetch_all(&self.reader).await? {
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
            let values = value_rows(1, chunk.len(), 4);
            let sql = format!(
                "INSERT INTO device_desired (device_id, generation, document_json, published_ms) VALUES {values}
                 ON CONFLICT (device_id) DO UPDATE SET generation = excluded.generation,
                   document_json = excluded.document_json, published_ms = excluded.published_ms"
            );
            let sql = self.placeholders.sql(sql);
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
    /// Records what devices reported for their assignments, a multi-row `UPDATE` per chunk
    /// in one transaction; a report for an assignment the controller no longer holds (another
    /// version or variant) matches nothing. Of several reports for one assignment the last
    /// wins. Returns how many assignments were updated.
    pub async fn record_model_states(
        &self,
        reports: &[ModelReport<'_>],
        now_ms: i64,
    ) -> Result<u64> {
        if reports.is_empty() {
            return Ok(0);
        }
        // Last report per assignment, in key order: the same in every replica, so a standby
        // recording the same reports as the leader waits for it instead of deadlocking.
        let mut latest: BTreeMap<(&str, &str, &str), &ModelReport> = BTreeMap::new();
        for report in reports {
            latest.insert((report.namespace, report.name, report.device), report);
        }
        let latest: Vec<&ModelReport> = latest.into_values().collect();
        const COLUMNS: usize = 8;
        let mut updated = 0;
        let mut tx = self.pool.begin().await?;
        for chunk in latest.chunks(CHUNK / 2) {
            let values = value_rows(2, chunk.len(), COLUMNS);
            // VALUES columns are column1..column8 in both SQLite and PostgreSQL.
            let sql = self.placeholders.sql(format!(
                "UPDATE assignments SET phase = v.column6, phase_reason = v.column7,
                   serving_sha256 = v.column8, updated_ms = $1
                 FROM (VALUES {values}) AS v
                 WHERE assignments.namespace = v.column1 AND assignments.name = v.column2
                   AND assignments.device_id = v.column3 AND assignments.version = v.column4
                   AND assignments.variant = v.column5"
            ));
            let mut query = sqlx::query(&sql).bind(now_ms);
            for report in chunk {
                query = query
                    .bind(report.namespace)
                    .bind(report.name)
                    .bind(report.device)
                    .bind(report.version)
                    .bind(report.variant)
                    .bind(report.phase)
                    .bind(report.reason)
                    .bind(report.serving_sha256);
            }
            updated += query.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(updated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str) -> AssignmentRecord {
        edgefleet_core::testutil::record(device, "1", edgefleet_protocol::wire::Role::Stable, None)
    }

    #[test]
    fn sqlite_gets_anonymous_parameters_in_the_same_order() {
        let sql = format!(
            "DELETE FROM t WHERE a = $1 AND b IN ({})",
            placeholders(2, 11)
        );
        assert_eq!(Placeholders::Numbered.sql(sql.clone()), sql);
        assert_eq!(
            Placeholders::Positional.sql(sql),
            format!(
                "DELETE FROM t WHERE a = ? AND b IN ({})",
                ["?"; 11].join(", ")
            )
        );
        assert_eq!(Placeholders::Positional.sql("x = '$'".into()), "x = '$'");
        assert_eq!(value_rows(2, 2, 3), "($2, $3, $4), ($5, $6, $7)");
    }

    #[tokio::test]
    async fn batched_reads_and_writes_match_the_per_device_ones() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        // more devices than one chunk, so chunking is exercised
        let devices: Vec<String> = (0..CHUNK + 7).map(|i| format!("d{i:04}")).collect();
        let rows: Vec<AssignmentRecord> = devices.iter().map(|d| row(d)).collect();
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
