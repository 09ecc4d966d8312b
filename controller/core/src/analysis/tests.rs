use edgefleet_crds::{Analysis, Slo, Verdict};
use edgefleet_protocol::LatencyHistogram;

use super::*;

/// `n` inferences spread evenly over `(low_ms, high_ms]`, `errors` of them failed.
fn window(low_ms: f64, high_ms: f64, n: u64, errors: u64) -> CohortWindow {
    let mut latency = LatencyHistogram::default();
    for i in 1..=n {
        latency.observe((low_ms + (high_ms - low_ms) * i as f64 / n as f64) / 1000.0);
    }
    CohortWindow {
        latency,
        requests: n,
        errors,
        offload: Default::default(),
        llm: None,
    }
}

fn analysis(max_p95: Option<f64>, max_errors: Option<f64>) -> Analysis {
    Analysis {
        min_samples: 50,
        max_p95_latency_ms: max_p95,
        max_error_rate: max_errors,
        ..Analysis::default()
    }
}

const ALL_ONLINE: Liveness = Liveness {
    online: 4,
    total: 4,
};

/// Judges `canary` against `stable` (a class with four stable devices, all online), or with no
/// stable device in the class at all.
fn judge(canary: &CohortWindow, stable: Option<&CohortWindow>, a: &Analysis) -> CohortVerdict {
    let baseline = stable.map(|window| Baseline {
        window,
        devices: ALL_ONLINE,
    });
    analyze_cohort(canary, baseline, a, None, ALL_ONLINE)
}

#[test]
fn too_few_samples_from_online_devices_is_pending() {
    let v = judge(
        &window(10.0, 15.0, 49, 49),
        None,
        &analysis(Some(1.0), Some(0.0)),
    );
    assert_eq!(v.verdict, Verdict::Pending);
    assert_eq!(v.samples, 49);
    assert_eq!(v.message, "49 of 50 samples from 4 of 4 devices online");
}

#[test]
fn no_traffic_at_all_with_devices_online_is_pending() {
    let v = judge(&CohortWindow::default(), None, &analysis(None, None));
    assert_eq!(v.verdict, Verdict::Pending);
    assert_eq!(v.p95_ms, None);
    assert_eq!(v.error_rate, None);
}

#[test]
fn too_few_samples_with_every_device_offline_is_inconclusive() {
    let offline = Liveness {
        online: 0,
        total: 3,
    };
    let v = analyze_cohort(
        &window(10.0, 15.0, 10, 0),
        None,
        &analysis(None, None),
        None,
        offline,
    );
    assert_eq!(v.verdict, Verdict::Inconclusive);
    assert_eq!(v.message, "10 of 50 samples; all 3 devices offline");
    let empty = analyze_cohort(
        &CohortWindow::default(),
        None,
        &analysis(None, None),
        None,
        Liveness::default(),
    );
    assert_eq!(empty.verdict, Verdict::Inconclusive);
}

#[test]
fn enough_samples_count_even_when_devices_went_offline_since() {
    let offline = Liveness {
        online: 0,
        total: 3,
    };
    let v = analyze_cohort(
        &window(10.0, 15.0, 100, 0),
        None,
        &analysis(Some(50.0), None),
        None,
        offline,
    );
    assert_eq!(v.verdict, Verdict::Pass);
}

#[test]
fn within_thresholds_passes_and_says_so() {
    // Uniform in (10, 15] ms: p95 interpolates to 14.75 ms.
    let v = judge(
        &window(10.0, 15.0, 1000, 1),
        None,
        &analysis(Some(20.0), Some(0.01)),
    );
    assert_eq!(v.verdict, Verdict::Pass);
    let p95 = v.p95_ms.expect("data");
    assert!((p95 - 14.75).abs() < 1e-6, "{p95}");
    assert_eq!(v.error_rate, Some(0.001));
    assert_eq!(
        v.message,
        "p95 14.75 ms within 20 ms, error rate 0.1% within 1%; no stable cohort to compare with \
         over 1000 samples"
    );
}

#[test]
fn p95_just_above_the_limit_fails_just_below_passes() {
    let canary = window(10.0, 15.0, 1000, 0);
    assert_eq!(
        judge(&canary, None, &analysis(Some(14.7), None)).verdict,
        Verdict::Fail
    );
    assert_eq!(
        judge(&canary, None, &analysis(Some(14.8), None)).verdict,
        Verdict::Pass
    );
    let v = judge(&canary, None, &analysis(Some(14.7), None));
    assert_eq!(
        v.message,
        "p95 14.75 ms above the 14.7 ms limit over 1000 samples"
    );
}

