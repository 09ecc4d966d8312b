//! One GGUF file measured with llama.cpp: load time, resident memory, time to first token,
//! decode speed (greedy, fixed prompt) and the next-token distribution at every position of a
//! small fixed prompt set, from which drift against the source is computed.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use edgefleet_gguf_quantize::backend;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

/// The drift prompts: short, varied (facts, code, lists, dialogue), plain completions.
pub const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return",
    "Water boils at a temperature of",
    "Monday, Tuesday, Wednesday,",
    "Q: What is the largest planet in the solar system?\nA:",
    "The quick brown fox jumps over the",
    "To make a cup of tea, first",
    "1, 2, 3, 5, 8, 13,",
];

/// The prompt time to first token and decode speed are measured with.
pub const SPEED_PROMPT: &str = "Write a short story about a robot who learns to paint.";

/// Context size of the measurement: every prompt fits in one batch.
const CONTEXT: u32 = 512;

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub threads: u32,
    /// Tokens generated per speed run.
    pub decode_tokens: u32,
    /// Speed runs; the medians are reported.
    pub runs: usize,
}

/// What one file costs on this machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Performance {
    /// Loading the weights and creating a context.
    pub load_ms: f64,
    /// VmRSS growth after loading the weights and creating the context (MiB).
    pub rss_load_mib: f64,
    /// VmRSS growth after all measurements (every weight page touched), MiB.
    pub rss_run_mib: f64,
    /// Median time from the prompt to the first generated token (prompt evaluation).
    pub ttft_ms: f64,
    /// Median greedy decode speed after the first token.
    pub decode_tokens_per_s: f64,
    pub prompt_tokens: usize,
}

/// Log-probabilities of the next token at every position of every drift prompt.
pub struct NextTokens {
    positions: Vec<Vec<f32>>,
}

impl NextTokens {
    pub fn positions(&self) -> usize {
        self.positions.len()
    }
}

/// A variant's next-token distributions against the source's, position by position.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LlmDrift {
    /// Share of positions where both pick the same most likely next token.
    pub top1_agreement: f64,
    /// Mean KL(source ‖ variant) of the next-token distributions, in nats.
    pub mean_kl: f64,
    pub positions: usize,
}

/// VmRSS of this process in KiB.
fn vm_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mib_since(before: Option<u64>) -> f64 {
    match (before, vm_rss_kib()) {
        (Some(b), Some(a)) => a.saturating_sub(b) as f64 / 1024.0,
        _ => f64::NAN,
    }
}

fn argmax(logits: &[f32]) -> i32 {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i, l);
        }
    }
    best.0 as i32
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_sum = sum.ln() as f32;
    logits.iter().map(|&l| l - max - log_sum).collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Evaluates `tokens` from position 0 on a cleared context; logits for every position when
/// `all_logits`, else for the last only. Returns the batch (its last index has logits).
fn evaluate(
    ctx: &mut LlamaContext,
    tokens: &[LlamaToken],
    all_logits: bool,
) -> anyhow::Result<LlamaBatch<'static>> {
    ensure!(!tokens.is_empty(), "empty prompt");
    ensure!(
        tokens.len() < CONTEXT as usize,
        "prompt longer than the context"
    );
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(CONTEXT as usize, 1);
    for (i, token) in tokens.iter().enumerate() {
        batch.add(*token, i as i32, &[0], all_logits || i + 1 == tokens.len())?;
    }
    ctx.decode(&mut batch).context("evaluating the prompt")?;
    Ok(batch)
}

/// One speed run: (time to first token in ms, decode tokens/s after it).
fn speed_run(
    ctx: &mut LlamaContext,
    tokens: &[LlamaToken],
    decode_tokens: u32,
) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let mut batch = evaluate(ctx, tokens, false)?;
    let mut token = argmax(ctx.get_logits_ith(batch.n_tokens() - 1));
    let first = Instant::now();
    let ttft_ms = first.duration_since(started).as_secs_f64() * 1e3;
    let mut decoded = 0u32;
    let mut position = tokens.len() as i32;
    // Greedy, ignoring end-of-generation so every run decodes the same number of tokens.
    while decoded < decode_tokens && (position as u32) + 1 < CONTEXT {
        batch.clear();
        batch.add(LlamaToken::new(token), position, &[0], true)?;
        ctx.decode(&mut batch).context("decoding")?;
        token = argmax(ctx.get_logits_ith(batch.n_tokens() - 1));
        position += 1;
        decoded += 1;
    }
    let seconds = first.elapsed().as_secs_f64();
    let tokens_per_s = if decoded == 0 || seconds <= 0.0 {
        f64::NAN
    } else {
        f64::from(decoded) / seconds
    };
    Ok((ttft_ms, tokens_per_s))
}

