//! The EdgeFleet controller: adapters around the pure decisions in `edgefleet-core`.

pub mod store;
