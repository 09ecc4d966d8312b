//! Language-model requests of deployments with an offload policy (`spec.offload`, protocol
//! `openai`; see `crate::offload`): the decision before the local run, the cloud's streamed
//! answer relayed as if the device generated it, and the device's own answer when the cloud
//! fails — the whole answer if the cloud failed before its first token, the rest of it
//! (continuing the cloud's text) if it stopped mid-answer. Streams included: a client never
//! sees the cloud fail, only where its answer came from (`edgefleet.source`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use edgefleet_protocol::OffloadPolicy;

use super::super::ApiState;
use super::super::offloaded::count;
use crate::offload::openai::{CloudPiece, CloudStream, cloud_body};
use crate::offload::{Marker, OffloadOutcome, Source, Trigger, llm_trigger_before_local};
use crate::registry::Served;
use crate::runtime::language::{
    Event, FinishReason, Finished, GenerateParams, Generation, LanguageModel, LlmError, Prompt,
};

/// Where an answer came from, as far as it is known yet; the relay updates it before the last
/// event, so whoever reads it after `Event::Done` sees the final word.
#[derive(Clone, Copy, Debug)]
pub(super) struct Provenance {
    pub marker: Marker,
    /// Set when the cloud was tried.
    pub outcome: Option<OffloadOutcome>,
}

pub(super) type Trace = Arc<Mutex<Provenance>>;

pub(super) fn read(trace: &Trace) -> Provenance {
    *trace.lock().unwrap_or_else(|p| p.into_inner())
}

fn write(trace: &Trace, provenance: Provenance) {
    *trace.lock().unwrap_or_else(|p| p.into_inner()) = provenance;
}

/// Marks an OpenAI answer (or its last chunk) with where it came from.
pub(super) fn annotate(answer: &mut Value, provenance: &Provenance) {
    let m = &provenance.marker;
    if let Some(object) = answer.as_object_mut() {
        let mut mark = serde_json::json!({"source": m.source.as_str()});
        if let Some(trigger) = m.trigger {
            mark["trigger"] = trigger.as_str().into();
        }
        if m.rate_limited {
            mark["rate_limited"] = true.into();
        }
        object.insert("edgefleet".into(), mark);
    }
}

fn traced(marker: Marker, outcome: Option<OffloadOutcome>) -> Trace {
    Arc::new(Mutex::new(Provenance { marker, outcome }))
}

/// One request, as the handler parsed it.
pub(super) struct Request {
    pub state: ApiState,
    pub served: Arc<Served>,
    /// The OpenAI path the request came in on (`chat/completions` or `completions`).
    pub path: &'static str,
    pub body: Value,
    pub prompt: Prompt,
    pub params: GenerateParams,
    pub arrived: Instant,
}

/// A request the device refuses; `cloud` says why the cloud did not take it instead.
pub(super) struct Refused {
    pub error: LlmError,
    pub cloud: Option<(String, OffloadOutcome)>,
}

impl From<LlmError> for Refused {
    fn from(error: LlmError) -> Self {
        Refused { error, cloud: None }
    }
}

/// Answers `r` locally or through the cloud, as the policy's triggers decide.
pub(super) async fn answer(
    r: Request,
    model: &dyn LanguageModel,
    policy: &OffloadPolicy,
) -> Result<(Generation, Trace), Refused> {
    let deployment = r.served.assignment.deployment.clone();
    let info = model.info();
    let busy = (info.slots as usize + info.queue as usize).saturating_sub(info.free);
    let load = r
        .state
        .offload
        .llm_load(&deployment, busy, info.slots as usize);
    let mut refused = None;
    let trigger = match llm_trigger_before_local(&policy.triggers, &load, true) {
        Some(trigger) => trigger,
        None => match model.submit(&r.prompt, r.params.clone(), r.arrived) {
            Ok(generation) => return Ok((generation, traced(Marker::local(), None))),
            Err(e @ LlmError::ContextOverflow { .. }) if policy.triggers.context_exceeded => {
                refused = Some(e);
                Trigger::ContextExceeded
            }
            Err(e) => return Err(e.into()),
        },
    };
    if !r.state.offload.allow(&deployment, &policy.rate_limit) {
        count(&r.state, &r.served, trigger, "rate_limited");
        if let Some(error) = refused {
            return Err(error.into());
        }
        let generation = model.submit(&r.prompt, r.params.clone(), r.arrived)?;
        let marker = Marker {
            source: Source::Local,
            trigger: Some(trigger),
            rate_limited: true,
        };
        return Ok((generation, traced(marker, None)));
    }

    let started = Instant::now();
    let body = cloud_body(r.body.clone(), policy);
    let opened = match r.state.offload.open_openai(policy, r.path, &body).await {
        Ok(mut stream) => stream.next().await.map(|first| (stream, first)),
        Err(e) => Err(e),
    };
    match opened {
        Ok((stream, first)) => {
            let marker = Marker {
                source: Source::Cloud,
                trigger: Some(trigger),
                rate_limited: false,
            };
            let trace = traced(marker, None);
            let (events, receiver) = mpsc::channel(64);
            let relay = Relay {
                r,
                trigger,
                started,
                trace: trace.clone(),
                events,
            };
            tokio::spawn(relay.run(stream, first));
            let generation = Generation {
                prompt_tokens: 0,
                events: receiver,
            };
            Ok((generation, trace))
        }
        Err(reason) => {
            let outcome = cloud_failed(&r, trigger, started, &reason);
            if let Some(error) = refused {
                return Err(Refused {
                    error,
                    cloud: Some((reason, outcome)),
                });
            }
            let generation = model
                .submit(&r.prompt, r.params.clone(), r.arrived)
                .map_err(|error| Refused {
                    error,
                    cloud: Some((reason, outcome)),
                })?;
            let marker = Marker {
                source: Source::LocalFallback,
                trigger: Some(trigger),
                rate_limited: false,
            };
            Ok((generation, traced(marker, Some(outcome))))
        }
    }
}

