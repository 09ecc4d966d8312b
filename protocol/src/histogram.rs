//! The latency histogram layout shared by agents (who fill it) and the controller (who merges
//! it and exports it to Prometheus). One fixed layout means windows merge by adding counts.

use serde::{Deserialize, Serialize};

/// Upper bounds in seconds (Prometheus `le`), 1-1.5-2-3-5-7 per decade from 100 µs to 10 s;
/// observations above the last bound land in the implicit `+Inf` bucket.
pub const LATENCY_BUCKETS_SECONDS: [f64; 30] = [
    0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.0007, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.007,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0,
    10.0,
];

/// Non-cumulative bucket counts: `counts[i]` holds observations in
/// `(LATENCY_BUCKETS_SECONDS[i-1], LATENCY_BUCKETS_SECONDS[i]]`, the last entry is `+Inf`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LatencyHistogram {
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; LATENCY_BUCKETS_SECONDS.len() + 1],
            sum_seconds: 0.0,
        }
    }
}

impl LatencyHistogram {
    pub fn observe(&mut self, seconds: f64) {
        // A NaN or infinite measurement is a clock bug; count it as +Inf but keep the sum finite.
        let index = bucket_index(&LATENCY_BUCKETS_SECONDS, seconds);
        if let Some(slot) = self.counts.get_mut(index) {
            *slot += 1;
        }
        if seconds.is_finite() {
            self.sum_seconds += seconds.max(0.0);
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Whether the layout matches the shared one (decoders reject any other).
    pub fn has_shared_layout(&self) -> bool {
        self.counts.len() == LATENCY_BUCKETS_SECONDS.len() + 1
            && self.sum_seconds.is_finite()
            && self.sum_seconds >= 0.0
    }

    /// Adds `other`'s observations; both must have the shared layout.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
        self.sum_seconds += other.sum_seconds;
    }

    /// The q-quantile in seconds, interpolated linearly within the bucket exactly as
    /// Prometheus' `histogram_quantile` does, so status and dashboards agree.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&LATENCY_BUCKETS_SECONDS, &self.counts, q)
    }
}

/// The bucket a value lands in; NaN and infinities land in `+Inf`.
pub(crate) fn bucket_index(bounds: &[f64], value: f64) -> usize {
    if value.is_finite() {
        bounds.partition_point(|bound| *bound < value)
    } else {
        bounds.len()
    }
}

/// The q-quantile of non-cumulative `counts` over `bounds` (+Inf last), interpolated as
/// Prometheus' `histogram_quantile` does.
pub(crate) fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total as f64;
    let mut cumulative = 0u64;
    for (index, count) in counts.iter().enumerate() {
        let before = cumulative;
        cumulative += count;
        if (cumulative as f64) >= rank && *count > 0 {
            let Some(upper) = bounds.get(index) else {
                // +Inf bucket: Prometheus answers with the highest finite bound.
                return bounds.last().copied();
            };
            let lower = if index == 0 { 0.0 } else { bounds[index - 1] };
            let within = (rank - before as f64) / *count as f64;
            return Some(lower + (upper - lower) * within);
        }
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_bucket_whose_upper_bound_covers_them() {
        let mut h = LatencyHistogram::default();
        h.observe(0.0001); // exactly on a bound: that bucket (le is inclusive)
        h.observe(0.00012);
        h.observe(20.0);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[LATENCY_BUCKETS_SECONDS.len()], 1);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let mut h = LatencyHistogram::default();
        // 100 observations spread uniformly in (10ms, 15ms]
        for i in 1..=100 {
            h.observe(0.010 + 0.005 * f64::from(i) / 100.0);
        }
        let p50 = h.quantile(0.5).expect("non-empty");
        assert!((p50 - 0.0125).abs() < 1e-9, "p50 = {p50}");
        let p95 = h.quantile(0.95).expect("non-empty");
        assert!((p95 - 0.01475).abs() < 1e-9, "p95 = {p95}");
    }

    #[test]
    fn merge_adds_counts_and_sums() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        a.observe(0.001);
        b.observe(0.002);
        b.observe(0.002);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert!((a.sum_seconds - 0.005).abs() < 1e-12);
        assert_eq!(LatencyHistogram::default().quantile(0.5), None);
    }
}
