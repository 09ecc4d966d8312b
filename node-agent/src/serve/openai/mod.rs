//! The OpenAI-compatible API for language models (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`, streaming as server-sent events) and KServe's `generate` /
//! `generate_stream` extension, all over the same engine. Errors use OpenAI's
//! `{"error": {"message", "type", "code"}}` body so that OpenAI clients report them as such.

mod wire;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};

use edgefleet_protocol::llm::LlmWindow;

use super::ApiState;
use crate::registry::Served;
use crate::runtime::language::{Event, Finished, Generation, LlmError};
use wire::{Api, Meta};

pub fn routes(router: Router<ApiState>) -> Router<ApiState> {
    router
        .route("/v1/models", get(models))
        .route(
            "/v1/chat/completions",
            post(|s: State<ApiState>, body: Bytes| handle(s, Api::Chat, None, body, false)),
        )
        .route(
            "/v1/completions",
            post(|s: State<ApiState>, body: Bytes| handle(s, Api::Completion, None, body, false)),
        )
        .route(
            "/v2/models/{name}/generate",
            post(
                |s: State<ApiState>, Path(name): Path<String>, body: Bytes| {
                    handle(s, Api::Generate, Some(name), body, false)
                },
            ),
        )
        .route(
            "/v2/models/{name}/generate_stream",
            post(
                |s: State<ApiState>, Path(name): Path<String>, body: Bytes| {
                    handle(s, Api::Generate, Some(name), body, true)
                },
            ),
        )
}

/// An OpenAI-style error answer.
struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
}

impl OpenAiError {
    fn invalid(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: "invalid_request",
            message,
        }
    }
}

impl From<LlmError> for OpenAiError {
    fn from(e: LlmError) -> Self {
        let (status, kind, code) = match &e {
            LlmError::ContextOverflow { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
            ),
            LlmError::Busy { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "queue_full",
            ),
            LlmError::EmptyPrompt | LlmError::Prompt(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_prompt",
            ),
        };
        Self {
            status,
            kind,
            code,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": null, "code": self.code,
        }});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

async fn models(State(s): State<ApiState>) -> impl IntoResponse {
    let data: Vec<Value> = s
        .registry
        .all()
        .iter()
        .filter(|served| served.model.language_model().is_some())
        .map(|served| {
            json!({
                "id": served.assignment.model.name, "object": "model", "created": 0,
                "owned_by": "edgefleet", "deployment": served.assignment.deployment,
                "version": served.assignment.model.version, "variant": served.assignment.variant,
            })
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data}))
}

async fn handle(
    State(s): State<ApiState>,
    api: Api,
    path_model: Option<String>,
    body: Bytes,
    force_stream: bool,
) -> Response {
    let arrived = Instant::now();
    let parsed = match wire::parse(api, &body, path_model.as_deref()) {
        Ok(parsed) => parsed,
        Err(e) => return OpenAiError::invalid(e).into_response(),
    };
    let Some(served) = s.registry.get(&parsed.model) else {
        return OpenAiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: "model_not_found",
            message: format!("the model {:?} is not loaded on this device", parsed.model),
        }
        .into_response();
    };
    let mut record = Recorder::new(&s, &served, arrived);
    let Some(model) = served.model.language_model() else {
        return OpenAiError::invalid(format!(
            "{:?} is not a language model; send tensors to /v2/models/{}/infer",
            parsed.model, parsed.model
        ))
        .into_response();
    };
    // Test knob (canary tests): a slower variant, seen as a later first token.
    let extra = s.test.extra_latency(&served.assignment.variant);
    if extra > Duration::ZERO {
        tokio::time::sleep(extra).await;
    }
    let generation = match model.submit(&parsed.prompt, parsed.params, arrived) {
        Ok(generation) => generation,
        Err(e) => {
            record.refused(&e);
            return OpenAiError::from(e).into_response();
        }
    };
    let a = &served.assignment;
    let id = format!(
        "{}-{:016x}",
        if api == Api::Chat { "chatcmpl" } else { "cmpl" },
        fastrand::u64(..)
    );
    let meta = Owned {
        id,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: a.model.name.clone(),
        version: a.model.version.clone(),
    };
    if parsed.stream || force_stream {
        let state = Streaming {
            api,
            meta,
            generation,
            record,
            include_usage: parsed.include_usage,
            finished: None,
            ended: false,
        };
        return Sse::new(stream_events(state))
            .keep_alive(KeepAlive::default())
            .into_response();
    }
    collect(api, meta, generation, record).await
}

