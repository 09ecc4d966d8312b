//! Telemetry aggregation: agents' latency windows (and, for language models, their LLM
//! windows) merged per cohort (deployment × variant × device class × role), exported to
//! Prometheus with bounded labels (`export.rs`) and kept in short per-interval slices, which
//! this replica writes to the fleet store's `cohort_rollups`; canary analysis reads every
//! replica's slices from there. Device ids never become labels.

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
    /// This replica's sums per interval start (ms), pruned to `retention_ms`: the values of its
    /// rows in `cohort_rollups`, which canary analysis reads together with other replicas'.
    recent: BTreeMap<CohortLabels, BTreeMap<i64, CohortWindow>>,
}

/// Adds one device's model window to a cohort's sum.
pub fn add_model_window(sum: &mut CohortWindow, window: &ModelWindow) {
    sum.add(window.requests, window.errors, &window.latency);
    if let Some(offload) = &window.offload {
        sum.add_offload(offload);
    }
    if let Some(llm) = &window.llm {
        sum.add_llm(llm);
    }
}

/// Windows of one ingest batch, summed per cohort and interval, not yet counted.
#[derive(Default)]
pub struct Deltas(BTreeMap<(CohortLabels, i64), CohortWindow>);

impl Deltas {
    /// Adds one model window of one device; a late window lands in the interval it measured.
    #[cfg(test)]
    pub fn add(&mut self, slice_start_ms: i64, labels: CohortLabels, window: &ModelWindow) {
        add_model_window(self.0.entry((labels, slice_start_ms)).or_default(), window);
    }

    /// Adds windows already summed for one cohort and slice.
    pub fn merge(&mut self, slice_start_ms: i64, labels: CohortLabels, sum: &CohortWindow) {
        self.0
            .entry((labels, slice_start_ms))
            .or_default()
            .merge(sum);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub struct Telemetry {
    state: Mutex<State>,
    /// This replica's run, as its `cohort_rollups` rows are keyed: a restarted replica writes
    /// new rows rather than overwrite the sums it no longer holds in memory.
    writer: String,
    interval_ms: i64,
    retention_ms: i64,
    descs: Vec<Desc>,
}

impl Telemetry {
    /// `interval_ms`: slice width for analysis; `retention_ms`: how long slices are kept;
    /// `writer`: unique to this process (replica identity and start time).
    pub fn new(interval_ms: i64, retention_ms: i64, writer: String) -> Self {
        Self {
            state: Mutex::default(),
            writer,
            interval_ms: interval_ms.max(1),
            retention_ms,
            descs: export::descs(),
        }
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }

    pub fn retention_ms(&self) -> i64 {
        self.retention_ms
    }

    /// Start of the analysis slice holding `ms`.
    pub fn slice_start(&self, ms: i64) -> i64 {
        ms - ms.rem_euclid(self.interval_ms)
    }

    /// This replica's roll-up rows once `deltas` are counted: its slices with them added.
    pub fn rows_with(&self, deltas: &Deltas) -> Vec<(CohortLabels, i64, CohortWindow)> {
        let state = self.lock();
        deltas
            .0
            .iter()
            .map(|((labels, start), delta)| {
                let mut sum = state
                    .recent
                    .get(labels)
                    .and_then(|slices| slices.get(start))
                    .cloned()
                    .unwrap_or_default();
                sum.merge(delta);
                (labels.clone(), *start, sum)
            })
            .collect()
    }

    /// Counts `deltas` (after the store took their claims and rows).
    pub fn apply(&self, deltas: Deltas) {
        let mut state = self.lock();
        for ((labels, start), delta) in deltas.0 {
            state
                .totals
                .entry(labels.clone())
                .or_default()
                .merge(&delta);
            let slices = state.recent.entry(labels).or_default();
            slices.entry(start).or_default().merge(&delta);
            if let Some(newest) = slices.keys().next_back().copied() {
                slices.retain(|start, _| *start > newest - self.retention_ms);
            }
        }
    }

    /// Counts one model window of one device at once (unit tests).
    #[cfg(test)]
    pub fn record(&self, labels: CohortLabels, window_start_ms: i64, window: &ModelWindow) {
        let mut deltas = Deltas::default();
        deltas.add(self.slice_start(window_start_ms), labels, window);
        self.apply(deltas);
    }

    /// This replica's sums of one cohort from windows that started at or after `since_ms`.
    #[cfg(test)]
    pub fn since(&self, labels: &CohortLabels, since_ms: i64) -> CohortWindow {
        let state = self.lock();
        let mut merged = CohortWindow::default();
        if let Some(slices) = state.recent.get(labels) {
            for totals in slices.range(self.slice_start(since_ms)..).map(|(_, t)| t) {
                merged.merge(totals);
            }
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
