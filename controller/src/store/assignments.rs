//! `assignments`: which device runs what for each deployment, and what it last reported.

use sqlx::Row;

use super::*;

impl Store {
    pub async fn assignments(&self, namespace: &str, name: &str) -> Result<Vec<AssignmentRecord>> {
        let rows = sqlx::query(
            "SELECT device_id, version, variant, role, reason, generation, phase, phase_reason, serving_sha256, assignment_json
             FROM assignments WHERE namespace = $1 AND name = $2 ORDER BY device_id",
        )
        .bind(namespace)
        .bind(name)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(assignment_from_row).collect()
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
        self.replace_assignments_over(namespace, name, &current, rows, now_ms)
            .await
    }

    /// [`Store::replace_assignments`] when the caller has just read the `current` rows.
    /// Returns the rows as stored: a row for the same model keeps the device's last report.
    pub async fn replace_assignments_over(
        &self,
        namespace: &str,
        name: &str,
        current: &[AssignmentRecord],
        rows: &[AssignmentRecord],
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
        let mut stored = Vec::with_capacity(rows.len());
        let mut writes = Vec::new();
        for row in rows {
            let old = current.get(row.device_id.as_str()).copied();
            let unchanged = old.is_some_and(|old| {
                old.version == row.version
                    && old.variant == row.variant
                    && old.role == row.role
                    && old.reason == row.reason
                    && old.assignment == row.assignment
                    && old.generation == row.generation
            });
            // the device's reports stay with the row while it is the same model
            let kept_report =
                old.filter(|old| old.version == row.version && old.variant == row.variant);
            stored.push(AssignmentRecord {
                phase: kept_report.and_then(|o| o.phase),
                phase_reason: kept_report.and_then(|o| o.phase_reason.clone()),
                serving_sha256: kept_report.and_then(|o| o.serving_sha256.clone()),
                ..row.clone()
            });
            if !unchanged {
                writes.push(batch::AssignmentWrite { row, kept_report });
            }
        }
        let mut tx = self.pool.begin().await?;
        batch::delete_assignments(&mut tx, self.placeholders, namespace, name, &gone).await?;
        batch::upsert_assignments(&mut tx, self.placeholders, namespace, name, &writes, now_ms)
            .await?;
        tx.commit().await?;
        // the order of a read: callers compare against one
        if !stored.is_sorted_by(|a, b| a.device_id <= b.device_id) {
            stored.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        }
        Ok(stored)
    }

    /// Every assignment of one device across deployments: `(namespace, name, row)`.
    pub async fn device_assignments(
        &self,
        device: &str,
    ) -> Result<Vec<(String, String, AssignmentRecord)>> {
        let rows = sqlx::query(
            "SELECT device_id, version, variant, role, reason, generation, phase, phase_reason, serving_sha256,
                    assignment_json, namespace, name
             FROM assignments WHERE device_id = $1 ORDER BY namespace, name",
        )
        .bind(device)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(10)?, r.try_get(11)?, assignment_from_row(r)?)))
            .collect()
    }
}
