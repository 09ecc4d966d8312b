//! `desired`: the full document each device was last sent, with its generation.

use sqlx::Row;

use super::*;

impl Store {
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
}
