//! Deterministic pseudo-random numbers (SplitMix64) and the synthetic latency distribution:
//! log-normal per variant and device profile, which is how inference latency is commonly
//! shaped (a tight body and a long right tail).

use edgefleet_protocol::histogram::LatencyHistogram;

/// SplitMix64's output function: a well-mixed 64-bit hash of `x`.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in (0, 1): never exactly 0, so `ln` is finite.
    pub fn next_f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.next_f64(), self.next_f64());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A log-normal latency in seconds with the given median (ms) and sigma.
    pub fn latency_seconds(&mut self, median_ms: f64, sigma: f64) -> f64 {
        median_ms / 1000.0 * (sigma * self.normal()).exp()
    }
}

/// One window's histogram of `requests` inferences and how many of them failed.
pub fn window(
    rng: &mut Rng,
    requests: u64,
    median_ms: f64,
    sigma: f64,
    error_rate: f64,
) -> (LatencyHistogram, u64) {
    let mut histogram = LatencyHistogram::default();
    let mut errors = 0;
    for _ in 0..requests {
        histogram.observe(rng.latency_seconds(median_ms, sigma));
        if rng.next_f64() < error_rate {
            errors += 1;
        }
    }
    (histogram, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_samples_stay_inside_the_open_interval() {
        let mut rng = Rng::new(1);
        for _ in 0..10_000 {
            let x = rng.next_f64();
            assert!(x > 0.0 && x < 1.0);
        }
    }

    #[test]
    fn latencies_have_the_asked_median_and_a_right_tail() {
        let mut rng = Rng::new(2);
        let mut samples: Vec<f64> = (0..20_000)
            .map(|_| rng.latency_seconds(10.0, 0.3))
            .collect();
        samples.sort_by(f64::total_cmp);
        let median_ms = samples[samples.len() / 2] * 1000.0;
        let p95_ms = samples[samples.len() * 95 / 100] * 1000.0;
        assert!((median_ms - 10.0).abs() < 0.3, "median {median_ms}");
        // log-normal: p95 = median * exp(1.645 sigma) = 16.4 ms
        assert!((p95_ms - 16.4).abs() < 0.8, "p95 {p95_ms}");
    }

    #[test]
    fn windows_use_the_shared_histogram_layout_and_count_every_request() {
        let mut rng = Rng::new(3);
        let (histogram, errors) = window(&mut rng, 500, 5.0, 0.3, 0.02);
        assert!(histogram.has_shared_layout());
        assert_eq!(histogram.count(), 500);
        assert!(errors > 0 && errors < 30, "{errors} errors at 2%");
        let p95 = histogram.quantile(0.95).expect("p95");
        assert!((0.005..0.015).contains(&p95), "p95 {p95}s");
    }
}
