//! Language models: GGUF files on llama.cpp (through `llama-cpp-2`), served by the OpenAI
//! compatible routes in `serve::openai`.
//!
//! - [`gguf`]: the header of a file, read before loading, for the memory check;
//! - [`engine`]: a loaded model with its generation slots, admission and queue;
//! - [`generate`]: one sequence on one slot, token by token;
//! - [`text`]: token bytes to streamable text (UTF-8, stop sequences), pure;

mod capture;
pub mod engine;
mod generate;
pub mod gguf;
pub mod text;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use llama_cpp_2::llama_backend::LlamaBackend;

use edgefleet_protocol::Runtime;
use edgefleet_protocol::llm::llm_memory;
use edgefleet_protocol::wire::Assignment;

use crate::config::LlmConfig;
use crate::cpu_level as cpu;
use crate::runtime::{Backend, Model, ShapeHints};

pub use engine::LlmEngine;

/// llama.cpp's process-wide state: initialised once, on the first model load.
pub fn llama() -> Result<&'static LlamaBackend, String> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs every tensor while loading; route it to tracing (target
            // `llama-cpp-2`), where the agent's default filter keeps warnings only.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| format!("initialising llama.cpp: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Memory the device can give a new model, in MiB: the announced figure when the operator set
/// one, otherwise what the kernel reports available right now.
pub type MemoryBudget = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct LlamaCppBackend {
    pub settings: LlmConfig,
    pub memory_budget_mib: MemoryBudget,
}

impl LlamaCppBackend {
    /// `None` when this CPU lacks the instructions llama.cpp was compiled for (it would crash
    /// on the first matrix product); the agent then does not announce `llamacpp`.
    pub fn try_new(settings: LlmConfig, memory_budget_mib: MemoryBudget) -> Option<Self> {
        if !cpu::supports(cpu::compiled_level()) {
            tracing::warn!(
                compiled_for = cpu::compiled_level(),
                this_cpu = ?cpu::levels(),
                "llama.cpp was built for a CPU level this machine lacks; GGUF models disabled"
            );
            return None;
        }
        Some(Self {
            settings,
            memory_budget_mib,
        })
    }
}

impl Backend for LlamaCppBackend {
    fn runtime(&self) -> Runtime {
        Runtime::Llamacpp
    }

    fn load(&self, path: &Path, _hints: &ShapeHints) -> anyhow::Result<Arc<dyn Model>> {
        self.load_with(path, &self.settings)
    }

    /// The deployment's context length and slots, when it declares them, replace the agent's.
    fn load_assigned(
        &self,
        path: &Path,
        assignment: &Assignment,
    ) -> anyhow::Result<Arc<dyn Model>> {
        let mut settings = self.settings.clone();
        if let Some(run) = assignment.llm {
            settings.context_tokens = run.context_tokens;
            settings.slots = run.slots;
            settings.batch_tokens = settings.batch_tokens.min(run.context_tokens);
        }
        self.load_with(path, &settings)
    }
}

impl LlamaCppBackend {
    fn load_with(&self, path: &Path, s: &LlmConfig) -> anyhow::Result<Arc<dyn Model>> {
        let shape = gguf::read_shape(path).map_err(anyhow::Error::msg)?;
        let need = llm_memory(
            &shape,
            u64::from(s.context_tokens),
            u64::from(s.slots),
            u64::from(s.batch_tokens),
        );
        let budget = (self.memory_budget_mib)();
        if need.total_mib() > budget {
            anyhow::bail!(
                "needs {} MiB ({} MiB weights + {} MiB KV cache for {} slot(s) x {} tokens + \
                 {} MiB compute and runtime) but the device has {budget} MiB available",
                need.total_mib(),
                need.weights_bytes >> 20,
                need.kv_cache_bytes >> 20,
                s.slots,
                s.context_tokens,
                (need.compute_bytes + need.runtime_bytes) >> 20,
            );
        }
        let engine = LlmEngine::load(llama().map_err(anyhow::Error::msg)?, path, shape, s)?;
        Ok(Arc::new(engine))
    }
}
