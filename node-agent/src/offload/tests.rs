use std::time::{Duration, Instant};

use edgefleet_protocol::{ConfidenceTrigger, OffloadRateLimit, OffloadTriggers, ScoreKind};

use super::*;

// ---------------------------------------------------------------- pure decisions

pub(crate) fn triggers(
    confidence: Option<f64>,
    depth: Option<u32>,
    budget: Option<u32>,
) -> OffloadTriggers {
    OffloadTriggers {
        confidence_below: confidence.map(|threshold| ConfidenceTrigger {
            threshold,
            output: "prob".into(),
            scores: ScoreKind::Probabilities,
        }),
        queue_depth_above: depth,
        latency_budget_ms: budget,
        ..OffloadTriggers::default()
    }
}

fn load(ahead: usize, slots: usize, run_ms: Option<f64>) -> LocalLoad {
    LocalLoad {
        ahead,
        slots,
        recent_run_seconds: run_ms.map(|ms| ms / 1000.0),
    }
}

#[test]
fn queue_depth_trigger_fires_only_above_the_depth() {
    let t = triggers(None, Some(2), None);
    assert_eq!(trigger_before_local(&t, &load(2, 1, Some(5.0))), None);
    assert_eq!(
        trigger_before_local(&t, &load(3, 1, Some(5.0))),
        Some(Trigger::QueueDepth)
    );
    // Without the trigger a long queue stays local.
    let none = triggers(Some(0.5), None, None);
    assert_eq!(trigger_before_local(&none, &load(100, 1, Some(5.0))), None);
}

#[test]
fn latency_budget_trigger_counts_the_waves_ahead() {
    let t = triggers(None, None, Some(25));
    // 10 ms runs, 2 slots: 3 ahead -> this request runs in the second wave (20 ms).
    assert_eq!(trigger_before_local(&t, &load(3, 2, Some(10.0))), None);
    // 4 ahead -> third wave, 30 ms > 25 ms.
    assert_eq!(
        trigger_before_local(&t, &load(4, 2, Some(10.0))),
        Some(Trigger::LatencyBudget)
    );
    // A model slower than the budget on its own offloads even with an empty queue.
    assert_eq!(
        trigger_before_local(&t, &load(0, 2, Some(30.0))),
        Some(Trigger::LatencyBudget)
    );
    // Before the first local run nothing is known: run locally.
    assert_eq!(trigger_before_local(&t, &load(50, 2, None)), None);
}

fn llm_load(ahead: usize, slots: usize, generation_ms: f64, prefill_ms: f64) -> LlmLoad {
    LlmLoad {
        ahead,
        slots,
        recent_generation_seconds: Some(generation_ms / 1000.0),
        recent_prefill_seconds: Some(prefill_ms / 1000.0),
    }
}

#[test]
fn ttft_budget_counts_the_generations_ahead_and_the_prompt() {
    let t = OffloadTriggers {
        ttft_budget_ms: Some(400),
        ..OffloadTriggers::default()
    };
    // A free slot: only this prompt's processing (50 ms) stands before the first token.
    assert_eq!(
        llm_trigger_before_local(&t, &llm_load(0, 1, 900.0, 50.0), true),
        None
    );
    // One sequence holds the only slot: 900 ms of its generation, then 50 ms.
    assert_eq!(
        llm_trigger_before_local(&t, &llm_load(1, 1, 900.0, 50.0), true),
        Some(Trigger::TtftBudget)
    );
    // Two slots, one busy: a slot is free.
    assert_eq!(
        llm_trigger_before_local(&t, &llm_load(1, 2, 900.0, 50.0), true),
        None
    );
    // Short generations: two waves of 150 ms plus 50 ms = 350 ms, inside the budget.
    assert_eq!(
        llm_trigger_before_local(&t, &llm_load(2, 1, 150.0, 50.0), true),
        None
    );
    // A prompt slower than the budget on its own goes too, even with nothing ahead.
    assert_eq!(
        llm_trigger_before_local(&t, &llm_load(0, 1, 900.0, 450.0), true),
        Some(Trigger::TtftBudget)
    );
    // Before the model has answered once nothing is known: answer locally.
    let unknown = LlmLoad {
        ahead: 9,
        slots: 1,
        ..LlmLoad::default()
    };
    assert_eq!(llm_trigger_before_local(&t, &unknown, true), None);
}

