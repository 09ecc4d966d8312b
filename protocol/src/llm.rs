//! Language models: the per-window telemetry an agent serving one reports (time to first
//! token, inter-token latency, queue wait, token rates and counts) and the memory a GGUF model
//! needs at a given context length, which both the agent (before loading) and the controller
//! (choosing a variant) use.

use serde::{Deserialize, Serialize};

use crate::histogram::{LatencyHistogram, bucket_index, quantile};

/// Upper bounds in tokens per second, 1-1.5-2-3-5-7 per decade from 1 to 20,000.
pub const TOKEN_RATE_BUCKETS: [f64; 26] = [
    1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 70.0, 100.0, 150.0, 200.0, 300.0,
    500.0, 700.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 7000.0, 10000.0, 20000.0,
];

/// Non-cumulative counts over [`TOKEN_RATE_BUCKETS`] (+Inf last), one observation per request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenRateHistogram {
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Default for TokenRateHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; TOKEN_RATE_BUCKETS.len() + 1],
            sum: 0.0,
        }
    }
}

impl TokenRateHistogram {
    pub fn observe(&mut self, tokens_per_second: f64) {
        let index = bucket_index(&TOKEN_RATE_BUCKETS, tokens_per_second);
        if let Some(slot) = self.counts.get_mut(index) {
            *slot += 1;
        }
        if tokens_per_second.is_finite() {
            self.sum += tokens_per_second.max(0.0);
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn has_shared_layout(&self) -> bool {
        self.counts.len() == TOKEN_RATE_BUCKETS.len() + 1 && self.sum.is_finite() && self.sum >= 0.0
    }

    pub fn merge(&mut self, other: &TokenRateHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
        self.sum += other.sum;
    }

    /// As Prometheus' `histogram_quantile` answers it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&TOKEN_RATE_BUCKETS, &self.counts, q)
    }
}

/// What one language model did in one telemetry window. Sent inside a `ModelWindow` only by
/// agents serving a language model (wire v1, optional field: older controllers ignore it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LlmWindow {
    /// From the request's arrival to its first generated token (queue wait and prompt
    /// processing included); one observation per request that produced a token.
    pub time_to_first_token: LatencyHistogram,
    /// Between consecutive generated tokens of one request; one observation per gap.
    pub inter_token_latency: LatencyHistogram,
    /// From admission to a generation slot picking the request up.
    pub queue_wait: LatencyHistogram,
    /// Prompt tokens over prompt-processing time, one observation per request.
    pub prompt_tokens_per_second: TokenRateHistogram,
    /// Generated tokens after the first over their decode time, one per request with ≥ 2.
    pub decode_tokens_per_second: TokenRateHistogram,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests refused because prompt and `max_tokens` do not fit the context.
    pub context_overflows: u64,
    /// Requests refused because every slot and the queue were full.
    pub rejected_busy: u64,
}

impl LlmWindow {
    pub fn merge(&mut self, other: &LlmWindow) {
        self.time_to_first_token.merge(&other.time_to_first_token);
        self.inter_token_latency.merge(&other.inter_token_latency);
        self.queue_wait.merge(&other.queue_wait);
        self.prompt_tokens_per_second
            .merge(&other.prompt_tokens_per_second);
        self.decode_tokens_per_second
            .merge(&other.decode_tokens_per_second);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.context_overflows = self
            .context_overflows
            .saturating_add(other.context_overflows);
        self.rejected_busy = self.rejected_busy.saturating_add(other.rejected_busy);
    }

    pub fn check(&self) -> Result<(), String> {
        let latency = [
            ("timeToFirstToken", &self.time_to_first_token),
            ("interTokenLatency", &self.inter_token_latency),
            ("queueWait", &self.queue_wait),
        ];
        if let Some((name, _)) = latency.iter().find(|(_, h)| !h.has_shared_layout()) {
            return Err(format!("llm.{name} does not have the shared bucket layout"));
        }
        let rates = [
            ("promptTokensPerSecond", &self.prompt_tokens_per_second),
            ("decodeTokensPerSecond", &self.decode_tokens_per_second),
        ];
        if let Some((name, _)) = rates.iter().find(|(_, h)| !h.has_shared_layout()) {
            return Err(format!(
                "llm.{name} does not have the token-rate bucket layout"
            ));
        }
        Ok(())
    }
}

/// How a device should run a language model, from its deployment: the context length per
/// sequence and how many sequences at once (the KV cache the controller's fit check counted).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LlmRun {
    pub context_tokens: u32,
    pub slots: u32,
}

/// The shape of a GGUF language model, as its metadata states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufShape {
    pub architecture: String,
    /// File size: llama.cpp maps the weights, and repacks some quantizations into memory.
    pub weights_bytes: u64,
    pub layers: u64,
    pub embedding_length: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub vocab_size: u64,
    /// The context length the model was trained for.
    pub trained_context: u64,
}

