//! p95 latency over time per (deployment, cohort), for the fleet page's chart. The status
//! holds only the latest p95; a sampler records it every interval into bounded rings kept in
//! memory (one machine, one process: a page opened later still shows the last minutes).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use edgefleet_crds::ModelDeploymentStatus;
use tokio::sync::watch;

use crate::store::Store;

/// Points kept per series: 10 minutes at the default 1 s interval.
pub const MAX_POINTS: usize = 600;
/// Series kept at once; the least recently updated goes first.
pub const MAX_SERIES: usize = 64;

/// `[unix ms, p95 ms]` points, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    points: VecDeque<(i64, f64)>,
    updated_ms: i64,
}

impl Series {
    pub fn points(&self) -> Vec<(i64, f64)> {
        self.points.iter().copied().collect()
    }
}

/// Keyed by (`namespace/name`, cohort name).
#[derive(Default)]
pub struct LatencyHistory {
    series: Mutex<BTreeMap<(String, String), Series>>,
}

impl LatencyHistory {
    /// Records every cohort of `status` that has a p95 now.
    pub fn record(&self, deployment: &str, status: &ModelDeploymentStatus, now_ms: i64) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for cohort in &status.cohorts {
            let Some(p95) = cohort.p95_latency_ms.filter(|v| v.is_finite()) else {
                continue;
            };
            let key = (deployment.to_string(), cohort.name.clone());
            if !series.contains_key(&key) && series.len() >= MAX_SERIES {
                let stalest = series
                    .iter()
                    .min_by_key(|(_, s)| s.updated_ms)
                    .map(|(k, _)| k.clone());
                if let Some(stalest) = stalest {
                    series.remove(&stalest);
                }
            }
            let entry = series.entry(key).or_default();
            if entry.points.len() >= MAX_POINTS {
                entry.points.pop_front();
            }
            entry.points.push_back((now_ms, p95));
            entry.updated_ms = now_ms;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<(String, String), Series> {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Records every deployment's cohorts every `interval` until `stop` turns true. A store error
/// is logged and the next tick tries again: the page then shows a gap, nothing stops.
pub async fn sample(
    store: Store,
    history: std::sync::Arc<LatencyHistory>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match store.list_deployments().await {
            Ok(deployments) => {
                let now = crate::clock::now_ms();
                for d in deployments {
                    let status = d
                        .status_json
                        .as_deref()
                        .and_then(|s| serde_json::from_str::<ModelDeploymentStatus>(s).ok());
                    if let Some(status) = status {
                        history.record(&format!("{}/{}", d.namespace, d.name), &status, now);
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%err, "fleet page: cannot read deployments for the latency chart")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_crds::CohortStatus;

    use super::*;

    fn status(cohorts: &[(&str, Option<f64>)]) -> ModelDeploymentStatus {
        ModelDeploymentStatus {
            cohorts: cohorts
                .iter()
                .map(|(name, p95)| CohortStatus {
                    name: name.to_string(),
                    p95_latency_ms: *p95,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn records_cohorts_with_a_p95_only() {
        let history = LatencyHistory::default();
        history.record(
            "default/a",
            &status(&[("x86/int8", Some(4.0)), ("arm/fp16", None)]),
            1,
        );
        history.record(
            "default/a",
            &status(&[("x86/int8", Some(5.0)), ("arm/fp16", Some(f64::NAN))]),
            2,
        );
        let snapshot = history.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(
            snapshot[&("default/a".into(), "x86/int8".into())].points(),
            vec![(1, 4.0), (2, 5.0)]
        );
    }

    #[test]
    fn rings_are_bounded_in_points_and_series() {
        let history = LatencyHistory::default();
        for t in 0..(MAX_POINTS as i64 + 10) {
            history.record("default/a", &status(&[("c", Some(t as f64))]), t);
        }
        let points = history.snapshot()[&("default/a".into(), "c".into())].points();
        assert_eq!(points.len(), MAX_POINTS);
        assert_eq!(points[0], (10, 10.0), "the oldest points go first");

        for s in 0..MAX_SERIES {
            history.record(
                "default/b",
                &status(&[(&format!("c{s}"), Some(1.0))]),
                10_000 + s as i64,
            );
        }
        let snapshot = history.snapshot();
        assert_eq!(snapshot.len(), MAX_SERIES);
        assert!(
            !snapshot.contains_key(&("default/a".into(), "c".into())),
            "the least recently updated series is evicted"
        );
    }
}