#[test]
fn a_prompt_over_the_context_goes_only_with_its_trigger() {
    let on = OffloadTriggers {
        context_exceeded: true,
        queue_depth_above: Some(0),
        ..OffloadTriggers::default()
    };
    let idle = llm_load(0, 1, 900.0, 50.0);
    assert_eq!(
        llm_trigger_before_local(&on, &idle, false),
        Some(Trigger::ContextExceeded)
    );
    assert_eq!(llm_trigger_before_local(&on, &idle, true), None);
    assert_eq!(
        llm_trigger_before_local(&on, &llm_load(1, 1, 900.0, 50.0), true),
        Some(Trigger::QueueDepth)
    );
    // Without it the device refuses the prompt itself, whatever else is set.
    let off = OffloadTriggers {
        queue_depth_above: Some(0),
        ttft_budget_ms: Some(1),
        ..OffloadTriggers::default()
    };
    assert_eq!(
        llm_trigger_before_local(&off, &llm_load(5, 1, 900.0, 50.0), false),
        None
    );
}

#[test]
fn confidence_trigger_fires_strictly_below_the_threshold() {
    let t = triggers(Some(0.6), None, None);
    assert_eq!(
        trigger_after_local(&t, Some(0.59)),
        Some(Trigger::Confidence)
    );
    assert_eq!(trigger_after_local(&t, Some(0.6)), None);
    assert_eq!(trigger_after_local(&t, None), None, "no score, no trigger");
    assert_eq!(
        trigger_after_local(&triggers(None, Some(1), None), Some(0.1)),
        None
    );
}

#[test]
fn confidence_is_the_top_probability_of_the_least_sure_row() {
    let p = ScoreKind::Probabilities;
    assert_eq!(confidence(&[0.1, 0.7, 0.2], &[1, 3], p), Some(0.7));
    assert_eq!(
        confidence(&[0.1, 0.9, 0.5, 0.5], &[2, 2], p),
        Some(0.5),
        "batch of two rows"
    );
    // One probability per row: a binary classifier.
    assert_eq!(confidence(&[0.2], &[1, 1], p), Some(0.8));
    assert_eq!(confidence(&[0.3], &[], p), Some(0.7));
    // Logits: softmax first.
    let c = confidence(&[0.0, 0.0], &[1, 2], ScoreKind::Logits).unwrap();
    assert!((c - 0.5).abs() < 1e-12);
    let c = confidence(&[2.0, 0.0, 0.0], &[1, 3], ScoreKind::Logits).unwrap();
    let expected = 2f64.exp() / (2f64.exp() + 2.0);
    assert!((c - expected).abs() < 1e-12, "{c}");
    let c = confidence(&[0.0], &[1], ScoreKind::Logits).unwrap();
    assert!((c - 0.5).abs() < 1e-12);
    // Nothing to judge.
    assert_eq!(confidence(&[], &[1, 0], p), None);
    assert_eq!(confidence(&[0.5, 0.5, 0.1], &[1, 2], p), None);
    assert_eq!(confidence(&[f64::NAN, 0.5], &[1, 2], p), None);
}

#[test]
fn token_bucket_allows_a_burst_then_the_rate() {
    let limit = OffloadRateLimit {
        requests_per_second: 2.0,
        burst: 3,
    };
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(&limit, t0);
    assert!((0..3).all(|_| bucket.try_take(t0)), "a full burst");
    assert!(!bucket.try_take(t0), "then empty");
    assert!(!bucket.try_take(t0 + Duration::from_millis(400)));
    assert!(
        bucket.try_take(t0 + Duration::from_millis(500)),
        "2/s: one token per 500 ms"
    );
    assert!(!bucket.try_take(t0 + Duration::from_millis(600)));
    // A long pause refills to the burst, never beyond.
    let later = t0 + Duration::from_secs(60);
    assert_eq!((0..10).filter(|_| bucket.try_take(later)).count(), 3);
    // Time going backwards (another thread's older Instant) takes nothing extra.
    assert!(!bucket.try_take(t0));
}
