//! The inference backends this agent can use: tract always, ONNX Runtime when compiled in and
//! its library loads, llama.cpp when compiled in and this CPU has the level it was built for.

use std::sync::Arc;

use crate::config::Config;
#[cfg(feature = "onnxruntime")]
use crate::runtime::ort;
use crate::runtime::{Backend, tract};
#[cfg(feature = "llm")]
use crate::{capabilities, llm};

/// The backends compiled in and usable on this machine, tract first.
pub fn available_backends(config: &Config) -> Vec<Arc<dyn Backend>> {
    #[allow(unused_mut)]
    let mut backends: Vec<Arc<dyn Backend>> = vec![Arc::new(tract::TractBackend)];
    tract::set_intra_op_threads(config.intra_op_threads);
    #[cfg(feature = "onnxruntime")]
    if let Some(b) =
        ort::OrtBackend::try_new(config.onnxruntime_lib.as_deref(), config.intra_op_threads)
    {
        backends.push(Arc::new(b));
    }
    #[cfg(feature = "llm")]
    {
        let caps = &config.capabilities;
        let announced = caps.memory_available_mib.or(caps.memory_mib);
        let budget: llm::MemoryBudget = Arc::new(move || {
            announced.unwrap_or_else(|| {
                let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
                capabilities::parse_meminfo(&meminfo).1 / 1024
            })
        });
        if let Some(b) = llm::LlamaCppBackend::try_new(config.llm.clone(), budget) {
            backends.push(Arc::new(b));
        }
    }
    #[cfg(not(feature = "llm"))]
    let _ = config;
    backends
}
