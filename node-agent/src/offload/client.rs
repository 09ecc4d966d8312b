//! The device-wide side of offloading: the local queue, per-deployment rate limits and recent
//! run times, and the HTTP client that forwards a request to a cloud endpoint unchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header;
use serde_json::Value;

use edgefleet_protocol::{OffloadPolicy, OffloadRateLimit};

use super::{CloudAnswer, CloudRequest, FORWARDED_HEADER, LlmLoad, LocalLoad, TokenBucket};
use crate::tensor::BINARY_HEADER;

/// Weight of the newest local run in the recent run time (an exponential moving average).
const RUN_TIME_WEIGHT: f64 = 0.2;

#[derive(Default)]
struct DeploymentState {
    bucket: Option<TokenBucket>,
    recent_run_seconds: Option<f64>,
    /// Language models: how long a request holds a slot, and its prompt processing.
    recent_generation_seconds: Option<f64>,
    recent_prefill_seconds: Option<f64>,
}

/// An exponential moving average's next value.
fn smoothed(recent: Option<f64>, seconds: f64) -> f64 {
    match recent {
        Some(recent) => recent + RUN_TIME_WEIGHT * (seconds - recent),
        None => seconds,
    }
}

/// The device-wide side of offloading: the local queue, per-deployment rate limits and run
/// times, and the HTTP client for cloud endpoints.
pub struct OffloadRuntime {
    http: reqwest::Client,
    slots: usize,
    queued: Arc<AtomicUsize>,
    deployments: Mutex<HashMap<String, DeploymentState>>,
}

/// Counts a request in the local queue while it lives.
pub struct QueueGuard(Arc<AtomicUsize>);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OffloadRuntime {
    /// `slots`: how many local inferences run at once.
    pub fn new(slots: usize) -> anyhow::Result<OffloadRuntime> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()?;
        Ok(OffloadRuntime {
            http,
            slots: slots.max(1),
            queued: Arc::default(),
            deployments: Mutex::default(),
        })
    }

    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn enter_queue(&self) -> QueueGuard {
        self.queued.fetch_add(1, Ordering::AcqRel);
        QueueGuard(self.queued.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DeploymentState>> {
        self.deployments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deployment's state, with a token bucket for `limit` (a new one if it changed).
    fn state<'a>(
        map: &'a mut HashMap<String, DeploymentState>,
        deployment: &str,
        limit: &OffloadRateLimit,
        now: Instant,
    ) -> &'a mut TokenBucket {
        let state = map.entry(deployment.to_string()).or_default();
        match &mut state.bucket {
            Some(bucket) if bucket.limits(limit) => {}
            bucket => *bucket = Some(TokenBucket::new(limit, now)),
        }
        state
            .bucket
            .get_or_insert_with(|| TokenBucket::new(limit, now))
    }

    pub fn load(&self, deployment: &str) -> LocalLoad {
        LocalLoad {
            ahead: self.queued.load(Ordering::Acquire),
            slots: self.slots,
            recent_run_seconds: self
                .lock()
                .get(deployment)
                .and_then(|s| s.recent_run_seconds),
        }
    }

    pub fn observe_run(&self, deployment: &str, seconds: f64) {
        let mut map = self.lock();
        let state = map.entry(deployment.to_string()).or_default();
        state.recent_run_seconds = Some(smoothed(state.recent_run_seconds, seconds));
    }

    /// A language model's load: `busy` sequences generating or queued (this request not
    /// counted), and the model's recent timings.
    pub fn llm_load(&self, deployment: &str, busy: usize, slots: usize) -> LlmLoad {
        let map = self.lock();
        let state = map.get(deployment);
        LlmLoad {
            ahead: busy,
            slots,
            recent_generation_seconds: state.and_then(|s| s.recent_generation_seconds),
            recent_prefill_seconds: state.and_then(|s| s.recent_prefill_seconds),
        }
    }

    /// A local generation: how long it held its slot and how long its prompt took.
    pub fn observe_generation(&self, deployment: &str, held_seconds: f64, prefill_seconds: f64) {
        let mut map = self.lock();
        let state = map.entry(deployment.to_string()).or_default();
        state.recent_generation_seconds =
            Some(smoothed(state.recent_generation_seconds, held_seconds));
        state.recent_prefill_seconds =
            Some(smoothed(state.recent_prefill_seconds, prefill_seconds));
    }

    /// Takes a token from the deployment's bucket.
    pub fn allow(&self, deployment: &str, limit: &OffloadRateLimit) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        Self::state(&mut map, deployment, limit, now).try_take(now)
    }

    /// Sends the request to the policy's endpoint within its timeout.
    pub async fn forward(
        &self,
        policy: &OffloadPolicy,
        request: &CloudRequest,
    ) -> Result<CloudAnswer, String> {
        let url = format!(
            "{}/v2/models/{}/infer",
            policy.endpoint.url.trim_end_matches('/'),
            policy.endpoint.model
        );
        let builder = self
            .http
            .post(&url)
            .header(FORWARDED_HEADER, "1")
            .timeout(Duration::from_millis(u64::from(policy.timeout_ms)));
        let builder = if request.binary.is_empty() {
            builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(request.json.clone())
        } else {
            let mut body = Vec::with_capacity(request.json.len() + request.binary.len());
            body.extend_from_slice(&request.json);
            body.extend_from_slice(&request.binary);
            builder
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(BINARY_HEADER, request.json.len())
                .body(body)
        };
        let response = builder.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let header_len = response
            .headers()
            .get(BINARY_HEADER)
            .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()));
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{url}: reading the answer: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("{url} answered {status}: {text}"));
        }
        let (json_part, binary) = match header_len {
            None => (body, Bytes::new()),
            Some(Some(len)) if len <= body.len() => (body.slice(..len), body.slice(len..)),
            Some(_) => return Err(format!("{url}: bad {BINARY_HEADER} in the answer")),
        };
        let header: Value = serde_json::from_slice(&json_part)
            .map_err(|e| format!("{url}: the answer is not JSON: {e}"))?;
        if !header.get("outputs").is_some_and(Value::is_array) {
            return Err(format!("{url}: the answer has no outputs"));
        }
        Ok(CloudAnswer { header, binary })
    }
}
