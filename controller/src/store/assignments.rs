//! `assignments`: which device runs what for each deployment, and what it last reported.

use futures::TryStreamExt;
use sqlx::Row;

use super::*;

/// A write of this many rows refreshes PostgreSQL's statistics of the table at once.
const BULK_WRITE_ROWS: usize = 10_000;

/// Reads of a deployment's rows that meet a concurrent write (see [`Store::assignments`])
/// before giving up.
const READ_ATTEMPTS: usize = 3;

impl Store {
    /// The deployment's rows, sorted by device id in byte order (callers look records up by
    /// id, whatever the database's collation).
    pub async fn assignments(&self, namespace: &str, name: &str) -> Result<Vec<AssignmentRecord>> {
        // Entries first, then the rows against them. A row naming an entry the deployment's
        // reconcile wrote between the two reads starts the read over.
        let mut missing = String::new();
        for _ in 0..READ_ATTEMPTS {
            let entries = self.load_entries(namespace, name).await?;
            match self.rows_against(namespace, name, &entries).await? {
                Ok(mut records) => {
                    sort_by_device(&mut records);
                    return Ok(records);
                }
                Err(key) => missing = key,
            }
        }
        Err(entries::missing_entry(namespace, name, &missing))
    }

    /// The deployment's rows of `devices` (sorted by device id; devices without a row are
    /// left out): what a pass re-reads for the devices that reported since the last one.
    pub async fn assignments_of(
        &self,
        namespace: &str,
        name: &str,
        devices: &[&str],
    ) -> Result<Vec<AssignmentRecord>> {
        let mut missing = String::new();
        'attempt: for _ in 0..READ_ATTEMPTS {
            let entries = self.load_entries(namespace, name).await?;
            let mut records = Vec::with_capacity(devices.len());
            for chunk in devices.chunks(batch::CHUNK) {
                let sql = self.placeholders.sql(format!(
                    "SELECT {ASSIGNMENT_COLUMNS} FROM assignments
                     WHERE namespace = $1 AND name = $2 AND device_id IN ({})",
                    batch::placeholders(3, chunk.len())
                ));
                let mut query = sqlx::query(&sql).bind(namespace).bind(name);
                for device in chunk {
                    query = query.bind(*device);
                }
                for row in query.fetch_all(&self.reader).await? {
                    let key: &str = row.try_get(ENTRY_KEY_COLUMN)?;
                    let Some(entry) = entries.get(key) else {
                        missing = key.to_string();
                        continue 'attempt;
                    };
                    records.push(assignment_from_row(&row, entry)?);
                }
            }
            sort_by_device(&mut records);
            return Ok(records);
        }
        Err(entries::missing_entry(namespace, name, &missing))
    }

    /// The deployment's rows as records, or the first entry key `entries` lacks. Streamed,
    /// not fetched whole: the raw rows would be held beside the records.
    async fn rows_against(
        &self,
        namespace: &str,
        name: &str,
        entries: &entries::DeploymentEntries,
    ) -> Result<std::result::Result<Vec<AssignmentRecord>, String>> {
        let sql = format!(
            "SELECT {ASSIGNMENT_COLUMNS} FROM assignments
             WHERE namespace = $1 AND name = $2 ORDER BY device_id"
        );
        let mut rows = sqlx::query(&sql)
            .bind(namespace)
            .bind(name)
            .fetch(&self.reader);
        let mut records = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let key: &str = row.try_get(ENTRY_KEY_COLUMN)?;
            let Some(entry) = entries.get(key) else {
                return Ok(Err(key.to_string()));
            };
            records.push(assignment_from_row(&row, entry)?);
        }
        Ok(Ok(records))
    }

    /// Makes the deployment's assignments exactly `rows` (device reports of unchanged
    /// assignments are kept; changed ones start over). One transaction, set-at-a-time
    /// statements: cost grows linearly with the number of rows.
    pub async fn replace_assignments(
        &self,
        namespace: &str,
        name: &str,
        rows: &[AssignmentRecord],
        now_ms: i64,
    ) -> Result<Vec<AssignmentRecord>> {
        let current = self.assignments(namespace, name).await?;
        self.replace_assignments_over(namespace, name, &current, rows.to_vec(), now_ms)
            .await
    }

    /// [`Store::replace_assignments`] when the caller has just read the `current` rows.
    /// Returns `rows` as stored (moved, not copied: a rollout's rows are the largest thing
    /// reconcile holds): a row for the same model keeps the device's last report.
    pub async fn replace_assignments_over(
        &self,
        namespace: &str,
        name: &str,
        current: &[AssignmentRecord],
        mut rows: Vec<AssignmentRecord>,
        now_ms: i64,
    ) -> Result<Vec<AssignmentRecord>> {
        let current: HashMap<&str, &AssignmentRecord> =
            current.iter().map(|r| (r.device_id.as_str(), r)).collect();
        let wanted: HashSet<&str> = rows.iter().map(|r| r.device_id.as_str()).collect();
        let gone: Vec<&str> = current
            .keys()
            .copied()
            .filter(|device| !wanted.contains(device))
            .collect();
        // the device's reports stay with the row while it is the same model
        let kept_report = |row: &AssignmentRecord| {
            current
                .get(row.device_id.as_str())
                .copied()
                .filter(|old| old.version() == row.version() && old.variant() == row.variant())
        };
        let writes: Vec<batch::AssignmentWrite> = rows
            .iter()
            .filter(|row| {
                let old = current.get(row.device_id.as_str());
                !old.is_some_and(|old| {
                    old.reason == row.reason
                        && old.assignment == row.assignment
                        && old.generation == row.generation
                })
            })
            .map(|row| batch::AssignmentWrite {
                row,
                kept_report: kept_report(row),
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        batch::delete_assignments(&mut tx, self.placeholders, namespace, name, &gone).await?;
        batch::upsert_assignments(&mut tx, self.placeholders, namespace, name, &writes, now_ms)
            .await?;
        if !gone.is_empty() || !writes.is_empty() {
            entries::prune_entries(&mut tx, namespace, name, now_ms).await?;
        }
        tx.commit().await?;
        // PostgreSQL plans from statistics that autovacuum refreshes only a minute or so after
        // a bulk write; until then it takes a deployment for a few rows and scans all of them
        // for each chunk of devices a later read names
        let postgres = self.placeholders == batch::Placeholders::Numbered;
        if postgres && writes.len() >= BULK_WRITE_ROWS {
            sqlx::query("ANALYZE assignments")
                .execute(&self.pool)
                .await?;
        }
        drop(writes);
        for row in &mut rows {
            let kept = kept_report(row);
            row.phase = kept.and_then(|o| o.phase);
            row.phase_reason = kept.and_then(|o| o.phase_reason.clone());
            row.serving_sha256 = kept.and_then(|o| o.serving_sha256.clone());
        }
        // the order of a read: callers compare against one
        sort_by_device(&mut rows);
        Ok(rows)
    }

    /// Every assignment of one device across deployments: `(namespace, name, row)`.
    pub async fn device_assignments(
        &self,
        device: &str,
    ) -> Result<Vec<(String, String, AssignmentRecord)>> {
        let sql = format!(
            "SELECT {ASSIGNMENT_COLUMNS}, namespace, name
             FROM assignments WHERE device_id = $1 ORDER BY namespace, name"
        );
        let rows = sqlx::query(&sql).bind(device).fetch_all(&self.pool).await?;
        let mut shared = entries::SharedEntries::default();
        let mut records = Vec::with_capacity(rows.len());
        for r in &rows {
            let (key, namespace, name): (&str, String, String) = (
                r.try_get(ENTRY_KEY_COLUMN)?,
                r.try_get(ENTRY_KEY_COLUMN + 1)?,
                r.try_get(ENTRY_KEY_COLUMN + 2)?,
            );
            let entry = self
                .entry_of_row(&mut shared, &namespace, &name, key)
                .await?;
            records.push((namespace, name, assignment_from_row(r, &entry)?));
        }
        Ok(records)
    }
}

/// Records in device-id byte order; rows read in that order already cost one pass.
fn sort_by_device(records: &mut [AssignmentRecord]) {
    if !records.is_sorted_by(|a, b| a.device_id <= b.device_id) {
        records.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    }
}