struct Owned {
    id: String,
    created: u64,
    model: String,
    version: String,
}

impl Owned {
    fn meta(&self) -> Meta<'_> {
        Meta {
            id: &self.id,
            created: self.created,
            model: &self.model,
            version: &self.version,
        }
    }
}

async fn collect(api: Api, meta: Owned, mut g: Generation, mut record: Recorder) -> Response {
    let mut text = String::new();
    while let Some(event) = g.events.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Done(finished) => {
                record.finished(&finished);
                return axum::Json(wire::full(api, &meta.meta(), &text, &finished)).into_response();
            }
            Event::Failed(e) => return record.failed(e).into_response(),
        }
    }
    record
        .failed("the generation slot stopped".into())
        .into_response()
}

struct Streaming {
    api: Api,
    meta: Owned,
    generation: Generation,
    record: Recorder,
    include_usage: bool,
    /// Set once the model finished; the closing chunks are sent from it.
    finished: Option<Finished>,
    ended: bool,
}

/// Server-sent events: a chunk per piece of text, a closing chunk with the finish reason, the
/// usage chunk if asked for, then OpenAI's `[DONE]` (not for KServe's generate_stream).
/// Dropping the stream (the client left) drops the receiver, which cancels the sequence.
fn stream_events(state: Streaming) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold(state, |mut st| async move {
        if st.ended {
            return None;
        }
        let data = |v: Value| SseEvent::default().data(v.to_string());
        if let Some(finished) = st.finished.take()
            && st.include_usage
        {
            let usage = wire::usage_chunk(st.api, &st.meta.meta(), &finished);
            return Some((Ok(data(usage)), st));
        }
        if st.record.done {
            st.ended = true;
            return (st.api != Api::Generate).then(|| (Ok(SseEvent::default().data("[DONE]")), st));
        }
        let event = match st.generation.events.recv().await {
            Some(Event::Text(piece)) => data(wire::chunk(st.api, &st.meta.meta(), &piece, None)),
            Some(Event::Done(finished)) => {
                st.record.finished(&finished);
                let last = wire::chunk(st.api, &st.meta.meta(), "", Some(finished.reason));
                st.finished = Some(finished);
                data(last)
            }
            Some(Event::Failed(e)) => {
                let error = st.record.failed(e);
                data(json!({"error": {"message": error.message, "type": error.kind}}))
            }
            None => {
                let error = st.record.failed("the generation slot stopped".into());
                data(json!({"error": {"message": error.message, "type": error.kind}}))
            }
        };
        Some((Ok(event), st))
    })
}

/// Counts a request once, in the telemetry window and the local metrics: when it finishes,
/// fails or is refused, or, if the client leaves first, when it is dropped.
struct Recorder {
    state: ApiState,
    served: Arc<Served>,
    arrived: Instant,
    done: bool,
}

impl Recorder {
    fn new(state: &ApiState, served: &Arc<Served>, arrived: Instant) -> Recorder {
        Recorder {
            state: state.clone(),
            served: served.clone(),
            arrived,
            done: false,
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
        self.state
            .stats
            .record_llm(&a.deployment, &a.variant, seconds, failed, llm);
    }

    fn finished(&mut self, f: &Finished) {
        self.record(false, &f.window());
    }

    fn refused(&mut self, e: &LlmError) {
        let mut w = LlmWindow::default();
        match e {
            LlmError::ContextOverflow { .. } => w.context_overflows = 1,
            LlmError::Busy { .. } => w.rejected_busy = 1,
            _ => {}
        }
        // A refusal is the client's doing or back-pressure, not a failure of the model.
        self.record(false, &w);
    }

    fn failed(&mut self, message: String) -> OpenAiError {
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
