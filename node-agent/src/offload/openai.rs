//! The cloud side of language-model offloading: a chat or text completion sent to an
//! OpenAI-compatible endpoint, always streamed, so that the device sees the first token as
//! soon as the cloud has it and notices a cloud that stops mid-answer.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use edgefleet_protocol::OffloadPolicy;

use super::{FORWARDED_HEADER, OffloadRuntime};

/// What the cloud sent next.
#[derive(Clone, Debug, PartialEq)]
pub enum CloudPiece {
    Text(String),
    /// The answer ended (`[DONE]` after a finish reason).
    Done {
        finish_reason: String,
        prompt_tokens: Option<u32>,
        completion_tokens: Option<u32>,
    },
}

type SseStream = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

/// An answer streaming from the cloud.
pub struct CloudStream {
    events: SseStream,
    url: String,
    /// The longest wait for the next event: the policy's `timeoutMs`.
    patience: Duration,
    finish_reason: Option<String>,
    usage: (Option<u32>, Option<u32>),
}

/// The request the cloud gets: the client's own, for the endpoint's model, streamed with usage.
pub fn cloud_body(mut request: Value, policy: &OffloadPolicy) -> Value {
    if let Some(object) = request.as_object_mut() {
        object.insert("model".into(), json!(policy.endpoint.model));
        object.insert("stream".into(), json!(true));
        object.insert("stream_options".into(), json!({"include_usage": true}));
    }
    request
}

impl OffloadRuntime {
    /// Sends `body` to `{url}/v1/{path}` and waits (at most `timeoutMs`) for the answer to start.
    pub async fn open_openai(
        &self,
        policy: &OffloadPolicy,
        path: &str,
        body: &Value,
    ) -> Result<CloudStream, String> {
        let url = format!("{}/v1/{path}", policy.endpoint.url.trim_end_matches('/'));
        let patience = Duration::from_millis(u64::from(policy.timeout_ms));
        let send = self
            .http()
            .post(&url)
            .header(FORWARDED_HEADER, "1")
            .json(body)
            .send();
        let response = tokio::time::timeout(patience, send)
            .await
            .map_err(|_| format!("{url}: no answer within {} ms", policy.timeout_ms))?
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let text: String = text.chars().take(200).collect();
            return Err(format!("{url} answered {status}: {text}"));
        }
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|event| event.map_err(|e| e.to_string()));
        Ok(CloudStream {
            events: Box::pin(events),
            url,
            patience,
            finish_reason: None,
            usage: (None, None),
        })
    }
}

impl CloudStream {
    /// The next piece of the answer; an error when the cloud failed, stalled for longer than
    /// `timeoutMs` or ended without finishing its answer.
    pub async fn next(&mut self) -> Result<CloudPiece, String> {
        loop {
            let event = tokio::time::timeout(self.patience, self.events.next())
                .await
                .map_err(|_| {
                    format!("{}: nothing for {} ms", self.url, self.patience.as_millis())
                })?;
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(format!("{}: {e}", self.url)),
                None => return Err(format!("{}: the answer ended early", self.url)),
            };
            if event.data.trim() == "[DONE]" {
                let finish_reason = self
                    .finish_reason
                    .take()
                    .ok_or_else(|| format!("{}: [DONE] without a finish reason", self.url))?;
                return Ok(CloudPiece::Done {
                    finish_reason,
                    prompt_tokens: self.usage.0,
                    completion_tokens: self.usage.1,
                });
            }
            if let Some(text) = self.read_chunk(&event.data)? {
                return Ok(CloudPiece::Text(text));
            }
        }
    }

    /// A chunk's text, if it has any; notes its finish reason and usage.
    fn read_chunk(&mut self, data: &str) -> Result<Option<String>, String> {
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| format!("{}: a chunk is not JSON ({e}): {data:.200}", self.url))?;
        if let Some(error) = chunk.get("error") {
            return Err(format!("{}: {error}", self.url));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            let count = |key: &str| usage[key].as_u64().and_then(|n| u32::try_from(n).ok());
            self.usage = (count("prompt_tokens"), count("completion_tokens"));
        }
        let Some(choice) = chunk["choices"].get(0) else {
            return Ok(None);
        };
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_string());
        }
        let text = choice["delta"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
            .filter(|t| !t.is_empty());
        Ok(text.map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(chunks: &[&str]) -> CloudStream {
        let body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        let bytes =
            futures_util::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from(body))]);
        let events = bytes.eventsource().map(|e| e.map_err(|e| e.to_string()));
        CloudStream {
            events: Box::pin(events),
            url: "http://cloud/v1/chat/completions".into(),
            patience: Duration::from_secs(1),
            finish_reason: None,
            usage: (None, None),
        }
    }

    #[tokio::test]
    async fn chat_chunks_become_text_then_done_with_usage() {
        let mut s = stream_of(&[
            r#"{"choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2}}"#,
            "[DONE]",
        ]);
        assert_eq!(s.next().await, Ok(CloudPiece::Text("Hel".into())));
        assert_eq!(s.next().await, Ok(CloudPiece::Text("lo".into())));
        assert_eq!(
            s.next().await,
            Ok(CloudPiece::Done {
                finish_reason: "stop".into(),
                prompt_tokens: Some(12),
                completion_tokens: Some(2)
            })
        );
    }

    #[tokio::test]
    async fn text_completion_chunks_are_read_too() {
        let mut s = stream_of(&[
            r#"{"choices":[{"text":" world","finish_reason":"length"}]}"#,
            "[DONE]",
        ]);
        assert_eq!(s.next().await, Ok(CloudPiece::Text(" world".into())));
        let done = s.next().await.expect("done");
        assert!(
            matches!(done, CloudPiece::Done { finish_reason, .. } if finish_reason == "length")
        );
    }

    #[tokio::test]
    async fn an_answer_cut_short_or_broken_is_an_error_that_says_so() {
        let mut cut = stream_of(&[r#"{"choices":[{"delta":{"content":"Hi"}}]}"#]);
        assert_eq!(cut.next().await, Ok(CloudPiece::Text("Hi".into())));
        let e = cut.next().await.expect_err("ended early");
        assert!(e.contains("the answer ended early"), "{e}");

        let mut unfinished = stream_of(&["[DONE]"]);
        let e = unfinished.next().await.expect_err("no finish reason");
        assert!(e.contains("[DONE] without a finish reason"), "{e}");

        let mut garbage = stream_of(&["{not json"]);
        let e = garbage.next().await.expect_err("not JSON");
        assert!(e.contains("a chunk is not JSON"), "{e}");

        let mut error = stream_of(&[r#"{"error":{"message":"overloaded"}}"#]);
        let e = error.next().await.expect_err("an error chunk");
        assert!(e.contains("overloaded"), "{e}");
    }

    #[test]
    fn the_cloud_gets_the_clients_request_for_its_own_model_streamed() {
        let policy: OffloadPolicy = serde_json::from_value(json!({
            "inputsMayLeaveDevice": true,
            "endpoint": {"url": "http://cloud", "model": "big", "protocol": "openai"},
            "triggers": {"contextExceeded": true}
        }))
        .expect("policy");
        let body = cloud_body(
            json!({"model": "small", "messages": [], "max_tokens": 9, "stream": false}),
            &policy,
        );
        assert_eq!(
            body,
            json!({"model": "big", "messages": [], "max_tokens": 9, "stream": true,
                   "stream_options": {"include_usage": true}})
        );
    }
}
