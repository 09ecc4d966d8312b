//! Canary analysis of one cohort over one interval: enough data? within the thresholds? not
//! clearly worse than the stable devices of the same class?
//!
//! Rules, in order:
//! 1. fewer than `minSamples` inferences: `Inconclusive` when no device of the cohort is
//!    online (waiting cannot help), else `Pending` (devices still loading, or little traffic;
//!    the two look the same from here and the step timeout bounds both);
//! 2. p95 above `maxP95LatencyMs` (falling back to the SLO's `p95LatencyMs`): `Fail`;
//! 3. error rate above `maxErrorRate` (falling back to the SLO's): `Fail`;
//!    share of requests offloaded to the cloud above `maxOffloadRatio`: `Fail`;
//! 4. a regression against the stable cohort of the same class, once that cohort has
//!    `minSamples` itself: p95 more than [`REGRESSION_FACTOR`] times the stable p95 *and* more
//!    than [`REGRESSION_SLACK_MS`] above it (so 1 ms vs 2 ms is noise, not a regression), or
//!    an error rate more than [`ERROR_REGRESSION_FACTOR`] times the stable one *and* more than
//!    [`ERROR_REGRESSION_SLACK`] above it: `Fail`. This is the only check when no thresholds
//!    are configured. For language models the latency compared is the time to first token
//!    (a whole answer's time depends on how long the answer is), and a decode speed below
//!    the stable median divided by [`REGRESSION_FACTOR`] is a regression too;
//! 5. a canary that passed its own checks while the stable cohort of its class still lacks
//!    `minSamples` with devices online: `Pending`. A canary is never passed uncompared while
//!    a baseline can still arrive; the step timeout bounds the wait. Only when the class has
//!    no stable device, or none online, is it passed on its own checks, and the message says
//!    it was not compared;
//! 6. otherwise `Pass`.
//!
//! Every failed check is named in the message, not just the first.

use edgefleet_crds::{Analysis, Slo, Verdict};
use edgefleet_protocol::LatencyHistogram;
use edgefleet_protocol::llm::LlmWindow;
use edgefleet_protocol::wire::OffloadWindow;

use crate::fmt_num;

/// Canary p95 must exceed this multiple of the stable p95 to count as a regression...
pub const REGRESSION_FACTOR: f64 = 1.5;
/// ...and be this many milliseconds above it.
pub const REGRESSION_SLACK_MS: f64 = 5.0;
/// Canary error rate must exceed this multiple of the stable error rate...
pub const ERROR_REGRESSION_FACTOR: f64 = 2.0;
/// ...and be this much (absolute, 0.01 = one percentage point) above it.
pub const ERROR_REGRESSION_SLACK: f64 = 0.01;

/// What a cohort's devices reported over the analysis interval, merged. Serialised as one
/// replica's roll-up of a cohort and interval in the fleet store.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CohortWindow {
    pub latency: LatencyHistogram,
    pub requests: u64,
    pub errors: u64,
    /// What the cohort's offload policy did (all zero without one).
    pub offload: OffloadWindow,
    /// What the cohort's language model did; `None` until some device of the cohort reported
    /// an LLM window (models that are not language models never do). Judged by
    /// `maxP95TtftMs` and `minDecodeTokensPerSecond`.
    pub llm: Option<LlmWindow>,
}

impl CohortWindow {
    /// Adds one device's telemetry window (a `wire::ModelWindow`'s fields).
    pub fn add(&mut self, requests: u64, errors: u64, latency: &LatencyHistogram) {
        self.requests = self.requests.saturating_add(requests);
        self.errors = self.errors.saturating_add(errors);
        self.latency.merge(latency);
    }

    /// Adds one device's offload counts (a `wire::ModelWindow`'s `offload`).
    pub fn add_offload(&mut self, offload: &OffloadWindow) {
        let mine = &mut self.offload;
        mine.requests = mine.requests.saturating_add(offload.requests);
        mine.fallbacks = mine.fallbacks.saturating_add(offload.fallbacks);
        mine.cloud_latency.merge(&offload.cloud_latency);
    }

    /// Adds one device's language-model window (a `wire::ModelWindow`'s `llm`).
    pub fn add_llm(&mut self, llm: &LlmWindow) {
        self.llm.get_or_insert_with(LlmWindow::default).merge(llm);
    }

    pub fn merge(&mut self, other: &CohortWindow) {
        self.add(other.requests, other.errors, &other.latency);
        self.add_offload(&other.offload);
        if let Some(llm) = &other.llm {
            self.add_llm(llm);
        }
    }

    /// Share of the inferences that went to the cloud (whether it answered or not).
    pub fn offload_ratio(&self) -> Option<f64> {
        let samples = self.samples();
        (samples > 0).then(|| self.offload.requests.min(samples) as f64 / samples as f64)
    }

    /// Inferences observed. Agents count every request in the histogram and in `requests`;
    /// should they disagree, the larger is the better evidence of traffic.
    pub fn samples(&self) -> u64 {
        self.requests.max(self.latency.count())
    }

