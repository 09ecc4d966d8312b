//! Fleet state in SQL through sqlx: SQLite (embedded default) or PostgreSQL (production),
//! with one set of portable migrations under `migrations/`. Queries are checked at run time
//! (no database needed to build) and use `$1..$N` in order of appearance, which both accept.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use edgefleet_crds::wire::Hello;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

mod batch;
mod devices;
pub use batch::DesiredWrite;
pub use devices::DeviceWrite;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("query: {0}")]
    Query(#[from] sqlx::Error),
    #[error("stored document is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Bulk reads (every assignment of a deployment, desired documents of thousands of
    /// devices). On a SQLite file these get their own connections: in WAL mode they read a
    /// snapshot beside the one writer instead of queueing behind its transactions.
    reader: AnyPool,
    placeholders: batch::Placeholders,
}

#[derive(Debug, Clone)]
pub struct StoredDevice {
    pub hello: Hello,
    pub online: bool,
    pub last_seen_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentRow {
    pub device_id: String,
    pub version: String,
    pub variant: String,
    pub role: String,
    pub reason: String,
    /// The wire `Assignment` sent to the device, as JSON.
    pub assignment_json: String,
    pub generation: i64,
    pub phase: Option<String>,
    pub phase_reason: Option<String>,
    pub serving_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeployment {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub spec_json: String,
    pub status_json: Option<String>,
    pub deleting: bool,
}

/// What a device reported for one of its assignments.
#[derive(Debug, Clone, Copy)]
pub struct ModelReport<'a> {
    pub device: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub variant: &'a str,
    pub phase: &'a str,
    pub reason: Option<&'a str>,
    pub serving_sha256: Option<&'a str>,
}

/// Rollout progress of one deployment; `cohort_state_json` belongs to the rollout logic.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub uid: String,
    pub target_version: String,
    pub stable_version: Option<String>,
    pub stable_spec_json: Option<String>,
    pub step: i64,
    pub phase: String,
    pub step_started_ms: i64,
    pub last_analysis_ms: i64,
    pub cohort_state_json: String,
}

