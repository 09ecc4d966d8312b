//! The same migrations apply to SQLite and PostgreSQL.

use edgefleet_controller::store::MIGRATOR;

mod common;

const TABLES: [&str; 8] = [
    "devices",
    "deployments",
    "device_desired",
    "assignments",
    "rollouts",
    "rollout_history",
    "cohort_rollups",
    "telemetry_seqs",
];

/// Both databases are driven through sqlx's Any driver, as the controller does.
async fn assert_migrated(url: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect");
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
