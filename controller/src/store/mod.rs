//! Fleet state in SQL through sqlx: SQLite (embedded default) or PostgreSQL (production),
//! with one set of portable migrations under `migrations/`. Queries are checked at run time
//! (no database needed to build) and use `$1..$N` in order of appearance, which both accept.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

pub use edgefleet_core::AssignmentRecord;
use edgefleet_protocol::wire::{Hello, ModelPhase};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};

mod assignments;
mod batch;
mod deployments;
mod desired;
mod devices;
mod entries;
mod pins;
mod rollouts;
mod rollups;
pub use batch::{DesiredWrite, DeviceAssignments};
pub use devices::DeviceWrite;
pub use rollouts::{rollout_row, rollout_state};
pub use rollups::{DeploymentRollups, RollupCohort, RollupWrite};

/// Every file of `migrations/` as (version, description, SQL), embedded in the binary; a test
/// checks the list against the directory. Listed by hand rather than with `sqlx::migrate!`:
/// the macro builds a second copy of sqlx and both drivers for the host, about a minute of a
/// cold build on two cores (BENCHMARKS.md, "First command").
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        20261129000001,
        "fleet state",
        include_str!("../../../migrations/20261129000001_fleet_state.sql"),
    ),
    (
        20261207000001,
        "artifact pins",
        include_str!("../../../migrations/20261207000001_artifact_pins.sql"),
    ),
    (
        20261207000002,
        "device installed",
        include_str!("../../../migrations/20261207000002_device_installed.sql"),
    ),
    (
        20261207000003,
        "shared ingest",
        include_str!("../../../migrations/20261207000003_shared_ingest.sql"),
    ),
    (
        20261208000001,
        "assignment entries",
        include_str!("../../../migrations/20261208000001_assignment_entries.sql"),
    ),
];

/// What `sqlx::migrate!` would build from [`MIGRATIONS`]: same versions, descriptions and
/// checksums, so databases migrated by either agree.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| Migrator {
    migrations: Cow::Owned(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect(),
    ),
    ..Migrator::DEFAULT
});

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
    #[error(
        "database {url}: this edgefleet was built without PostgreSQL support (cargo feature `postgres`, on by default; `scripts/demo.sh` builds without it)"
    )]
    NoPostgres { url: String },
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
    /// Digests the device's last state report said it holds.
    pub installed_sha256: std::collections::BTreeSet<String>,
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
        if cfg!(not(feature = "postgres")) && url.starts_with("postgres") {
            return Err(StoreError::NoPostgres { url: redact(url) });
        }
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

/// The columns a record is read from, in this order (version, variant and role come with
/// the entry); queries over several deployments add `namespace, name`.
const ASSIGNMENT_COLUMNS: &str =
    "device_id, generation, phase, phase_reason, serving_sha256, entry_key";

/// Where `entry_key` is in [`ASSIGNMENT_COLUMNS`]; `namespace, name` follow it.
const ENTRY_KEY_COLUMN: usize = 5;

/// A typed record from a row of [`ASSIGNMENT_COLUMNS`] and the entry its `entry_key` names;
/// unreadable values are corruption.
fn assignment_from_row(r: &sqlx::any::AnyRow, entry: &entries::Entry) -> Result<AssignmentRecord> {
    let device_id: String = r.try_get(0)?;
    let phase: Option<&str> = r.try_get(2)?;
    let corrupt = |column: &str, why: String| {
        StoreError::Corrupt(format!("assignments.{column} of {device_id}: {why}"))
    };
    Ok(AssignmentRecord {
        reason: Arc::clone(&entry.reason),
        generation: r.try_get(1)?,
        phase: match phase {
            None => None,
            Some(name) => Some(
                ModelPhase::parse(name)
                    .ok_or_else(|| corrupt("phase", format!("unknown phase {name:?}")))?,
            ),
        },
        phase_reason: r.try_get(3)?,
        serving_sha256: r.try_get(4)?,
        assignment: Arc::clone(&entry.assignment),
        device_id,
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
