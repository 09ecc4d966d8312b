//! `[llm]`: how the agent runs language models (GGUF on llama.cpp).

use serde::Deserialize;

use super::{Args, ConfigError, err};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// Context length per sequence slot, prompt and completion together.
    pub context_tokens: u32,
    /// Sequences generated at once per model; each holds a KV cache of `context_tokens`.
    pub slots: u32,
    /// Requests that may wait for a slot; beyond that the API answers 429.
    pub queue: u32,
    /// llama.cpp threads per sequence; 0 means one per core.
    pub threads: u32,
    /// Prompt tokens evaluated per step (also the size of the compute buffer).
    pub batch_tokens: u32,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            context_tokens: 2048,
            slots: 1,
            queue: 4,
            threads: 0,
            batch_tokens: 512,
        }
    }
}

impl LlmConfig {
    pub(super) fn resolve(mut self, args: &Args) -> Result<LlmConfig, ConfigError> {
        let over = |slot: &mut u32, value: Option<u32>| {
            if let Some(v) = value {
                *slot = v;
            }
        };
        over(&mut self.context_tokens, args.llm_context_tokens);
        over(&mut self.slots, args.llm_slots);
        over(&mut self.queue, args.llm_queue);
        over(&mut self.threads, args.llm_threads);
        over(&mut self.batch_tokens, args.llm_batch_tokens);
        if !(64..=131_072).contains(&self.context_tokens) {
            return Err(err("llm.context_tokens", "must be between 64 and 131072"));
        }
        if !(1..=16).contains(&self.slots) {
            return Err(err("llm.slots", "must be between 1 and 16"));
        }
        if self.queue > 1024 {
            return Err(err("llm.queue", "must be at most 1024"));
        }
        if self.threads > 256 {
            return Err(err("llm.threads", "must be at most 256 (0: one per core)"));
        }
        if !(16..=self.context_tokens).contains(&self.batch_tokens) {
            return Err(err(
                "llm.batch_tokens",
                "must be at least 16 and at most llm.context_tokens",
            ));
        }
        if self.threads == 0 {
            self.threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        }
        Ok(self)
    }
}
