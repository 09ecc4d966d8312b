//! The agent's link to the controller: the MQTT session ([`mqtt`]), the on-disk spool that
//! keeps telemetry while the broker is away ([`spool`]), and the latency windows that become
//! telemetry ([`window`]). Only aggregates leave the device.

pub mod mqtt;
pub mod spool;
pub mod window;