#[test]
fn error_rate_above_the_limit_fails() {
    let v = judge(&window(1.0, 2.0, 200, 3), None, &analysis(None, Some(0.01)));
    assert_eq!(v.verdict, Verdict::Fail);
    assert_eq!(
        v.message,
        "error rate 1.5% above the 1% limit over 200 samples"
    );
    let v = judge(&window(1.0, 2.0, 200, 2), None, &analysis(None, Some(0.01)));
    assert_eq!(v.verdict, Verdict::Pass);
}

#[test]
fn every_failed_check_is_named() {
    let v = judge(
        &window(100.0, 150.0, 100, 50),
        None,
        &analysis(Some(20.0), Some(0.1)),
    );
    assert_eq!(v.verdict, Verdict::Fail);
    assert!(v.message.contains("p95"), "{}", v.message);
    assert!(v.message.contains("error rate 50%"), "{}", v.message);
}

#[test]
fn the_slo_fills_in_missing_thresholds_but_does_not_override() {
    let slo = Slo {
        p95_latency_ms: 10.0,
        max_error_rate: Some(0.5),
    };
    let canary = window(10.0, 15.0, 100, 0);
    let v = analyze_cohort(&canary, None, &analysis(None, None), Some(&slo), ALL_ONLINE);
    assert_eq!(v.verdict, Verdict::Fail);
    let v = analyze_cohort(
        &canary,
        None,
        &analysis(Some(30.0), None),
        Some(&slo),
        ALL_ONLINE,
    );
    assert_eq!(v.verdict, Verdict::Pass);
    assert_eq!(
        Thresholds::new(&analysis(Some(30.0), None), Some(&slo)),
        Thresholds {
            max_p95_ms: Some(30.0),
            max_error_rate: Some(0.5)
        }
    );
}

#[test]
fn a_clear_latency_regression_against_stable_fails_without_any_threshold() {
    let stable = window(10.0, 15.0, 500, 0); // p95 14.75
    let canary = window(20.0, 30.0, 500, 0); // p95 29.5
    let v = judge(&canary, Some(&stable), &analysis(None, None));
    assert_eq!(v.verdict, Verdict::Fail);
    assert_eq!(
        v.message,
        "p95 29.5 ms regressed against the stable cohort's 14.75 ms over 500 samples"
    );
}

#[test]
fn small_absolute_differences_are_not_regressions() {
    // 2x slower but only ~1 ms: noise on a fast model.
    let stable = window(0.7, 1.0, 500, 0);
    let canary = window(1.5, 2.0, 500, 0);
    assert_eq!(
        judge(&canary, Some(&stable), &analysis(None, None)).verdict,
        Verdict::Pass
    );
    // 1.3x slower and 10 ms more: within the factor.
    let stable = window(30.0, 50.0, 500, 0);
    let canary = window(50.0, 70.0, 500, 0);
    assert_eq!(
        judge(&canary, Some(&stable), &analysis(None, None)).verdict,
        Verdict::Pass
    );
}

#[test]
fn an_error_regression_against_stable_fails() {
    let stable = window(1.0, 2.0, 1000, 5); // 0.5%
    let bad = window(1.0, 2.0, 1000, 30); // 3%
    let tolerable = window(1.0, 2.0, 1000, 12); // 1.2%: more than 2x but within one point
    let a = analysis(None, None);
    assert_eq!(judge(&bad, Some(&stable), &a).verdict, Verdict::Fail);
    assert_eq!(judge(&tolerable, Some(&stable), &a).verdict, Verdict::Pass);
}

#[test]
fn a_canary_waits_for_a_stable_cohort_short_of_samples_while_it_has_devices_online() {
    let stable = window(1.0, 2.0, 10, 0);
    let canary = window(100.0, 150.0, 500, 0);
    let v = judge(&canary, Some(&stable), &analysis(None, None));
    assert_eq!(v.verdict, Verdict::Pending);
    assert_eq!(
        v.message,
        "waiting to compare with the stable cohort (10 of 50 samples from 4 of 4 devices online)"
    );
    // Once the baseline has its samples, the regression shows.
    let stable = window(1.0, 2.0, 50, 0);
    let v = judge(&canary, Some(&stable), &analysis(None, None));
    assert_eq!(v.verdict, Verdict::Fail);
}

#[test]
fn a_canary_that_fails_its_own_checks_does_not_wait_for_the_baseline() {
    let stable = window(1.0, 2.0, 10, 0);
    let canary = window(100.0, 150.0, 500, 0);
    let v = judge(&canary, Some(&stable), &analysis(Some(50.0), None));
    assert_eq!(v.verdict, Verdict::Fail);
    assert_eq!(
        v.message,
        "p95 147.5 ms above the 50 ms limit over 500 samples"
    );
}

