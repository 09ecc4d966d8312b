//! The OpenAI-compatible API for language models (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`, streaming as server-sent events) and KServe's `generate` /
//! `generate_stream` extension, all over the same engine. Errors use OpenAI's
//! `{"error": {"message", "type", "code"}}` body so that OpenAI clients report them as such.

mod cloud;
mod record;
mod wire;

use std::convert::Infallible;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};

use edgefleet_protocol::OffloadProtocol;

use super::ApiState;
use crate::offload::FORWARDED_HEADER;
use crate::runtime::language::{Event, Finished, Generation, LlmError};
use cloud::Trace;
use record::Recorder;
use wire::{Api, Meta};

pub fn routes(router: Router<ApiState>) -> Router<ApiState> {
    router
        .route("/v1/models", get(models))
        .route(
            "/v1/chat/completions",
            post(|s: State<ApiState>, h: HeaderMap, body: Bytes| {
                handle(s, Api::Chat, None, h, body, false)
            }),
        )
        .route(
            "/v1/completions",
            post(|s: State<ApiState>, h: HeaderMap, body: Bytes| {
                handle(s, Api::Completion, None, h, body, false)
            }),
        )
        .route(
            "/v2/models/{name}/generate",
            post(
                |s: State<ApiState>, Path(name): Path<String>, body: Bytes| {
                    handle(s, Api::Generate, Some(name), HeaderMap::new(), body, false)
                },
            ),
        )
        .route(
            "/v2/models/{name}/generate_stream",
            post(
                |s: State<ApiState>, Path(name): Path<String>, body: Bytes| {
                    handle(s, Api::Generate, Some(name), HeaderMap::new(), body, true)
                },
            ),
        )
}

/// An OpenAI-style error answer.
pub(super) struct OpenAiError {
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
    headers: HeaderMap,
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
    // A request another agent offloaded here is answered here (no offload loops).
    let policy = served.assignment.offload.as_ref().filter(|p| {
        p.inputs_may_leave_device
            && p.endpoint.protocol == OffloadProtocol::OpenAi
            && !headers.contains_key(FORWARDED_HEADER)
    });
    let stream = parsed.stream || force_stream;
    let include_usage = parsed.include_usage;
    let (generation, trace) = match (policy, api.openai_path()) {
        (Some(policy), Some(path)) => {
            let request = cloud::Request {
                state: s.clone(),
                served: served.clone(),
                path,
                body: serde_json::from_slice(&body).unwrap_or_default(),
                prompt: parsed.prompt,
                params: parsed.params,
                arrived,
            };
            match cloud::answer(request, model, policy).await {
                Ok((generation, trace)) => (generation, Some(trace)),
                Err(refused) => {
                    record.refused_offload = refused.cloud.as_ref().map(|(_, outcome)| *outcome);
                    record.refused(&refused.error);
                    let mut error = OpenAiError::from(refused.error);
                    if let Some((reason, _)) = refused.cloud {
                        error.message += &format!("; the cloud endpoint did not answer: {reason}");
                    }
                    return error.into_response();
                }
            }
        }
        _ => match model.submit(&parsed.prompt, parsed.params, arrived) {
            Ok(generation) => (generation, None),
            Err(e) => {
                record.refused(&e);
                return OpenAiError::from(e).into_response();
            }
        },
    };
    record.trace = trace.clone();
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
    if stream {
        let state = Streaming {
            api,
            meta,
            generation,
            record,
            trace: trace.clone(),
            include_usage,
            finished: None,
            ended: false,
        };
        let mut response = Sse::new(stream_events(state))
            .keep_alive(KeepAlive::default())
            .into_response();
        // Who starts the answer; the last chunk's `edgefleet` says who finished it.
        mark_source(&mut response, trace.as_ref());
        return response;
    }
    collect(api, meta, generation, record, trace).await
}

/// The `edgefleet-source` header, for deployments with an offload policy.
fn mark_source(response: &mut Response, trace: Option<&Trace>) {
    if let Some(trace) = trace {
        cloud::read(trace).marker.set_header(response.headers_mut());
    }
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

async fn collect(
    api: Api,
    meta: Owned,
    mut g: Generation,
    mut record: Recorder,
    trace: Option<Trace>,
) -> Response {
    let mut text = String::new();
    while let Some(event) = g.events.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Done(finished) => {
                record.finished(&finished);
                let mut answer = wire::full(api, &meta.meta(), &text, &finished);
                if let Some(trace) = &trace {
                    cloud::annotate(&mut answer, &cloud::read(trace));
                }
                let mut response = axum::Json(answer).into_response();
                mark_source(&mut response, trace.as_ref());
                return response;
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
    trace: Option<Trace>,
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
                let mut last = wire::chunk(st.api, &st.meta.meta(), "", Some(finished.reason));
                if let Some(trace) = &st.trace {
                    cloud::annotate(&mut last, &cloud::read(trace));
                }
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