/// Loads `path` with llama.cpp and measures it; the model is unloaded on return.
pub fn measure(path: &Path, settings: Settings) -> anyhow::Result<(Performance, NextTokens)> {
    let backend = backend()?;
    let threads = i32::try_from(settings.threads.max(1)).unwrap_or(i32::MAX);
    let before = vm_rss_kib();
    let started = Instant::now();
    let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
        .map_err(|e| anyhow::anyhow!("llama.cpp cannot load {}: {e}", path.display()))?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(CONTEXT))
        .with_n_batch(CONTEXT)
        .with_n_ubatch(CONTEXT)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model
        .new_context(backend, params)
        .map_err(|e| anyhow::anyhow!("creating a llama.cpp context: {e}"))?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let rss_load_mib = mib_since(before);

    let vocab = model.vocab();
    let mut positions = Vec::new();
    for prompt in PROMPTS {
        let tokens = vocab.tokenize(prompt.as_bytes(), true, false);
        evaluate(&mut ctx, &tokens, true).with_context(|| format!("prompt {prompt:?}"))?;
        for i in 0..tokens.len() {
            positions.push(log_softmax(ctx.get_logits_ith(i as i32)));
        }
    }

    let tokens = vocab.tokenize(SPEED_PROMPT.as_bytes(), true, false);
    let (mut ttft, mut speed) = (Vec::new(), Vec::new());
    for _ in 0..settings.runs.max(1) {
        let (t, s) = speed_run(&mut ctx, &tokens, settings.decode_tokens)?;
        ttft.push(t);
        speed.push(s);
    }
    let performance = Performance {
        load_ms,
        rss_load_mib,
        rss_run_mib: mib_since(before),
        ttft_ms: median(&mut ttft),
        decode_tokens_per_s: median(&mut speed),
        prompt_tokens: tokens.len(),
    };
    Ok((performance, NextTokens { positions }))
}

/// Top-1 agreement and mean KL divergence of `variant`'s next-token distributions against
/// `reference`'s (same prompts, same tokenizer).
pub fn drift(reference: &NextTokens, variant: &NextTokens) -> anyhow::Result<LlmDrift> {
    if reference.positions.len() != variant.positions.len() {
        bail!(
            "the variant tokenizes the drift prompts into {} positions, the source into {}",
            variant.positions.len(),
            reference.positions.len()
        );
    }
    ensure!(!reference.positions.is_empty(), "no positions to compare");
    let (mut agree, mut kl_sum) = (0usize, 0f64);
    for (p, q) in reference.positions.iter().zip(&variant.positions) {
        ensure!(p.len() == q.len(), "the vocabularies differ");
        if argmax(p) == argmax(q) {
            agree += 1;
        }
        let kl: f64 = p
            .iter()
            .zip(q)
            .map(|(&lp, &lq)| f64::from(lp).exp() * f64::from(lp - lq))
            .sum();
        kl_sum += kl.max(0.0);
    }
    let n = reference.positions.len();
    Ok(LlmDrift {
        top1_agreement: agree as f64 / n as f64,
        mean_kl: kl_sum / n as f64,
        positions: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_of_identical_and_different_distributions() {
        let a = NextTokens {
            positions: vec![log_softmax(&[1.0, 2.0, 3.0]), log_softmax(&[0.0, 0.0, 5.0])],
        };
        let same = drift(&a, &a).expect("drift");
        assert_eq!(same.top1_agreement, 1.0);
        assert!(same.mean_kl.abs() < 1e-9);
        let b = NextTokens {
            positions: vec![log_softmax(&[3.0, 2.0, 1.0]), log_softmax(&[0.0, 0.0, 5.0])],
        };
        let d = drift(&a, &b).expect("drift");
        assert_eq!(d.top1_agreement, 0.5);
        assert!(d.mean_kl > 0.1, "{d:?}");
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert!(vm_rss_kib().is_some_and(|k| k > 0));
    }
}
