//! `deployments`: the standalone mode's ModelDeployments (spec, status, deletion mark).

use sqlx::Row;

use super::*;

impl Store {
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
            "assignment_entries",
            "rollouts",
            "rollout_history",
            "cohort_rollups",
            "artifact_pins",
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
}
