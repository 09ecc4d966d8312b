//! One sequence on one slot: evaluate the prompt in batches, then sample, detokenize and send
//! token by token until the model stops, a stop sequence matches, `max_tokens` or the context
//! runs out, or the client goes away (its receiver is dropped: the slot is freed at once).

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use edgefleet_protocol::LatencyHistogram;

use super::text::{StopMatcher, Utf8Stream};
use crate::runtime::language::{Event, FinishReason, Finished, GenerateParams};

/// A request admitted to a slot: its prompt tokens, how to generate, where the text goes.
pub(super) struct Job {
    pub tokens: Vec<LlamaToken>,
    pub params: GenerateParams,
    pub events: mpsc::Sender<Event>,
    pub arrived: Instant,
    pub admitted: Instant,
    pub _permit: OwnedSemaphorePermit,
}

pub(super) fn run(model: &LlamaModel, ctx: &mut LlamaContext<'_>, job: Job) {
    let events = job.events.clone();
    match generate(model, ctx, job) {
        Ok(Some(finished)) => {
            let _ = events.blocking_send(Event::Done(finished));
        }
        // The client left; nobody to tell.
        Ok(None) => tracing::debug!("client went away: sequence cancelled, slot free"),
        Err(e) => {
            tracing::warn!(error = %e, "generation failed");
            let _ = events.blocking_send(Event::Failed(e));
        }
    }
}

fn sampler(params: &GenerateParams) -> LlamaSampler {
    if params.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    let seed = params.seed.unwrap_or_else(|| fastrand::u32(..));
    LlamaSampler::chain_simple([
        LlamaSampler::top_p(params.top_p.clamp(0.0, 1.0), 1),
        LlamaSampler::temp(params.temperature),
        LlamaSampler::dist(seed),
    ])
}

/// `Ok(None)` when the client disconnected.
fn generate(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    job: Job,
) -> Result<Option<Finished>, String> {
    let started = Instant::now();
    let queue_wait = started.duration_since(job.admitted);
    ctx.clear_kv_cache();
    let n_ctx = ctx.n_ctx() as usize;
    let n_batch = (ctx.n_batch() as usize).max(1);
    let prompt_len = job.tokens.len();
    let mut batch = LlamaBatch::new(n_batch, 1);
    for (chunk_index, chunk) in job.tokens.chunks(n_batch).enumerate() {
        batch.clear();
        for (offset, token) in chunk.iter().enumerate() {
            let pos = chunk_index * n_batch + offset;
            batch
                .add(*token, pos as i32, &[0], pos + 1 == prompt_len)
                .map_err(|e| format!("building the prompt batch: {e}"))?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| format!("evaluating the prompt: {e}"))?;
        if job.events.is_closed() {
            return Ok(None);
        }
    }
    let prompt_seconds = started.elapsed().as_secs_f64();

    let vocab = model.vocab();
    let mut sampler = sampler(&job.params);
    let mut utf8 = Utf8Stream::default();
    let mut stops = StopMatcher::new(job.params.stop.clone());
    let mut inter_token = LatencyHistogram::default();
    let (mut first_at, mut last_at) = (None, None::<Instant>);
    let mut generated: u32 = 0;
    let mut position = prompt_len;
    let max_tokens = job.params.max_tokens.unwrap_or(u32::MAX);
    let mut matched_stop = false;
    let reason = loop {
        let token = sampler.sample(ctx, batch.n_tokens() - 1);
        let now = Instant::now();
        match last_at {
            None => first_at = Some(now),
            Some(last) => inter_token.observe(now.duration_since(last).as_secs_f64()),
        }
        last_at = Some(now);
        if vocab.is_eog(token) {
            break FinishReason::Stop;
        }
        generated += 1;
        let text = utf8.push(&vocab.token_to_piece(token, false, None));
        let matched = stops.push(&text);
        if !matched.emit.is_empty() && job.events.blocking_send(Event::Text(matched.emit)).is_err()
        {
            return Ok(None);
        }
        if matched.stopped {
            matched_stop = true;
            break FinishReason::Stop;
        }
        if generated >= max_tokens || position + 1 >= n_ctx {
            break FinishReason::Length;
        }
        batch.clear();
        batch
            .add(token, position as i32, &[0], true)
            .map_err(|e| format!("building the decode batch: {e}"))?;
        position += 1;
        ctx.decode(&mut batch)
            .map_err(|e| format!("decoding token {generated}: {e}"))?;
        if job.events.is_closed() {
            return Ok(None);
        }
    };
    // Text held back for a possible stop sequence (or half a character) is output unless a
    // stop sequence matched: then everything after it is dropped.
    if !matched_stop {
        let rest = stops.finish() + &utf8.finish();
        if !rest.is_empty() && job.events.blocking_send(Event::Text(rest)).is_err() {
            return Ok(None);
        }
    }
    let decode_seconds = match (first_at, last_at) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    Ok(Some(Finished {
        reason,
        prompt_tokens: prompt_len as u32,
        completion_tokens: generated,
        queue_wait,
        time_to_first_token: first_at.map(|t| t.duration_since(job.arrived)),
        prompt_seconds,
        decode_seconds,
        inter_token,
    }))
}
