//! Simulated language-model traffic: what a device serving a small GGUF model on llama.cpp
//! reports in one telemetry window. Per request: a queue wait of 0–10 ms, a time to first
//! token of 40–90 ms (queue wait and prompt processing included), a decode speed of 100–150
//! tokens/s (so 6.7–10 ms between tokens), 32–256 prompt and 16–128 completion tokens. One
//! request in a hundred overflows the context and one in fifty finds every slot busy: those
//! are refused and generate nothing.

use edgefleet_protocol::LatencyHistogram;
use edgefleet_protocol::llm::LlmWindow;

use crate::rng::Rng;

/// The bounds every simulated request stays within (the e2e test checks Prometheus' answers
/// against them).
pub const TIME_TO_FIRST_TOKEN_MS: (f64, f64) = (40.0, 90.0);
pub const DECODE_TOKENS_PER_SECOND: (f64, f64) = (100.0, 150.0);
const QUEUE_WAIT_MS: (f64, f64) = (0.0, 10.0);
const PROMPT_TOKENS: (u64, u64) = (32, 256);
const COMPLETION_TOKENS: (u64, u64) = (16, 128);
const CONTEXT_OVERFLOW_RATE: f64 = 0.01;
const REJECTED_BUSY_RATE: f64 = 0.02;

fn uniform(rng: &mut Rng, (low, high): (f64, f64)) -> f64 {
    low + (high - low) * rng.next_f64()
}

fn uniform_count(rng: &mut Rng, (low, high): (u64, u64)) -> u64 {
    low + rng.next_u64() % (high - low + 1)
}

/// One window of `requests` language-model requests: the end-to-end latency of each
/// answered request (the `ModelWindow`'s histogram), the failed ones (refusals) and the LLM
/// window.
pub fn window(rng: &mut Rng, requests: u64) -> (LatencyHistogram, u64, LlmWindow) {
    let mut latency = LatencyHistogram::default();
    let mut llm = LlmWindow::default();
    let mut refused = 0;
    for _ in 0..requests {
        if rng.next_f64() < CONTEXT_OVERFLOW_RATE {
            llm.context_overflows += 1;
            refused += 1;
            continue;
        }
        if rng.next_f64() < REJECTED_BUSY_RATE {
            llm.rejected_busy += 1;
            refused += 1;
            continue;
        }
        let queue_wait = uniform(rng, QUEUE_WAIT_MS) / 1000.0;
        let first_token = uniform(rng, TIME_TO_FIRST_TOKEN_MS) / 1000.0;
        let prompt_tokens = uniform_count(rng, PROMPT_TOKENS);
        let completion_tokens = uniform_count(rng, COMPLETION_TOKENS);
        let decode_rate = uniform(rng, DECODE_TOKENS_PER_SECOND);
        llm.queue_wait.observe(queue_wait);
        llm.time_to_first_token.observe(first_token);
        llm.prompt_tokens_per_second
            .observe(prompt_tokens as f64 / (first_token - queue_wait));
        // Gaps jitter ±5 % around the request's speed; the decode rate is what they add up to.
        let mut decode_seconds = 0.0;
        for _ in 1..completion_tokens {
            let gap = (0.95 + 0.1 * rng.next_f64()) / decode_rate;
            llm.inter_token_latency.observe(gap);
            decode_seconds += gap;
        }
        llm.decode_tokens_per_second
            .observe((completion_tokens - 1) as f64 / decode_seconds);
        llm.prompt_tokens += prompt_tokens;
        llm.completion_tokens += completion_tokens;
        latency.observe(first_token + decode_seconds);
    }
    (latency, refused, llm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_stay_within_the_documented_ranges_and_layouts() {
        let mut rng = Rng::new(4);
        let (latency, refused, llm) = window(&mut rng, 2000);
        assert_eq!(llm.check(), Ok(()));
        assert!(latency.has_shared_layout());
        assert_eq!(refused, llm.context_overflows + llm.rejected_busy);
        assert!((20..120).contains(&refused), "{refused} refused of 2000");
        let answered = 2000 - refused;
        assert_eq!(latency.count(), answered);
        assert_eq!(llm.time_to_first_token.count(), answered);
        assert_eq!(llm.decode_tokens_per_second.count(), answered);
        let p95 = llm.time_to_first_token.quantile(0.95).expect("p95");
        assert!((0.07..=0.1).contains(&p95), "TTFT p95 {p95}");
        let gap = llm.inter_token_latency.quantile(0.5).expect("p50");
        assert!((0.005..=0.01).contains(&gap), "inter-token p50 {gap}");
        let decode = llm.decode_tokens_per_second.quantile(0.5).expect("p50");
        assert!((100.0..=150.0).contains(&decode), "decode p50 {decode}");
        assert!(llm.completion_tokens >= 16 * answered);
    }
}