impl Store {
    /// Connects (creating a SQLite file if needed) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        let url_with_create = if is_sqlite && !url.contains("mode=") && !url.contains(":memory:") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_string()
        };
        let mut options = AnyPoolOptions::new();
        if is_sqlite {
            // SQLite serialises writers anyway; one connection avoids "database is locked" and
            // keeps an in-memory database alive.
            options = options.max_connections(1);
        } else {
            options = options.max_connections(8);
        }
        let pool =
            options
                .connect(&url_with_create)
                .await
                .map_err(|source| StoreError::Connect {
                    url: redact(url),
                    source,
                })?;
        if is_sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
            sqlx::query("PRAGMA synchronous=NORMAL")
                .execute(&pool)
                .await?;
        }
        MIGRATOR.run(&pool).await?;
        let (reader, placeholders) = if is_sqlite {
            let reader = if url.contains(":memory:") {
                pool.clone() // another connection would open another, empty, database
            } else {
                AnyPoolOptions::new()
                    .max_connections(2)
                    .connect(&url_with_create)
                    .await
                    .map_err(|source| StoreError::Connect {
                        url: redact(url),
                        source,
                    })?
            };
            (reader, batch::Placeholders::Positional)
        } else {
            (pool.clone(), batch::Placeholders::Numbered)
        };
        Ok(Self {
            pool,
            reader,
            placeholders,
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    // ------------------------------------------------------------ devices

    pub async fn load_devices(&self) -> Result<Vec<StoredDevice>> {
        let rows =
            sqlx::query("SELECT hello_json, online, last_seen_ms FROM devices ORDER BY device_id")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|row| {
                let hello_json: String = row.try_get(0)?;
                let hello: Hello = serde_json::from_str(&hello_json)
                    .map_err(|e| StoreError::Corrupt(format!("devices.hello_json: {e}")))?;
                Ok(StoredDevice {
                    hello,
                    online: row.try_get::<i64, _>(1)? != 0,
                    last_seen_ms: row.try_get(2)?,
                })
            })
            .collect()
    }

    /// `(device id, sha256)` of what each device last reported serving, per assignment: what a
    /// restarted controller knows devices hold before they report again.
    pub async fn serving_digests(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT device_id, serving_sha256 FROM assignments
             WHERE serving_sha256 IS NOT NULL ORDER BY device_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    // ------------------------------------------------------------ deployments

    /// Stores a deployment's spec; the generation grows only when the spec changes.
    pub async fn put_deployment(
        &self,
        namespace: &str,
        name: &str,
        new_uid: &str,
        spec_json: &str,
        now_ms: i64,
    ) -> Result<StoredDeployment> {
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query(
            "SELECT uid, generation, spec_json FROM deployments WHERE namespace = $1 AND name = $2",
        )
        .bind(namespace)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let (uid, generation) = match existing {
            Some(row) => {
                let uid: String = row.try_get(0)?;
                let generation: i64 = row.try_get(1)?;
                let old_spec: String = row.try_get(2)?;
                (
                    uid,
                    if old_spec == spec_json {
                        generation
                    } else {
                        generation + 1
                    },
                )
            }
            None => (new_uid.to_string(), 1),
        };
        sqlx::query(
            "INSERT INTO deployments (namespace, name, uid, generation, spec_json, deleting, updated_ms)
             VALUES ($1, $2, $3, $4, $5, 0, $6)
             ON CONFLICT (namespace, name) DO UPDATE SET generation = excluded.generation,
               spec_json = excluded.spec_json, deleting = 0, updated_ms = excluded.updated_ms",
        )
        .bind(namespace)
        .bind(name)
        .bind(&uid)
        .bind(generation)
        .bind(spec_json)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_deployment(namespace, name)
            .await?
            .ok_or_else(|| StoreError::Corrupt("deployment vanished after write".into()))
    }

    pub async fn get_deployment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredDeployment>> {
        let row = sqlx::query(
            "SELECT namespace, name, uid, generation, spec_json, status_json, deleting
             FROM deployments WHERE namespace = $1 AND name = $2",
        )
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| deployment_from_row(&r)).transpose()
    }

    pub async fn list_deployments(&self) -> Result<Vec<StoredDeployment>> {
        let rows = sqlx::query(
            "SELECT namespace, name, uid, generation, spec_json, status_json, deleting
             FROM deployments ORDER BY namespace, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    pub async fn set_deployment_status(
        &self,
        namespace: &str,
        name: &str,
        status_json: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE deployments SET status_json = $1 WHERE namespace = $2 AND name = $3")
            .bind(status_json)
            .bind(namespace)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn mark_deployment_deleting(&self, namespace: &str, name: &str) -> Result<bool> {
        let done =
            sqlx::query("UPDATE deployments SET deleting = 1 WHERE namespace = $1 AND name = $2")
                .bind(namespace)
                .bind(name)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets a deployment and everything kept for it (after its models left the devices).
    pub async fn purge_deployment(&self, namespace: &str, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for table in [
            "deployments",
            "assignments",
            "rollouts",
            "rollout_history",
            "cohort_rollups",
        ] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE namespace = $1 AND name = $2"
            ))
            .bind(namespace)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ------------------------------------------------------------ assignments

    pub async fn assignments(&self, namespace: &str, name: &str) -> Result<Vec<AssignmentRow>> {
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
        rows: &[AssignmentRow],
        now_ms: i64,
    ) -> Result<Vec<AssignmentRow>> {
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
        current: &[AssignmentRow],
        rows: &[AssignmentRow],
        now_ms: i64,
    ) -> Result<Vec<AssignmentRow>> {
        let current: HashMap<&str, &AssignmentRow> =
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
                    && old.assignment_json == row.assignment_json
                    && old.generation == row.generation
            });
            // the device's reports stay with the row while it is the same model
            let kept_report =
                old.filter(|old| old.version == row.version && old.variant == row.variant);
            stored.push(AssignmentRow {
                phase: kept_report.and_then(|o| o.phase.clone()),
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
    ) -> Result<Vec<(String, String, AssignmentRow)>> {
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

    // ------------------------------------------------------------ desired documents

    pub async fn desired(&self, device: &str) -> Result<Option<(i64, String)>> {
        let row = sqlx::query(
            "SELECT generation, document_json FROM device_desired WHERE device_id = $1",
        )
        .bind(device)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Every device's current desired document, for republishing after a broker lost them.
    pub async fn all_desired(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT device_id, document_json FROM device_desired")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn put_desired(
        &self,
        device: &str,
        generation: i64,
        document_json: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO device_desired (device_id, generation, document_json, published_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (device_id) DO UPDATE SET generation = excluded.generation,
               document_json = excluded.document_json, published_ms = excluded.published_ms",
        )
        .bind(device)
        .bind(generation)
        .bind(document_json)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ------------------------------------------------------------ rollouts

    pub async fn rollout(&self, namespace: &str, name: &str) -> Result<Option<RolloutRow>> {
        let row = sqlx::query(
            "SELECT uid, target_version, stable_version, stable_spec_json, step, phase, step_started_ms,
                    last_analysis_ms, cohort_state_json
             FROM rollouts WHERE namespace = $1 AND name = $2",
        )
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(RolloutRow {
                uid: r.try_get(0)?,
                target_version: r.try_get(1)?,
                stable_version: r.try_get(2)?,
                stable_spec_json: r.try_get(3)?,
                step: r.try_get(4)?,
                phase: r.try_get(5)?,
                step_started_ms: r.try_get(6)?,
                last_analysis_ms: r.try_get(7)?,
                cohort_state_json: r.try_get(8)?,
            })
        })
        .transpose()
    }

    pub async fn put_rollout(
        &self,
        namespace: &str,
        name: &str,
        row: &RolloutRow,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO rollouts (namespace, name, uid, target_version, stable_version, stable_spec_json, step,
               phase, step_started_ms, last_analysis_ms, cohort_state_json, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (namespace, name) DO UPDATE SET uid = excluded.uid,
               target_version = excluded.target_version, stable_version = excluded.stable_version,
               stable_spec_json = excluded.stable_spec_json, step = excluded.step, phase = excluded.phase,
               step_started_ms = excluded.step_started_ms, last_analysis_ms = excluded.last_analysis_ms,
               cohort_state_json = excluded.cohort_state_json, updated_ms = excluded.updated_ms",
        )
        .bind(namespace)
        .bind(name)
        .bind(&row.uid)
        .bind(&row.target_version)
        .bind(&row.stable_version)
        .bind(&row.stable_spec_json)
        .bind(row.step)
        .bind(&row.phase)
        .bind(row.step_started_ms)
        .bind(row.last_analysis_ms)
        .bind(&row.cohort_state_json)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn append_history(
        &self,
        namespace: &str,
        name: &str,
        event: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO rollout_history (namespace, name, seq, at_ms, event, detail)
             SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3, $4, $5 FROM rollout_history
             WHERE namespace = $6 AND name = $7",
        )
        .bind(namespace)
        .bind(name)
        .bind(now_ms)
        .bind(event)
        .bind(detail)
        .bind(namespace)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn history(&self, namespace: &str, name: &str) -> Result<Vec<(i64, String, String)>> {
        let rows = sqlx::query(
            "SELECT at_ms, event, detail FROM rollout_history WHERE namespace = $1 AND name = $2 ORDER BY seq",
        )
        .bind(namespace)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }
}

fn deployment_from_row(r: &sqlx::any::AnyRow) -> Result<StoredDeployment> {
    Ok(StoredDeployment {
        namespace: r.try_get(0)?,
        name: r.try_get(1)?,
        uid: r.try_get(2)?,
        generation: r.try_get(3)?,
        spec_json: r.try_get(4)?,
        status_json: r.try_get(5)?,
        deleting: r.try_get::<i64, _>(6)? != 0,
    })
}

fn assignment_from_row(r: &sqlx::any::AnyRow) -> Result<AssignmentRow> {
    Ok(AssignmentRow {
        device_id: r.try_get(0)?,
        version: r.try_get(1)?,
        variant: r.try_get(2)?,
        role: r.try_get(3)?,
        reason: r.try_get(4)?,
        generation: r.try_get(5)?,
        phase: r.try_get(6)?,
        phase_reason: r.try_get(7)?,
        serving_sha256: r.try_get(8)?,
        assignment_json: r.try_get(9)?,
    })
}

/// Hides a password in a database URL before it reaches a log or an error.
pub fn redact(url: &str) -> String {
    match url::Url::from_str(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}
