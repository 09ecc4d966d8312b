//! `artifact_pins`: what a deployment's `oci://` references resolved to, per model version.

use std::collections::BTreeMap;

use edgefleet_core::artifacts::Pin;
use sqlx::Row;

use super::*;

impl Store {
    /// The pins of one deployment (`uid`) and model version, by reference.
    pub async fn pins(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        model_version: &str,
    ) -> Result<BTreeMap<String, Pin>> {
        let rows = sqlx::query(
            "SELECT reference, pinned_uri, sha256, size_bytes FROM artifact_pins
             WHERE namespace = $1 AND name = $2 AND uid = $3 AND model_version = $4",
        )
        .bind(namespace)
        .bind(name)
        .bind(uid)
        .bind(model_version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let size: i64 = r.try_get(3)?;
                Ok((
                    r.try_get(0)?,
                    Pin {
                        pinned_uri: r.try_get(1)?,
                        sha256: r.try_get(2)?,
                        size_bytes: u64::try_from(size).unwrap_or(0),
                    },
                ))
            })
            .collect()
    }

    /// Keeps the first resolution of a reference: a second controller pass (or replica) that
    /// resolved the same tag later does not replace it.
    pub async fn put_pin(
        &self,
        (namespace, name, uid, model_version): (&str, &str, &str, &str),
        reference: &str,
        pin: &Pin,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO artifact_pins (namespace, name, uid, model_version, reference, pinned_uri,
               sha256, size_bytes, resolved_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (namespace, name, uid, model_version, reference) DO NOTHING",
        )
        .bind(namespace)
        .bind(name)
        .bind(uid)
        .bind(model_version)
        .bind(reference)
        .bind(&pin.pinned_uri)
        .bind(&pin.sha256)
        .bind(i64::try_from(pin.size_bytes).unwrap_or(i64::MAX))
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