/// The memory a language model needs, by part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlmMemory {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub compute_bytes: u64,
    pub runtime_bytes: u64,
}

impl LlmMemory {
    pub fn total_bytes(&self) -> u64 {
        self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.runtime_bytes
    }

    pub fn total_mib(&self) -> u64 {
        self.total_bytes().div_ceil(1 << 20)
    }
}

/// llama.cpp's fixed cost besides weights and caches (threads, graph, tokenizer tables),
/// measured with `llm-bench` (BENCHMARKS.md).
pub const LLM_RUNTIME_OVERHEAD_BYTES: u64 = 24 << 20;

/// Weights + an f16 KV cache of `context_tokens` per sequence slot + the compute buffer for
/// a `batch_tokens` prompt batch (logits for every vocabulary entry of one token, activations
/// of the batch) + [`LLM_RUNTIME_OVERHEAD_BYTES`].
pub fn llm_memory(
    shape: &GgufShape,
    context_tokens: u64,
    slots: u64,
    batch_tokens: u64,
) -> LlmMemory {
    let head_dim = shape.embedding_length / shape.heads.max(1);
    let kv_width = head_dim * shape.kv_heads;
    // K and V, two bytes each (f16), every layer, every position, every slot.
    let kv_cache_bytes = 2 * 2 * shape.layers * context_tokens * kv_width * slots.max(1);
    let logits = shape.vocab_size * 4;
    // Activations of one batch: a handful of f32 tensors as wide as the embedding (the
    // feed-forward ones about 4x), plus attention scores over the context.
    let activations = batch_tokens * (shape.embedding_length * 4 * 12 + context_tokens * 4);
    LlmMemory {
        weights_bytes: shape.weights_bytes,
        kv_cache_bytes,
        compute_bytes: logits + activations,
        runtime_bytes: LLM_RUNTIME_OVERHEAD_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_135m() -> GgufShape {
        GgufShape {
            architecture: "llama".into(),
            weights_bytes: 98_362_432,
            layers: 30,
            embedding_length: 576,
            heads: 9,
            kv_heads: 3,
            vocab_size: 49_152,
            trained_context: 8192,
        }
    }

    #[test]
    fn kv_cache_grows_with_context_slots_and_kv_heads() {
        let shape = smollm2_135m();
        let one = llm_memory(&shape, 2048, 1, 512);
        // 2 (K,V) x 2 bytes x 30 layers x 2048 positions x (64 x 3) = 47,185,920
        assert_eq!(one.kv_cache_bytes, 47_185_920);
        let two = llm_memory(&shape, 2048, 2, 512);
        assert_eq!(two.kv_cache_bytes, 2 * one.kv_cache_bytes);
        let long = llm_memory(&shape, 8192, 1, 512);
        assert_eq!(long.kv_cache_bytes, 4 * one.kv_cache_bytes);
        assert_eq!(one.weights_bytes, 98_362_432);
        assert!(one.total_bytes() > one.weights_bytes + one.kv_cache_bytes);
    }

    /// `llm-bench` (BENCHMARKS.md, 2026-12-06): SmolLM2-135M Q4_1, one slot, 2,048 tokens,
    /// batch 512 grew the serving process's RSS by 165 MiB.
    const MEASURED_RSS_GROWTH_MIB: u64 = 165;

    #[test]
    fn the_estimate_covers_the_measured_rss_without_wasting_a_fifth() {
        let need = llm_memory(&smollm2_135m(), 2048, 1, 512).total_mib();
        assert!(need >= MEASURED_RSS_GROWTH_MIB, "{need} MiB underestimates");
        assert!(
            need * 100 <= MEASURED_RSS_GROWTH_MIB * 120,
            "{need} MiB is over 20 % above the measured {MEASURED_RSS_GROWTH_MIB} MiB"
        );
    }

    #[test]
    fn token_rates_bucket_and_merge() {
        let mut a = TokenRateHistogram::default();
        a.observe(120.0);
        a.observe(f64::NAN);
        let mut b = TokenRateHistogram::default();
        b.observe(100.0);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.counts[TOKEN_RATE_BUCKETS.len()], 1, "NaN lands in +Inf");
        assert!((a.sum - 220.0).abs() < 1e-9);
        assert!(a.has_shared_layout());
        let p50 = a.quantile(0.5).expect("non-empty");
        assert!((100.0..=150.0).contains(&p50), "p50 = {p50}");
    }

    #[test]
    fn a_window_with_a_foreign_layout_is_refused_by_name() {
        let mut w = LlmWindow::default();
        assert_eq!(w.check(), Ok(()));
        w.decode_tokens_per_second.counts.pop();
        assert_eq!(
            w.check(),
            Err("llm.decodeTokensPerSecond does not have the token-rate bucket layout".into())
        );
        let mut w = LlmWindow::default();
        w.queue_wait.counts.push(1);
        assert_eq!(
            w.check(),
            Err("llm.queueWait does not have the shared bucket layout".into())
        );
    }
}
