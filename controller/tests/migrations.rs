//! The same migrations apply to SQLite and PostgreSQL.

use edgefleet_controller::store::{AssignmentRecord, MIGRATOR, Store};
use edgefleet_protocol::wire::{ModelPhase, Role};
use sqlx::migrate::Migrator;

mod common;

const TABLES: [&str; 9] = [
    "devices",
    "deployments",
    "device_desired",
    "assignments",
    "assignment_entries",
    "rollouts",
    "rollout_history",
    "cohort_rollups",
    "telemetry_seqs",
];

/// Both databases are driven through sqlx's Any driver, as the controller does.
async fn any_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect")
}

async fn assert_migrated(url: &str) {
    let pool = any_pool(url).await;
    MIGRATOR.run(&pool).await.expect("migrations apply");
    for table in TABLES {
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        assert_eq!(count, 0, "{table} starts empty");
    }
    // Applying again is a no-op, not an error.
    MIGRATOR.run(&pool).await.expect("re-run is idempotent");
    pool.close().await;
}

#[tokio::test]
async fn migrations_apply_to_sqlite() {
    assert_migrated("sqlite::memory:").await;
}

#[tokio::test]
async fn migrations_apply_to_postgres() {
    let db = common::TempPostgres::create("migrations").await;
    assert_migrated(&db.url).await;
    db.drop().await;
}

/// Rows written before `assignment_entries` existed carried their JSON and reason; the
/// migration moves each distinct pair into one entry and the rows read back unchanged.
async fn assert_rows_survive_the_entries_migration(url: &str) {
    let pool = any_pool(url).await;
    let before_entries = Migrator {
        migrations: MIGRATOR
            .migrations
            .iter()
            .filter(|m| m.version < 20261208000001)
            .cloned()
            .collect(),
        ..Migrator::DEFAULT
    };
    before_entries.run(&pool).await.expect("earlier migrations");
    let record = |device: &str, reason: &str| {
        let mut record = edgefleet_core::testutil::record(device, "1", Role::Stable, None);
        record.reason = reason.into();
        record
    };
    // two devices share one (assignment, reason) pair, the third has its own reason
    let records = [
        record("d1", "fits"),
        record("d2", "fits"),
        record("d3", "the only int8"),
    ];
    for r in &records {
        sqlx::query(
            "INSERT INTO assignments (namespace, name, device_id, version, variant, role, reason,
               assignment_json, generation, phase, phase_reason, serving_sha256, updated_ms)
             VALUES ('ns', 'md', $1, $2, $3, $4, $5, $6, 1, 'Ready', NULL, 'abc', 7)",
        )
        .bind(&r.device_id)
        .bind(r.version())
        .bind(r.variant())
        .bind(r.role().as_str())
        .bind(&*r.reason)
        .bind(serde_json::to_string(&*r.assignment).expect("json"))
        .execute(&pool)
        .await
        .expect("legacy row");
    }
    pool.close().await;

    let store = Store::connect(url).await.expect("migrates the rest");
    let read = store.assignments("ns", "md").await.expect("read back");
    let expected: Vec<AssignmentRecord> = records
        .into_iter()
        .map(|mut r| {
            r.generation = 1;
            r.phase = Some(ModelPhase::Ready);
            r.serving_sha256 = Some("abc".into());
            r
        })
        .collect();
    assert_eq!(read, expected);
    let entries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM assignment_entries")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(entries, 2, "one entry per distinct (assignment, reason)");
}

#[tokio::test]
async fn rows_survive_the_entries_migration_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("fleet.db").display()
    );
    assert_rows_survive_the_entries_migration(&url).await;
}

#[tokio::test]
async fn rows_survive_the_entries_migration_on_postgres() {
    let db = common::TempPostgres::create("entries_migration").await;
    assert_rows_survive_the_entries_migration(&db.url).await;
    db.drop().await;
}

/// `store::MIGRATIONS` is listed by hand: it must name every file of `migrations/`, in order,
/// with the description `sqlx::migrate!` would derive from the file name, and the file's text.
#[test]
fn every_migration_file_is_embedded() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
        .expect("migrations/")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .to_string();
            let stem = name.strip_suffix(".sql").expect("only .sql files");
            let (version, description) = stem.split_once('_').expect("VERSION_description.sql");
            (
                version.parse().expect("numeric version"),
                description.replace('_', " "),
                std::fs::read_to_string(&path).expect("read"),
            )
        })
        .collect();
    files.sort();
    let embedded: Vec<(i64, String, String)> = edgefleet_controller::store::MIGRATIONS
        .iter()
        .map(|(v, d, sql)| (*v, d.to_string(), sql.to_string()))
        .collect();
    assert_eq!(embedded, files);
}