    pub fn p95_ms(&self) -> Option<f64> {
        self.latency.quantile(0.95).map(|seconds| seconds * 1000.0)
    }

    pub fn error_rate(&self) -> Option<f64> {
        let samples = self.samples();
        (samples > 0).then(|| self.errors.min(samples) as f64 / samples as f64)
    }
}

/// How many of the cohort's devices are online, of how many.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    pub online: u32,
    pub total: u32,
}

/// The stable devices of the canary cohort's class: what they reported over the interval and
/// how many are online (a baseline short of samples is worth waiting for only then).
#[derive(Clone, Copy, Debug)]
pub struct Baseline<'a> {
    pub window: &'a CohortWindow,
    pub devices: Liveness,
}

/// The limits a cohort is held to: the analysis' own, else the SLO's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Thresholds {
    pub max_p95_ms: Option<f64>,
    pub max_error_rate: Option<f64>,
}

impl Thresholds {
    pub fn new(analysis: &Analysis, slo: Option<&Slo>) -> Self {
        Self {
            max_p95_ms: analysis
                .max_p95_latency_ms
                .or(slo.map(|s| s.p95_latency_ms)),
            max_error_rate: analysis
                .max_error_rate
                .or(slo.and_then(|s| s.max_error_rate)),
        }
    }
}

/// One cohort's verdict for one interval; maps onto `CohortStatus`.
#[derive(Clone, Debug, PartialEq)]
pub struct CohortVerdict {
    pub verdict: Verdict,
    pub p95_ms: Option<f64>,
    pub error_rate: Option<f64>,
    /// Reported when the cohort offloaded anything or the analysis limits it.
    pub offload_ratio: Option<f64>,
    /// Language models: time to first token (p95) and decode speed (median), once observed.
    pub p95_ttft_ms: Option<f64>,
    pub decode_tokens_per_second: Option<f64>,
    pub samples: u64,
    pub message: String,
}

/// Judges a canary cohort's interval against the stable cohort of its class, if it has one.
pub fn analyze_cohort(
    canary: &CohortWindow,
    stable: Option<Baseline<'_>>,
    analysis: &Analysis,
    slo: Option<&Slo>,
    devices: Liveness,
) -> CohortVerdict {
    let samples = canary.samples();
    let p95_ms = canary.p95_ms();
    let error_rate = canary.error_rate();
    let offload_ratio = canary
        .offload_ratio()
        .filter(|_| canary.offload.requests > 0 || analysis.max_offload_ratio.is_some());
    let llm = canary.llm.as_ref();
    let p95_ttft_ms = llm
        .and_then(|l| l.time_to_first_token.quantile(0.95))
        .map(|s| s * 1000.0);
    let decode_tokens_per_second = llm.and_then(|l| l.decode_tokens_per_second.quantile(0.5));
    let verdict = |verdict, message: String| CohortVerdict {
        verdict,
        p95_ms,
        error_rate,
        offload_ratio,
        p95_ttft_ms,
        decode_tokens_per_second,
        samples,
        message,
    };

    if samples < analysis.min_samples {
        let have = format!("{samples} of {} samples", analysis.min_samples);
        return if devices.total == 0 {
            verdict(
                Verdict::Inconclusive,
                format!("{have}; cohort has no devices"),
            )
        } else if devices.online == 0 {
            verdict(
                Verdict::Inconclusive,
                format!("{have}; all {} devices offline", devices.total),
            )
        } else {
            verdict(
                Verdict::Pending,
                format!(
                    "{have} from {} of {} devices online",
                    devices.online, devices.total
                ),
            )
        };
    }

    let limits = Thresholds::new(analysis, slo);
    let mut failures = Vec::new();
    let mut checks = Vec::new();
    if let (Some(p95), Some(max)) = (p95_ms, limits.max_p95_ms) {
        let line = format!("p95 {} ms", fmt_num(p95));
        if p95 > max {
            failures.push(format!("{line} above the {} ms limit", fmt_num(max)));
        } else {
            checks.push(format!("{line} within {} ms", fmt_num(max)));
        }
    }
    if let (Some(rate), Some(max)) = (error_rate, limits.max_error_rate) {
        let line = format!("error rate {}", percent(rate));
        if rate > max {
            failures.push(format!("{line} above the {} limit", percent(max)));
        } else {
            checks.push(format!("{line} within {}", percent(max)));
        }
    }
    if let (Some(ratio), Some(max)) = (offload_ratio, analysis.max_offload_ratio) {
        let line = format!("offload ratio {}", percent(ratio));
        if ratio > max {
            failures.push(format!("{line} above the {} limit", percent(max)));
        } else {
            checks.push(format!("{line} within {}", percent(max)));
        }
    }
    if let Some(waiting) = llm_gates(canary, analysis, &mut failures, &mut checks) {
        return verdict(Verdict::Pending, waiting);
    }
    let mut uncompared = None;
    match stable {
        Some(stable) if stable.window.samples() >= analysis.min_samples => {
            regressions(canary, stable.window, &mut failures, &mut checks);
        }
        Some(stable) if stable.devices.online > 0 => {
            if failures.is_empty() {
                let have = stable.window.samples();
                let min = analysis.min_samples;
                return verdict(
                    Verdict::Pending,
                    format!(
                        "waiting to compare with the stable cohort ({have} of {min} samples \
                         from {} of {} devices online)",
                        stable.devices.online, stable.devices.total
                    ),
                );
            }
        }
        Some(stable) => {
            uncompared = Some(format!(
                "not compared: all {} stable devices offline",
                stable.devices.total
            ));
        }
        None => uncompared = Some("no stable cohort to compare with".to_string()),
    }

    if failures.is_empty() {
        let checked = match (checks.is_empty(), uncompared) {
            (true, Some(why)) => format!("no thresholds and {why}"),
            (true, None) => "no checks".to_string(),
            (false, Some(why)) => format!("{}; {why}", checks.join(", ")),
            (false, None) => checks.join(", "),
        };
        verdict(Verdict::Pass, format!("{checked} over {samples} samples"))
    } else {
        verdict(
            Verdict::Fail,
            format!("{} over {samples} samples", failures.join("; ")),
        )
    }
}

