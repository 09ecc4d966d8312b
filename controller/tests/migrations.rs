//! The same migrations apply to SQLite and PostgreSQL.

use edgefleet_controller::store::MIGRATOR;
use sqlx::Connection;

const TABLES: [&str; 7] = [
    "devices",
    "deployments",
    "device_desired",
    "assignments",
    "rollouts",
    "rollout_history",
    "cohort_rollups",
];

#[tokio::test]
async fn migrations_apply_to_sqlite() {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .expect("in-memory sqlite");
    MIGRATOR.run(&pool).await.expect("migrations apply");
    for table in TABLES {
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        assert_eq!(count, 0);
    }
    // Applying again is a no-op, not an error.
    MIGRATOR.run(&pool).await.expect("re-run is idempotent");
}

/// PostgreSQL on 127.0.0.1:5432 (trust auth), in a throw-away database per run.
#[tokio::test]
async fn migrations_apply_to_postgres() {
    let admin_url = std::env::var("EDGEFLEET_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("PostgreSQL must be running (the test script starts it)");
    let db = format!("edgefleet_migrations_{}", std::process::id());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db}"))
        .execute(&mut admin)
        .await
        .expect("drop");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("create");
    let url = format!(
        "{}/{db}",
        admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin_url)
    );
    {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connect");
        MIGRATOR.run(&pool).await.expect("migrations apply");
        for table in TABLES {
            let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}"));
            assert_eq!(count, 0);
        }
        MIGRATOR.run(&pool).await.expect("re-run is idempotent");
        pool.close().await;
    }
    sqlx::query(&format!("DROP DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("drop");
}
