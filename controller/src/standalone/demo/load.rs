//! Inference load on each agent's local API (`POST /v2/models/{model}/infer` with a binary
//! tensor), timed on the client side: the wall time of each request as the demo sees it.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Latencies per (device, model version), the last `KEEP` of each.
#[derive(Default)]
pub struct Stats {
    samples: BTreeMap<(String, String), VecDeque<f64>>,
    requests: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

const KEEP: usize = 500;

impl Stats {
    fn record(&mut self, device: &str, version: &str, ms: f64) {
        let samples = self
            .samples
            .entry((device.to_string(), version.to_string()))
            .or_default();
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(ms);
        *self.requests.entry(device.to_string()).or_default() += 1;
    }

    /// p95 of the device's recent requests answered by `version`.
    pub fn p95_ms(&self, device: &str, version: &str) -> Option<f64> {
        let samples = self
            .samples
            .get(&(device.to_string(), version.to_string()))?;
        let mut sorted: Vec<f64> = samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let rank = ((sorted.len() as f64) * 0.95).ceil() as usize;
        sorted.get(rank.saturating_sub(1)).copied()
    }

    pub fn requests(&self, device: &str) -> u64 {
        self.requests.get(device).copied().unwrap_or(0)
    }

    pub fn errors(&self, device: &str) -> u64 {
        self.errors.get(device).copied().unwrap_or(0)
    }
}

pub type SharedStats = Arc<Mutex<Stats>>;

pub fn lock(stats: &SharedStats) -> std::sync::MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

/// The orientation CNN's input: FP32 [1, 3, 224, 224], every element 0.5, as Triton's binary
/// tensor extension (JSON header, then the raw little-endian bytes).
fn request_body(input: &str) -> (Vec<u8>, usize) {
    let count = 3 * 224 * 224;
    let data: Vec<u8> = std::iter::repeat_n(0.5f32.to_le_bytes(), count)
        .flatten()
        .collect();
    let header = serde_json::json!({
        "inputs": [{
            "name": input, "shape": [1, 3, 224, 224], "datatype": "FP32",
            "parameters": { "binary_data_size": data.len() }
        }],
        "parameters": { "binary_data_output": false }
    })
    .to_string();
    let header_len = header.len();
    let mut body = header.into_bytes();
    body.extend_from_slice(&data);
    (body, header_len)
}

/// Sends requests round-robin to every agent until `stop` turns true, `pause` between rounds.
pub async fn drive(
    agents: Vec<(String, SocketAddr)>,
    model: String,
    input: String,
    stats: SharedStats,
    pause: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let http = reqwest::Client::new();
    let (body, header_len) = request_body(&input);
    let body = bytes::Bytes::from(body);
    loop {
        for (device, addr) in &agents {
            if *stop.borrow() {
                return;
            }
            let started = Instant::now();
            let result = http
                .post(format!("http://{addr}/v2/models/{model}/infer"))
                .header("inference-header-content-length", header_len.to_string())
                .header("content-type", "application/octet-stream")
                .body(body.clone())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            match result {
                Ok(response) if response.status().is_success() => {
                    let version = response
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["model_version"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    lock(&stats).record(device, &version, ms);
                }
                // 404 while the device has no model yet (or never gets one): not a request
                Ok(response) if response.status().as_u16() == 404 => {}
                _ => *lock(&stats).errors.entry(device.clone()).or_default() += 1,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause.max(Duration::from_millis(20))) => {}
            _ = stop.changed() => return,
        }
    }
}