/// Time to first token (p95) and decode speed (median) of a language model's cohort, each
/// judged once it has `minSamples` observations; `Some(message)` while one is still short.
fn llm_gates(
    canary: &CohortWindow,
    analysis: &Analysis,
    failures: &mut Vec<String>,
    checks: &mut Vec<String>,
) -> Option<String> {
    let llm = canary.llm.clone().unwrap_or_default();
    let min = analysis.min_samples;
    if let Some(max) = analysis.max_p95_ttft_ms {
        let have = llm.time_to_first_token.count();
        if have < min {
            return Some(format!("{have} of {min} time-to-first-token samples"));
        }
        let p95 = llm.time_to_first_token.quantile(0.95).unwrap_or(0.0) * 1000.0;
        let line = format!("TTFT p95 {} ms", fmt_num(p95));
        if p95 > max {
            failures.push(format!("{line} above the {} ms limit", fmt_num(max)));
        } else {
            checks.push(format!("{line} within {} ms", fmt_num(max)));
        }
    }
    if let Some(floor) = analysis.min_decode_tokens_per_second {
        let have = llm.decode_tokens_per_second.count();
        if have < min {
            return Some(format!("{have} of {min} decode-speed samples"));
        }
        let median = llm.decode_tokens_per_second.quantile(0.5).unwrap_or(0.0);
        let line = format!("decode {} tokens/s (median)", fmt_num(median));
        if median < floor {
            failures.push(format!(
                "{line} below the {} tokens/s minimum",
                fmt_num(floor)
            ));
        } else {
            checks.push(format!("{line} at least {}", fmt_num(floor)));
        }
    }
    None
}

fn regressions(
    canary: &CohortWindow,
    stable: &CohortWindow,
    failures: &mut Vec<String>,
    checks: &mut Vec<String>,
) {
    let language = canary.llm.as_ref().zip(stable.llm.as_ref());
    let (what, mine, theirs) = match language {
        Some((mine, theirs)) => (
            "TTFT p95",
            mine.time_to_first_token.quantile(0.95).map(|s| s * 1000.0),
            theirs
                .time_to_first_token
                .quantile(0.95)
                .map(|s| s * 1000.0),
        ),
        None => ("p95", canary.p95_ms(), stable.p95_ms()),
    };
    if let (Some(mine), Some(theirs)) = (mine, theirs) {
        if mine > theirs * REGRESSION_FACTOR && mine > theirs + REGRESSION_SLACK_MS {
            failures.push(format!(
                "{what} {} ms regressed against the stable cohort's {} ms",
                fmt_num(mine),
                fmt_num(theirs)
            ));
        } else {
            checks.push(format!("{what} on par with stable {} ms", fmt_num(theirs)));
        }
    }
    if let Some((mine, theirs)) = language {
        let median = |w: &LlmWindow| w.decode_tokens_per_second.quantile(0.5);
        if let (Some(mine), Some(theirs)) = (median(mine), median(theirs)) {
            if mine < theirs / REGRESSION_FACTOR {
                failures.push(format!(
                    "decode {} tokens/s regressed against the stable cohort's {}",
                    fmt_num(mine),
                    fmt_num(theirs)
                ));
            } else {
                checks.push(format!(
                    "decode on par with stable {} tokens/s",
                    fmt_num(theirs)
                ));
            }
        }
    }
    if let (Some(mine), Some(theirs)) = (canary.error_rate(), stable.error_rate()) {
        if mine > theirs * ERROR_REGRESSION_FACTOR && mine > theirs + ERROR_REGRESSION_SLACK {
            failures.push(format!(
                "error rate {} regressed against the stable cohort's {}",
                percent(mine),
                percent(theirs)
            ));
        } else {
            checks.push(format!("error rate on par with stable {}", percent(theirs)));
        }
    }
}

fn percent(rate: f64) -> String {
    format!("{}%", fmt_num(rate * 100.0))
}

#[cfg(test)]
mod tests;
