//! Fleet state in SQL through sqlx: SQLite (embedded default) or PostgreSQL (production),
//! with one set of portable migrations under `migrations/`.

use sqlx::migrate::Migrator;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");
