//! One request's telemetry: counted once, in the agent's window and its local metrics, when it
//! finishes, fails or is refused, or when the client leaves first.

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;

use edgefleet_protocol::llm::LlmWindow;

use super::OpenAiError;
use super::cloud::{self, Trace};
use crate::offload::{OffloadOutcome, Source};
use crate::registry::Served;
use crate::runtime::language::{Finished, LlmError};
use crate::serve::ApiState;

/// Counts a request once, in the telemetry window and the local metrics: when it finishes,
/// fails or is refused, or, if the client leaves first, when it is dropped.
pub(super) struct Recorder {
    state: ApiState,
    served: Arc<Served>,
    arrived: Instant,
    pub done: bool,
    /// Where the answer came from, for deployments with an offload policy.
    pub trace: Option<Trace>,
    /// A cloud attempt for a request the device then refused.
    pub refused_offload: Option<OffloadOutcome>,
}

impl Recorder {
    pub fn new(state: &ApiState, served: &Arc<Served>, arrived: Instant) -> Recorder {
        Recorder {
            state: state.clone(),
            served: served.clone(),
            arrived,
            done: false,
            trace: None,
            refused_offload: None,
        }
    }

    fn record(&mut self, failed: bool, llm: &LlmWindow) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let a = &self.served.assignment;
        let seconds = self.arrived.elapsed().as_secs_f64();
        let labels = [a.deployment.as_str(), a.variant.as_str()];
        let m = &self.state.metrics;
        m.requests.with_label_values(&labels).inc();
        if failed {
            m.errors.with_label_values(&labels).inc();
        }
        m.latency.with_label_values(&labels).observe(seconds);
        let offload = self
            .trace
            .as_ref()
            .and_then(|t| cloud::read(t).outcome)
            .or(self.refused_offload);
        self.state
            .stats
            .record_llm(&a.deployment, &a.variant, seconds, failed, llm, offload);
    }

    pub fn finished(&mut self, f: &Finished) {
        let source = self.trace.as_ref().map(|t| cloud::read(t).marker.source);
        if source == Some(Source::Cloud) {
            // Only what the client saw: the cloud's speed says nothing about this device.
            let mut window = LlmWindow::default();
            if let Some(ttft) = f.time_to_first_token {
                window.time_to_first_token.observe(ttft.as_secs_f64());
            }
            self.record(false, &window);
            return;
        }
        if !self.done && source != Some(Source::LocalFallback) {
            // What the offload decision expects of the next request.
            let prefill = f.time_to_first_token.map_or(f.prompt_seconds, |t| {
                t.saturating_sub(f.queue_wait).as_secs_f64()
            });
            self.state.offload.observe_generation(
                &self.served.assignment.deployment,
                f.prompt_seconds + f.decode_seconds,
                prefill,
            );
        }
        self.record(false, &f.window());
    }

    pub fn refused(&mut self, e: &LlmError) {
        let mut w = LlmWindow::default();
        match e {
            LlmError::ContextOverflow { .. } => w.context_overflows = 1,
            LlmError::Busy { .. } => w.rejected_busy = 1,
            _ => {}
        }
        // A refusal is the client's doing or back-pressure, not a failure of the model.
        self.record(false, &w);
    }

    pub fn failed(&mut self, message: String) -> OpenAiError {
        self.record(true, &LlmWindow::default());
        OpenAiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            code: "generation_failed",
            message,
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // The client went away mid-answer: a request, not an error.
        self.record(false, &LlmWindow::default());
    }
}