#[test]
fn with_every_stable_device_offline_the_canary_is_judged_alone_and_says_so() {
    let stable = window(1.0, 2.0, 10, 0);
    let canary = window(100.0, 150.0, 500, 0);
    let offline = Baseline {
        window: &stable,
        devices: Liveness {
            online: 0,
            total: 3,
        },
    };
    let v = analyze_cohort(
        &canary,
        Some(offline),
        &analysis(Some(200.0), None),
        None,
        ALL_ONLINE,
    );
    assert_eq!(v.verdict, Verdict::Pass);
    assert_eq!(
        v.message,
        "p95 147.5 ms within 200 ms; not compared: all 3 stable devices offline over 500 samples"
    );
    let v = judge(&canary, None, &analysis(None, None));
    assert_eq!(
        v.message,
        "no thresholds and no stable cohort to compare with over 500 samples"
    );
}

#[test]
fn latencies_beyond_the_last_bucket_report_the_highest_bound() {
    let v = judge(
        &window(20_000.0, 30_000.0, 100, 0),
        None,
        &analysis(Some(5000.0), None),
    );
    assert_eq!(v.verdict, Verdict::Fail);
    assert_eq!(v.p95_ms, Some(10_000.0));
}

#[test]
fn windows_of_several_devices_merge() {
    let mut merged = CohortWindow::default();
    for _ in 0..5 {
        let w = window(10.0, 15.0, 20, 1);
        merged.add(w.requests, w.errors, &w.latency);
    }
    assert_eq!(merged.samples(), 100);
    assert_eq!(merged.error_rate(), Some(0.05));
    let v = judge(&merged, None, &analysis(Some(20.0), Some(0.1)));
    assert_eq!(v.verdict, Verdict::Pass);
}

#[test]
fn samples_fall_back_to_the_histogram_count() {
    let mut w = window(10.0, 15.0, 80, 0);
    w.requests = 0;
    assert_eq!(w.samples(), 80);
    assert_eq!(w.error_rate(), Some(0.0));
}

fn offloading(n: u64, offloaded: u64) -> CohortWindow {
    let mut w = window(10.0, 15.0, n, 0);
    w.offload.requests = offloaded;
    w
}

#[test]
fn offload_ratio_above_the_limit_fails_and_within_passes() {
    let limited = Analysis {
        max_offload_ratio: Some(0.25),
        ..analysis(None, None)
    };
    let v = judge(&offloading(100, 40), None, &limited);
    assert_eq!(v.verdict, Verdict::Fail);
    assert_eq!(v.offload_ratio, Some(0.4));
    assert_eq!(
        v.message,
        "offload ratio 40% above the 25% limit over 100 samples"
    );

    let v = judge(&offloading(100, 25), None, &limited);
    assert_eq!(v.verdict, Verdict::Pass, "{}", v.message);
    assert!(
        v.message.contains("offload ratio 25% within 25%"),
        "{}",
        v.message
    );
}

#[test]
fn offload_ratio_is_reported_but_not_judged_without_a_limit() {
    let v = judge(&offloading(100, 90), None, &analysis(None, None));
    assert_eq!(v.verdict, Verdict::Pass);
    assert_eq!(v.offload_ratio, Some(0.9));
    // No offload policy and no limit: nothing to report.
    let v = judge(&offloading(100, 0), None, &analysis(None, None));
    assert_eq!(v.offload_ratio, None);
}

#[test]
fn offload_counts_merge_across_devices() {
    let mut merged = CohortWindow::default();
    merged.merge(&offloading(60, 6));
    merged.merge(&offloading(40, 24));
    assert_eq!(merged.offload_ratio(), Some(0.3));
    assert_eq!(merged.samples(), 100);
}

#[test]
fn llm_windows_merge_and_stay_absent_for_other_models() {
    use edgefleet_protocol::llm::LlmWindow;
    let mut merged = CohortWindow::default();
    merged.merge(&window(10.0, 15.0, 10, 0));
    assert_eq!(merged.llm, None, "no language model, no LLM window");

    let mut llm = LlmWindow::default();
    llm.time_to_first_token.observe(0.06);
    llm.completion_tokens = 120;
    let mut one = window(10.0, 15.0, 10, 0);
    one.add_llm(&llm);
    merged.merge(&one);
    merged.merge(&one);
    let llm = merged.llm.expect("merged");
    assert_eq!(llm.completion_tokens, 240);
    assert_eq!(llm.time_to_first_token.count(), 2);
}

