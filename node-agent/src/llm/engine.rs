//! A loaded language model: the weights (shared), one generation slot per sequence that may
//! run at once (a thread owning a llama.cpp context and its KV cache), and admission: a request
//! gets a slot, waits in a bounded queue, or is refused at once.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{Semaphore, mpsc};

use edgefleet_protocol::SelfTest;
use edgefleet_protocol::llm::GgufShape;

use super::generate::{self, Job};
use crate::config::LlmConfig;
use crate::runtime::language::{
    Event, Finished, GenerateParams, Generation, LanguageModel, LanguageModelInfo, LlmError, Prompt,
};
use crate::runtime::{IoSpec, Model};
use crate::tensor::Tensor;

pub struct LlmEngine {
    model: Arc<LlamaModel>,
    template: Option<LlamaChatTemplate>,
    pub shape: GgufShape,
    context_tokens: u32,
    slots: u32,
    queue: u32,
    admission: Arc<Semaphore>,
    /// Dropping the engine closes this; the slot threads then exit and free their contexts.
    jobs: std_mpsc::SyncSender<Job>,
}

impl LlmEngine {
    /// Loads the weights and starts one slot thread per sequence (each allocating its KV
    /// cache now, so that an engine that loads has the memory it will use).
    pub fn load(
        backend: &'static LlamaBackend,
        path: &Path,
        shape: GgufShape,
        settings: &LlmConfig,
    ) -> anyhow::Result<LlmEngine> {
        let (loaded, log) = super::capture::capturing(|| {
            LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
        });
        let model = loaded.map_err(|_| {
            // llama.cpp's complaints say why (unknown architecture, truncated tensors); its
            // last line is a generic "failed to load model", so give the last few.
            let why = if log.is_empty() {
                "no reason logged".to_string()
            } else {
                log[log.len().saturating_sub(3)..].join("; ")
            };
            anyhow::anyhow!(
                "llama.cpp cannot load this GGUF (architecture {:?}): {why}",
                shape.architecture
            )
        })?;
        let model = Arc::new(model);
        let template = model.chat_template(None).ok();
        let context_tokens = settings.context_tokens;
        let capacity = (settings.slots + settings.queue) as usize;
        let (jobs, receiver) = std_mpsc::sync_channel::<Job>(capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        for slot in 0..settings.slots {
            let (ready_tx, ready_rx) = std_mpsc::channel();
            let (model, receiver) = (model.clone(), receiver.clone());
            let params = context_params(settings);
            std::thread::Builder::new()
                .name(format!("llm-slot-{slot}"))
                .spawn(move || slot_thread(backend, &model, params, &receiver, ready_tx))?;
            ready_rx
                .recv()
                .map_err(|_| anyhow::anyhow!("generation slot {slot} exited while starting"))?
                .map_err(|e| anyhow::anyhow!("generation slot {slot}: {e}"))?;
        }
        Ok(LlmEngine {
            model,
            template,
            shape,
            context_tokens,
            slots: settings.slots,
            queue: settings.queue,
            admission: Arc::new(Semaphore::new(capacity)),
            jobs,
        })
    }

    /// Tokenizes `prompt` (chat messages through the model's own template).
    fn tokenize(&self, prompt: &Prompt) -> Result<Vec<LlamaToken>, LlmError> {
        let text = self.render(prompt)?;
        Ok(self.model.vocab().tokenize(text.as_bytes(), true, true))
    }

    /// The prompt as the model reads it.
    fn render(&self, prompt: &Prompt) -> Result<String, LlmError> {
        Ok(match prompt {
            Prompt::Text(text) => text.clone(),
            // The template ends with the assistant's turn opened, so the given start of the
            // answer follows it directly.
            Prompt::Continue { prompt, answered } => self.render(prompt)? + answered,
            Prompt::Chat(messages) => {
                let template = self.template.as_ref().ok_or_else(|| {
                    LlmError::Prompt("this model has no chat template; use /v1/completions".into())
                })?;
                let messages = messages
                    .iter()
                    .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| LlmError::Prompt(format!("invalid message: {e}")))?;
                self.model
                    .apply_chat_template(template, &messages, true)
                    .map_err(|e| LlmError::Prompt(format!("applying the chat template: {e}")))?
            }
        })
    }

