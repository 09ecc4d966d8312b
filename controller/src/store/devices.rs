//! Device presence (hello and online/offline) written a batch at a time: a fleet coming online
//! at once is a few multi-row statements per few hundred devices, not one statement each.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_protocol::wire::{DeviceId, Hello};

use super::batch::{CHUNK, placeholders, value_rows};
use sqlx::Row;

use super::{Result, Store, StoreError, StoredDevice};

/// What a batch of presence messages leaves behind for one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceWrite<'a> {
    pub device: &'a DeviceId,
    /// The device's last hello in the batch, with its device class.
    pub hello: Option<(&'a Hello, &'a str)>,
    /// Its online flag after the batch, when a message set it.
    pub online: Option<bool>,
}

impl Store {
    pub async fn load_devices(&self) -> Result<Vec<StoredDevice>> {
        let rows =
            sqlx::query("SELECT hello_json, online, last_seen_ms, installed_sha256 FROM devices ORDER BY device_id")
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
                    installed_sha256: row
                        .try_get::<String, _>(3)?
                        .split_whitespace()
                        .map(str::to_string)
                        .collect(),
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

    /// Records the artifacts each device's last state report says it holds (space-separated
    /// digests), so that a restarted controller knows them before devices report again: an
    /// assignment row forgets what its device served when the assignment changes, the device
    /// does not.
    pub async fn record_installed(&self, devices: &[(&str, &BTreeSet<String>)]) -> Result<()> {
        if devices.is_empty() {
            return Ok(());
        }
        // id order, as in `record_presence`: replicas lock rows in the same order
        let mut latest: BTreeMap<&str, &BTreeSet<String>> = BTreeMap::new();
        for (device, installed) in devices {
            latest.insert(device, installed);
        }
        let latest: Vec<(&str, String)> = latest
            .into_iter()
            .map(|(device, installed)| {
                (
                    device,
                    installed
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            })
            .collect();
        const COLUMNS: usize = 2;
        let mut tx = self.pool.begin().await?;
        for chunk in latest.chunks(CHUNK) {
            let values = value_rows(1, chunk.len(), COLUMNS);
            // VALUES columns are column1, column2 in both SQLite and PostgreSQL.
            let sql = self.placeholders.sql(format!(
                "UPDATE devices SET installed_sha256 = v.column2
                 FROM (VALUES {values}) AS v WHERE devices.device_id = v.column1"
            ));
            let mut query = sqlx::query(&sql);
            for (device, installed) in chunk {
                query = query.bind(*device).bind(installed.as_str());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies one batch of presence in one transaction: hellos are upserted (a new device
    /// starts online), then online flags are set. Devices are written in id order so that two
    /// replicas recording the same fleet lock rows in the same order. A status for a device
    /// that never said hello changes nothing.
    pub async fn record_presence(&self, writes: &[DeviceWrite<'_>], now_ms: i64) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut sorted: Vec<&DeviceWrite> = writes.iter().collect();
        sorted.sort_by_key(|write| write.device.as_str());
        let hellos: Vec<(&DeviceWrite, &Hello, &str)> = sorted
            .iter()
            .filter_map(|write| write.hello.map(|(hello, class)| (*write, hello, class)))
            .collect();
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        let mut tx = self.pool.begin().await?;
        const COLUMNS: usize = 8;
        for chunk in hellos.chunks(CHUNK / 2) {
            let values = value_rows(1, chunk.len(), COLUMNS);
            let sql = format!(
                "INSERT INTO devices (device_id, hello_json, labels_json, arch, device_class, online, first_seen_ms, last_seen_ms)
                 VALUES {values}
                 ON CONFLICT (device_id) DO UPDATE SET hello_json = excluded.hello_json,
                   labels_json = excluded.labels_json, arch = excluded.arch,
                   device_class = excluded.device_class, last_seen_ms = excluded.last_seen_ms"
            );
            let sql = self.placeholders.sql(sql);
            let mut query = sqlx::query(&sql);
            for (write, hello, class) in chunk {
                query = query
                    .bind(write.device.as_str())
                    .bind(serde_json::to_string(hello).map_err(corrupt)?)
                    .bind(serde_json::to_string(&hello.labels).map_err(corrupt)?)
                    .bind(hello.arch.as_str())
                    .bind(*class)
                    .bind(i64::from(write.online.unwrap_or(true)))
                    .bind(now_ms)
                    .bind(now_ms);
            }
            query.execute(&mut *tx).await?;
        }
        for online in [false, true] {
            let devices: Vec<&str> = sorted
                .iter()
                .filter(|write| write.online == Some(online))
                .map(|write| write.device.as_str())
                .collect();
            for chunk in devices.chunks(CHUNK) {
                let sql = format!(
                    "UPDATE devices SET online = $1, last_seen_ms = $2 WHERE device_id IN ({})",
                    placeholders(3, chunk.len())
                );
                let sql = self.placeholders.sql(sql);
                let mut query = sqlx::query(&sql).bind(i64::from(online)).bind(now_ms);
                for device in chunk {
                    query = query.bind(*device);
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