/// A language model's cohort: `n` requests with TTFT spread over (low, high] ms and decode
/// speeds over (slow, fast] tokens/s.
fn llm_window(n: u64, ttft_ms: (f64, f64), tokens_per_second: (f64, f64)) -> CohortWindow {
    let mut w = window(5.0, 10.0, n, 0);
    let mut llm = LlmWindow::default();
    for i in 1..=n {
        let f = i as f64 / n as f64;
        llm.time_to_first_token
            .observe((ttft_ms.0 + (ttft_ms.1 - ttft_ms.0) * f) / 1000.0);
        llm.decode_tokens_per_second
            .observe(tokens_per_second.0 + (tokens_per_second.1 - tokens_per_second.0) * f);
    }
    w.add_llm(&llm);
    w
}

fn llm_gates(max_ttft_ms: Option<f64>, min_tps: Option<f64>) -> Analysis {
    Analysis {
        max_p95_ttft_ms: max_ttft_ms,
        min_decode_tokens_per_second: min_tps,
        ..analysis(None, None)
    }
}

#[test]
fn ttft_and_decode_speed_within_their_gates_pass_and_say_so() {
    let v = judge(
        &llm_window(100, (40.0, 90.0), (100.0, 150.0)),
        None,
        &llm_gates(Some(200.0), Some(80.0)),
    );
    assert_eq!(v.verdict, Verdict::Pass, "{}", v.message);
    assert!(v.message.contains("TTFT p95 "), "{}", v.message);
    assert!(v.message.contains("within 200 ms"), "{}", v.message);
    assert!(
        v.message.contains("tokens/s (median) at least 80"),
        "{}",
        v.message
    );
}

#[test]
fn a_slow_first_token_or_slow_decoding_fails_by_name() {
    let slow_start = judge(
        &llm_window(100, (300.0, 600.0), (100.0, 150.0)),
        None,
        &llm_gates(Some(200.0), Some(80.0)),
    );
    assert_eq!(slow_start.verdict, Verdict::Fail);
    assert!(
        slow_start.message.contains("above the 200 ms limit"),
        "{}",
        slow_start.message
    );
    let slow_decode = judge(
        &llm_window(100, (40.0, 90.0), (20.0, 40.0)),
        None,
        &llm_gates(Some(200.0), Some(80.0)),
    );
    assert_eq!(slow_decode.verdict, Verdict::Fail);
    assert!(
        slow_decode
            .message
            .contains("below the 80 tokens/s minimum"),
        "{}",
        slow_decode.message
    );
}

#[test]
fn llm_gates_wait_for_min_samples_of_their_own() {
    // Enough requests, but too few of them produced a first token yet.
    let mut w = window(5.0, 10.0, 100, 0);
    w.add_llm(
        &llm_window(10, (40.0, 90.0), (100.0, 150.0))
            .llm
            .unwrap_or_default(),
    );
    let v = judge(&w, None, &llm_gates(Some(200.0), None));
    assert_eq!(v.verdict, Verdict::Pending);
    assert_eq!(v.message, "10 of 50 time-to-first-token samples");
    // Without LLM gates the same cohort is judged on latency alone.
    assert_eq!(
        judge(&w, None, &llm_gates(None, None)).verdict,
        Verdict::Pass
    );
}

#[test]
fn language_models_are_compared_with_stable_on_first_token_and_decode_speed() {
    let a = llm_gates(None, None);
    // Same start and speed, but the canary's answers ran longer (whole-request p95 ×10):
    // not a regression of the model.
    let mut long_answers = llm_window(100, (40.0, 90.0), (100.0, 150.0));
    long_answers.latency = window(50.0, 100.0, 100, 0).latency;
    let stable = llm_window(100, (40.0, 90.0), (100.0, 150.0));
    let v = judge(&long_answers, Some(&stable), &a);
    assert_eq!(v.verdict, Verdict::Pass, "{}", v.message);
    assert!(
        v.message.contains("TTFT p95 on par with stable"),
        "{}",
        v.message
    );
    assert!(
        v.message.contains("decode on par with stable"),
        "{}",
        v.message
    );

    let slow_start = llm_window(100, (300.0, 600.0), (100.0, 150.0));
    let v = judge(&slow_start, Some(&stable), &a);
    assert_eq!(v.verdict, Verdict::Fail);
    assert!(v.message.contains("TTFT p95 "), "{}", v.message);
    assert!(
        v.message.contains("regressed against the stable cohort's"),
        "{}",
        v.message
    );

    let slow_decode = llm_window(100, (40.0, 90.0), (30.0, 60.0));
    let v = judge(&slow_decode, Some(&stable), &a);
    assert_eq!(v.verdict, Verdict::Fail);
    assert!(v.message.contains("tokens/s regressed"), "{}", v.message);
}
