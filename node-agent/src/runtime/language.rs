//! What a language model offers the API, whatever runs it: submit a prompt, get its text as it
//! is generated and how it ended, or a refusal that says why. The `llm` module implements it on
//! llama.cpp; `serve::openai` speaks it as OpenAI's and KServe's HTTP APIs.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use edgefleet_protocol::LatencyHistogram;
use edgefleet_protocol::llm::LlmWindow;

pub trait LanguageModel: Send + Sync {
    /// Admits a request: checks it fits the context, then takes a slot or a queue place.
    /// `arrived` is when the request reached the device (time to first token counts from it).
    fn submit(
        &self,
        prompt: &Prompt,
        params: GenerateParams,
        arrived: Instant,
    ) -> Result<Generation, LlmError>;
    fn info(&self) -> LanguageModelInfo;
}

/// What `GET /v2/models/{name}` tells about a language model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanguageModelInfo {
    pub architecture: String,
    pub context_tokens: u32,
    pub slots: u32,
    pub queue: u32,
    /// Slots and queue places free right now.
    pub free: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
    /// `prompt` with the start of its answer already given (by a cloud endpoint that stopped
    /// mid-answer): generation continues the answer where it ended.
    Continue {
        prompt: Box<Prompt>,
        answered: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateParams {
    /// At most this many tokens; `None` generates until the model stops or the context fills.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// 0 is greedy (deterministic).
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u32>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: None,
            stop: Vec::new(),
            temperature: 1.0,
            top_p: 1.0,
            seed: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its answer or a stop sequence matched.
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub queue_wait: Duration,
    /// From the request's arrival; `None` when no token was generated.
    pub time_to_first_token: Option<Duration>,
    pub prompt_seconds: f64,
    /// From the first generated token to the last.
    pub decode_seconds: f64,
    pub inter_token: LatencyHistogram,
}

impl Finished {
    /// This request's observations, for the telemetry window.
    pub fn window(&self) -> LlmWindow {
        let mut w = LlmWindow {
            inter_token_latency: self.inter_token.clone(),
            prompt_tokens: u64::from(self.prompt_tokens),
            completion_tokens: u64::from(self.completion_tokens),
            ..LlmWindow::default()
        };
        w.queue_wait.observe(self.queue_wait.as_secs_f64());
        if let Some(ttft) = self.time_to_first_token {
            w.time_to_first_token.observe(ttft.as_secs_f64());
        }
        if self.prompt_seconds > 0.0 {
            w.prompt_tokens_per_second
                .observe(f64::from(self.prompt_tokens) / self.prompt_seconds);
        }
        if self.completion_tokens >= 2 && self.decode_seconds > 0.0 {
            w.decode_tokens_per_second
                .observe(f64::from(self.completion_tokens - 1) / self.decode_seconds);
        }
        w
    }
}

pub enum Event {
    Text(String),
    Done(Finished),
    Failed(String),
}

/// A request on its way: the prompt's size and the generated text as it comes.
pub struct Generation {
    pub prompt_tokens: u32,
    pub events: mpsc::Receiver<Event>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LlmError {
    #[error(
        "this model's context is {context} tokens; the prompt has {prompt} and max_tokens asks \
         for {max_tokens} more"
    )]
    ContextOverflow {
        context: u32,
        prompt: u32,
        max_tokens: u32,
    },
    #[error("all {slots} generation slot(s) and the queue of {queue} are busy; retry later")]
    Busy { slots: u32, queue: u32 },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{0}")]
    Prompt(String),
}