    fn admit(
        &self,
        tokens: Vec<LlamaToken>,
        params: GenerateParams,
        arrived: Instant,
    ) -> Result<Generation, LlmError> {
        let prompt = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if prompt == 0 {
            return Err(LlmError::EmptyPrompt);
        }
        let wanted = params.max_tokens.unwrap_or(1).max(1);
        if u64::from(prompt) + u64::from(wanted) > u64::from(self.context_tokens) {
            return Err(LlmError::ContextOverflow {
                context: self.context_tokens,
                prompt,
                max_tokens: wanted,
            });
        }
        let busy = LlmError::Busy {
            slots: self.slots,
            queue: self.queue,
        };
        let permit = self
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy)?;
        let (events, receiver) = mpsc::channel(64);
        let job = Job {
            tokens,
            params,
            events,
            arrived,
            admitted: Instant::now(),
            _permit: permit,
        };
        // The channel holds as many jobs as there are permits, so this only fails if every
        // slot thread has died.
        self.jobs.try_send(job).map_err(|_| {
            LlmError::Prompt("the model's generation slots have stopped; reload it".into())
        })?;
        Ok(Generation {
            prompt_tokens: prompt,
            events: receiver,
        })
    }

    /// Runs a request to its end on the calling (blocking) thread: the text and how it ended.
    pub fn complete_blocking(
        &self,
        prompt: &Prompt,
        params: GenerateParams,
    ) -> Result<(String, Finished), String> {
        let mut generation = self
            .submit(prompt, params, Instant::now())
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        while let Some(event) = generation.events.blocking_recv() {
            match event {
                Event::Text(piece) => text.push_str(&piece),
                Event::Done(finished) => return Ok((text, finished)),
                Event::Failed(e) => return Err(e),
            }
        }
        Err("the generation slot stopped without an answer".into())
    }
}

fn context_params(s: &LlmConfig) -> LlamaContextParams {
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(s.context_tokens))
        .with_n_batch(s.batch_tokens)
        .with_n_ubatch(s.batch_tokens)
        .with_n_threads(s.threads as i32)
        .with_n_threads_batch(s.threads as i32)
}

/// One generation slot: its own context (KV cache), one sequence at a time, until the engine
/// is dropped.
fn slot_thread(
    backend: &LlamaBackend,
    model: &LlamaModel,
    params: LlamaContextParams,
    jobs: &Mutex<std_mpsc::Receiver<Job>>,
    ready: std_mpsc::Sender<Result<(), String>>,
) {
    // llama.cpp's context constructor writes to the model; never two at once.
    static CREATING: Mutex<()> = Mutex::new(());
    let created = {
        let _one = CREATING.lock().unwrap_or_else(|p| p.into_inner());
        model.new_context(backend, params)
    };
    let mut ctx = match created {
        Ok(ctx) => {
            let _ = ready.send(Ok(()));
            ctx
        }
        Err(e) => {
            let _ = ready.send(Err(format!("creating the llama.cpp context: {e}")));
            return;
        }
    };
    loop {
        let job = {
            let receiver = jobs.lock().unwrap_or_else(|p| p.into_inner());
            receiver.recv()
        };
        let Ok(job) = job else { return };
        generate::run(model, &mut ctx, job);
    }
}

impl LanguageModel for LlmEngine {
    fn submit(
        &self,
        prompt: &Prompt,
        params: GenerateParams,
        arrived: Instant,
    ) -> Result<Generation, LlmError> {
        let tokens = self.tokenize(prompt)?;
        self.admit(tokens, params, arrived)
    }

    fn info(&self) -> LanguageModelInfo {
        LanguageModelInfo {
            architecture: self.shape.architecture.clone(),
            context_tokens: self.context_tokens,
            slots: self.slots,
            queue: self.queue,
            free: self.admission.available_permits(),
        }
    }
}

/// Language models answer `/v1` routes, not tensors; the tensor side of [`Model`] is empty.
impl Model for LlmEngine {
    fn inputs(&self) -> &[IoSpec] {
        &[]
    }
    fn outputs(&self) -> &[IoSpec] {
        &[]
    }
    fn run(&self, _: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
        anyhow::bail!(
            "this is a language model: use /v1/chat/completions, /v1/completions or \
             /v2/models/{{name}}/generate"
        )
    }
    fn platform(&self) -> &'static str {
        "llama.cpp"
    }
    fn language_model(&self) -> Option<&dyn LanguageModel> {
        Some(self)
    }
    /// A short greedy generation that must produce tokens.
    fn prepare(&self, _test: Option<&SelfTest>) -> Result<(), String> {
        let params = GenerateParams {
            max_tokens: Some(4),
            temperature: 0.0,
            ..GenerateParams::default()
        };
        let (_, finished) = self.complete_blocking(&Prompt::Text("Hello".into()), params)?;
        if finished.completion_tokens == 0 {
            return Err("a 4-token greedy generation produced no tokens".into());
        }
        Ok(())
    }
}
