//! Telemetry aggregation: agents' latency windows (and, for language models, their LLM
//! windows) merged per cohort (deployment × variant × device class × role), exported to
//! Prometheus with bounded labels (`export.rs`) and kept in short per-interval slices for
//! canary analysis. Device ids never become labels.

use std::collections::BTreeMap;
use std::sync::Mutex;

use edgefleet_core::analysis::CohortWindow;
use edgefleet_protocol::wire::ModelWindow;
use prometheus::core::Desc;

mod export;
#[cfg(test)]
mod tests;

/// The labels of one exported series; all values are bounded by the deployments' specs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CohortLabels {
    pub namespace: String,
    pub deployment: String,
    pub variant: String,
    pub device_class: String,
    /// `canary` or `stable`.
    pub role: String,
}

#[derive(Default)]
struct State {
    /// Since controller start, for Prometheus counters.
    totals: BTreeMap<CohortLabels, CohortWindow>,
    /// Per interval start (ms), for analysis; pruned to `retention_ms`.
    recent: BTreeMap<CohortLabels, BTreeMap<i64, CohortWindow>>,
}

pub struct Telemetry {
    state: Mutex<State>,
    /// Highest window seq counted per device. In memory, like the aggregates it guards: each
    /// replica counts each window once, and a restarted one starts both afresh.
    last_seq: Mutex<std::collections::HashMap<String, u64>>,
    interval_ms: i64,
    retention_ms: i64,
    descs: Vec<Desc>,
}

impl Telemetry {
    /// `interval_ms`: slice width for analysis; `retention_ms`: how long slices are kept.
    pub fn new(interval_ms: i64, retention_ms: i64) -> Self {
        Self {
            state: Mutex::default(),
            last_seq: Mutex::default(),
            interval_ms: interval_ms.max(1),
            retention_ms,
            descs: export::descs(),
        }
    }

    /// Claims window `seq` of `device`; false when it was already counted (a store-and-forward
    /// replay or a QoS 1 duplicate: agents number windows in order and replay them in order).
    pub fn claim_seq(&self, device: &str, seq: u64) -> bool {
        let mut last = self.last_seq.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(device) {
            Some(highest) if *highest >= seq => false,
            Some(highest) => {
                *highest = seq;
                true
            }
            None => {
                last.insert(device.to_string(), seq);
                true
            }
        }
    }

    /// Adds one model window of one device. A late window lands in the interval it measured.
    pub fn record(&self, labels: CohortLabels, window_start_ms: i64, window: &ModelWindow) {
        let slice = window_start_ms - window_start_ms.rem_euclid(self.interval_ms);
        let mut one = CohortWindow::default();
        one.add(window.requests, window.errors, &window.latency);
        if let Some(offload) = &window.offload {
            one.add_offload(offload);
        }
        if let Some(llm) = &window.llm {
            one.add_llm(llm);
        }
        let mut state = self.lock();
        state.totals.entry(labels.clone()).or_default().merge(&one);
        let slices = state.recent.entry(labels).or_default();
        slices.entry(slice).or_default().merge(&one);
        if let Some(newest) = slices.keys().next_back().copied() {
            slices.retain(|start, _| *start > newest - self.retention_ms);
        }
    }

    /// Merged observations of one cohort from windows that started at or after `since_ms`.
    pub fn since(&self, labels: &CohortLabels, since_ms: i64) -> CohortWindow {
        let state = self.lock();
        let mut merged = CohortWindow::default();
        if let Some(slices) = state.recent.get(labels) {
            let first_slice = since_ms - since_ms.rem_euclid(self.interval_ms);
            for totals in slices.range(first_slice..).map(|(_, t)| t) {
                merged.merge(totals);
            }
        }
        merged
    }

    /// Merged observations of every cohort of a deployment matching `filter`, since `since_ms`.
    pub fn since_where(
        &self,
        namespace: &str,
        deployment: &str,
        since_ms: i64,
        filter: impl Fn(&CohortLabels) -> bool,
    ) -> CohortWindow {
        let keys: Vec<CohortLabels> = self
            .lock()
            .recent
            .keys()
            .filter(|l| l.namespace == namespace && l.deployment == deployment && filter(l))
            .cloned()
            .collect();
        let mut merged = CohortWindow::default();
        for key in keys {
            merged.merge(&self.since(&key, since_ms));
        }
        merged
    }

    pub fn forget_deployment(&self, namespace: &str, deployment: &str) {
        let mut state = self.lock();
        state
            .totals
            .retain(|l, _| !(l.namespace == namespace && l.deployment == deployment));
        state
            .recent
            .retain(|l, _| !(l.namespace == namespace && l.deployment == deployment));
    }

    /// Cohorts exported: one label set each, shared by all of the cohort's families.
    pub fn series_count(&self) -> usize {
        self.lock().totals.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
