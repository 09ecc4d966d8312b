//! Getting the desired models onto the device: the pure decision of what to do with a desired
//! document ([`assignments`]), the resumable, digest-verified download ([`pull`]) from a site cache or the origin ([`fetch`]), signature
//! checks ([`signing`]), whether a model fits the announced memory ([`memory`]), the content-addressed artifact store with atomic swaps ([`store`]),
//! the loop that applies it all ([`supervisor`]) and what it reports ([`repository`]).

pub mod assignments;
pub mod context;
pub mod fetch;
mod load;
pub mod memory;
pub mod pull;
pub mod repository;
pub mod signing;
pub mod store;
pub mod supervisor;
