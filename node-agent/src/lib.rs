//! The EdgeFleet node agent.
