//! Latency windows: requests, errors and the shared histogram per deployment and variant,
//! cut every interval into a [`Telemetry`] message with a persisted, monotonically growing seq.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use edgefleet_protocol::LatencyHistogram;
use edgefleet_protocol::llm::LlmWindow;
use edgefleet_protocol::wire::{DeviceId, ModelWindow, OffloadWindow, Telemetry};

use crate::offload::OffloadOutcome;

use crate::atomic_file::write_atomic;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Default)]
struct Counts {
    requests: u64,
    errors: u64,
    latency: LatencyHistogram,
    offload: OffloadWindow,
    llm: Option<LlmWindow>,
}

impl Counts {
    fn add_offload(&mut self, offload: Option<OffloadOutcome>) {
        if let Some(outcome) = offload {
            self.offload.requests += 1;
            self.offload.fallbacks += u64::from(outcome.fallback);
            self.offload.cloud_latency.observe(outcome.cloud_seconds);
        }
    }
}

struct Window {
    start_ms: i64,
    models: BTreeMap<(String, String), Counts>,
}

impl Window {
    /// Counts one request of `deployment`'s `variant` and returns its counts for the rest.
    fn request(
        &mut self,
        deployment: &str,
        variant: &str,
        seconds: f64,
        error: bool,
    ) -> &mut Counts {
        let key = (deployment.to_string(), variant.to_string());
        let counts = self.models.entry(key).or_default();
        counts.requests += 1;
        counts.errors += u64::from(error);
        counts.latency.observe(seconds);
        counts
    }
}

pub struct WindowStats {
    inner: Mutex<Window>,
}

impl WindowStats {
    pub fn new(start_ms: i64) -> WindowStats {
        WindowStats {
            inner: Mutex::new(Window {
                start_ms,
                models: BTreeMap::new(),
            }),
        }
    }

    pub fn record(&self, deployment: &str, variant: &str, seconds: f64, error: bool) {
        self.record_with_offload(deployment, variant, seconds, error, None);
    }

    /// One request, and what its cloud attempt did if it went to the cloud; both land in the
    /// same window, so a window never holds more offloads than requests.
    pub fn record_with_offload(
        &self,
        deployment: &str,
        variant: &str,
        seconds: f64,
        error: bool,
        offload: Option<OffloadOutcome>,
    ) {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let counts = w.request(deployment, variant, seconds, error);
        counts.add_offload(offload);
    }

    /// One language-model request: counted like any request, plus what generation did
    /// (`llm` holds this request's observations only) and its cloud attempt, if any.
    /// Refused requests count here too.
    pub fn record_llm(
        &self,
        deployment: &str,
        variant: &str,
        seconds: f64,
        error: bool,
        llm: &LlmWindow,
        offload: Option<OffloadOutcome>,
    ) {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let counts = w.request(deployment, variant, seconds, error);
        counts.llm.get_or_insert_with(LlmWindow::default).merge(llm);
        counts.add_offload(offload);
    }

    /// Closes the current window at `now_ms` and starts the next one.
    pub fn cut(&self, device: &DeviceId, seq: u64, now_ms: i64, window_seconds: u32) -> Telemetry {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let start_ms = std::mem::replace(&mut w.start_ms, now_ms);
        let models = std::mem::take(&mut w.models)
            .into_iter()
            .map(|((deployment, variant), c)| ModelWindow {
                deployment,
                variant,
                requests: c.requests,
                errors: c.errors,
                latency: c.latency,
                offload: (c.offload.requests > 0).then_some(c.offload),
                llm: c.llm,
            })
            .collect();
        Telemetry {
            device_id: device.clone(),
            seq,
            window_start_ms: start_ms,
            window_seconds: window_seconds.max(1),
            models,
        }
    }
}

/// The next telemetry sequence number, persisted so it grows across restarts.
pub struct SeqCounter {
    path: PathBuf,
    next: u64,
}

impl SeqCounter {
    /// `at_least` is one above the highest seq still spooled (a lost counter file must not
    /// make seqs go back).
    pub fn open(path: PathBuf, at_least: u64) -> io::Result<SeqCounter> {
        let stored = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(SeqCounter {
            path,
            next: stored.max(at_least).max(1),
        })
    }

    pub fn take(&mut self) -> io::Result<u64> {
        let seq = self.next;
        write_atomic(&self.path, (seq + 1).to_string().as_bytes())?;
        self.next = seq + 1;
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_aggregate_and_reset() {
        let stats = WindowStats::new(1000);
        stats.record("ns/a", "fp32", 0.001, false);
        stats.record("ns/a", "fp32", 0.002, true);
        stats.record("ns/a", "int8", 0.0005, false);
        let d = DeviceId::new("d1").expect("valid");
        let t = stats.cut(&d, 7, 11_000, 10);
        assert_eq!((t.seq, t.window_start_ms, t.models.len()), (7, 1000, 2));
        let fp32 = &t.models[0];
        assert_eq!(
            (fp32.variant.as_str(), fp32.requests, fp32.errors),
            ("fp32", 2, 1)
        );
        assert!(fp32.latency.has_shared_layout());
        assert_eq!(fp32.offload, None, "no offload policy, no offload field");
        let next = stats.cut(&d, 8, 21_000, 10);
        assert_eq!(next.window_start_ms, 11_000);
        assert!(next.models.is_empty());
        edgefleet_protocol::wire::decode::<Telemetry>(&edgefleet_protocol::wire::encode(&t))
            .expect("a valid wire message");
    }

    #[test]
    fn seq_survives_restarts_and_never_goes_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seq");
        let mut c = SeqCounter::open(path.clone(), 0).expect("open");
        assert_eq!(c.take().expect("take"), 1);
        assert_eq!(c.take().expect("take"), 2);
        let mut c = SeqCounter::open(path.clone(), 0).expect("reopen");
        assert_eq!(c.take().expect("take"), 3);
        let mut c = SeqCounter::open(path, 10).expect("reopen");
        assert_eq!(c.take().expect("take"), 10);
    }

    #[test]
    fn offloads_land_in_the_window_of_their_request() {
        let stats = WindowStats::new(0);
        let cloud = |fallback| {
            Some(OffloadOutcome {
                cloud_seconds: 0.05,
                fallback,
            })
        };
        stats.record_with_offload("ns/a", "int8", 0.06, false, cloud(false));
        stats.record_with_offload("ns/a", "int8", 0.07, false, cloud(true));
        stats.record("ns/a", "int8", 0.01, false);
        let d = DeviceId::new("d1").expect("valid");
        let t = stats.cut(&d, 1, 10_000, 10);
        let offload = t.models[0].offload.as_ref().expect("offload counts");
        assert_eq!(
            (t.models[0].requests, offload.requests, offload.fallbacks),
            (3, 2, 1)
        );
        assert_eq!(offload.cloud_latency.count(), 2);
        edgefleet_protocol::wire::decode::<Telemetry>(&edgefleet_protocol::wire::encode(&t))
            .expect("a valid wire message");
    }
}
