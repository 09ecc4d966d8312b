//! The EdgeFleet node agent, read in the order a model travels:
//!
//! - [`config`]: flags, file and environment, resolved into one validated [`config::Config`];
//! - [`link`]: the MQTT session with the controller, the telemetry spool and windows;
//! - [`install`]: desired document → verified download → atomic swap, previous kept;
//! - [`runtime`]: the inference engines (tract, optionally ONNX Runtime) behind one trait;
//! - [`llm`]: language models (GGUF on llama.cpp) behind `runtime::language`: slots,
//!   queue, token streaming; [`backends`] lists what this machine can run;
//! - [`serve`]: the local KServe v2 API apps call, with [`offload`] to a cloud model;
//! - [`agent`]: the wiring that starts them all.
//!
//! Pure state machines and decisions (`install::assignments`, `install::pull`'s plan,
//! `link::spool`, `link::window`, `offload`'s triggers) are kept apart from the thin async
//! adapters that do I/O.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod atomic_file;
pub mod backends;
pub mod capabilities;
pub mod config;
pub mod cpu_level;
pub mod install;
pub mod link;
#[cfg(feature = "llm")]
pub mod llm;
pub mod metrics;
pub mod offload;
pub mod registry;
pub mod runtime;
pub mod serve;
pub mod site_cache;
pub mod tensor;
#[cfg(test)]
mod testutil;