/// Logs and counts a cloud failure; what the request's telemetry records about it.
fn cloud_failed(r: &Request, trigger: Trigger, started: Instant, reason: &str) -> OffloadOutcome {
    tracing::warn!(deployment = %r.served.assignment.deployment, trigger = trigger.as_str(),
        %reason, "cloud endpoint did not answer; the device answers");
    count(&r.state, &r.served, trigger, "fallback");
    OffloadOutcome {
        fallback: true,
        ..observe_cloud(r, started)
    }
}

fn observe_cloud(r: &Request, started: Instant) -> OffloadOutcome {
    let cloud_seconds = started.elapsed().as_secs_f64();
    let a = &r.served.assignment;
    r.state
        .metrics
        .cloud_latency
        .with_label_values(&[a.deployment.as_str(), a.variant.as_str()])
        .observe(cloud_seconds);
    OffloadOutcome {
        cloud_seconds,
        fallback: false,
    }
}

/// Passes the cloud's answer on as generation events, and finishes it locally if the cloud
/// stops.
struct Relay {
    r: Request,
    trigger: Trigger,
    started: Instant,
    trace: Trace,
    events: mpsc::Sender<Event>,
}

impl Relay {
    async fn run(self, mut stream: CloudStream, first: CloudPiece) {
        let mut answered = String::new();
        let mut pieces = 0u32;
        let mut first_token: Option<Duration> = None;
        let mut piece = Ok(first);
        let reason = loop {
            match piece {
                Ok(CloudPiece::Text(text)) => {
                    first_token.get_or_insert_with(|| self.r.arrived.elapsed());
                    answered.push_str(&text);
                    pieces += 1;
                    if self.events.send(Event::Text(text)).await.is_err() {
                        return; // the client left; dropping the stream ends the cloud's answer
                    }
                }
                Ok(CloudPiece::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    count(&self.r.state, &self.r.served, self.trigger, "cloud");
                    let outcome = observe_cloud(&self.r, self.started);
                    self.finish_cloud(outcome);
                    let finished = Finished {
                        reason: if finish_reason == "length" {
                            FinishReason::Length
                        } else {
                            FinishReason::Stop
                        },
                        prompt_tokens: prompt_tokens.unwrap_or(0),
                        completion_tokens: completion_tokens.unwrap_or(pieces),
                        queue_wait: Duration::ZERO,
                        time_to_first_token: first_token,
                        prompt_seconds: 0.0,
                        decode_seconds: 0.0,
                        inter_token: Default::default(),
                    };
                    let _ = self.events.send(Event::Done(finished)).await;
                    return;
                }
                Err(reason) => break reason,
            }
            piece = stream.next().await;
        };
        drop(stream);
        let outcome = cloud_failed(&self.r, self.trigger, self.started, &reason);
        write(
            &self.trace,
            Provenance {
                marker: Marker {
                    source: Source::LocalFallback,
                    trigger: Some(self.trigger),
                    rate_limited: false,
                },
                outcome: Some(outcome),
            },
        );
        self.continue_locally(reason, answered, pieces, first_token)
            .await;
    }

    fn finish_cloud(&self, outcome: OffloadOutcome) {
        let mut provenance = read(&self.trace);
        provenance.outcome = Some(outcome);
        write(&self.trace, provenance);
    }

    /// The device generates the rest of the answer the cloud began.
    async fn continue_locally(
        self,
        reason: String,
        answered: String,
        pieces: u32,
        first_token: Option<Duration>,
    ) {
        let Some(model) = self.r.served.model.language_model() else {
            return;
        };
        let prompt = if answered.is_empty() {
            self.r.prompt.clone()
        } else {
            Prompt::Continue {
                prompt: Box::new(self.r.prompt.clone()),
                answered,
            }
        };
        let params = GenerateParams {
            max_tokens: self
                .r
                .params
                .max_tokens
                .map(|m| m.saturating_sub(pieces).max(1)),
            ..self.r.params.clone()
        };
        let mut generation = match model.submit(&prompt, params, Instant::now()) {
            Ok(generation) => generation,
            Err(e) => {
                let message = format!(
                    "the cloud endpoint stopped mid-answer ({reason}) and the device cannot \
                     continue it: {e}"
                );
                let _ = self.events.send(Event::Failed(message)).await;
                return;
            }
        };
        while let Some(event) = generation.events.recv().await {
            let event = match event {
                Event::Done(mut finished) => {
                    // The client's first token was the cloud's.
                    finished.time_to_first_token = first_token.or(finished.time_to_first_token);
                    Event::Done(finished)
                }
                other => other,
            };
            if self.events.send(event).await.is_err() {
                return;
            }
        }
    }
}
