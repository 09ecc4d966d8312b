//! The EdgeFleet node agent.
//!
//! Pure state machines ([`assignments`], [`pull`]'s decisions, [`spool`], [`backoff`],
//! [`telemetry`]) are kept apart from the thin async adapters that do I/O ([`mqtt`], the
//! download in [`pull`], [`api`], [`supervisor`], [`agent`]).
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod api;
pub mod assignments;
pub mod backoff;
pub mod capabilities;
pub mod config;
pub mod metrics;
pub mod mqtt;
pub mod offload;
pub mod pull;
pub mod registry;
pub mod repository;
pub mod runtime;
pub mod signing;
pub mod spool;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tensor;
#[cfg(test)]
mod testutil;
