//! The JSON of the OpenAI-compatible API (and KServe's generate extension): requests parsed
//! into generation parameters with errors that name the field, and response bodies.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::runtime::language::{ChatMessage, FinishReason, Finished, GenerateParams, Prompt};

/// Which API a request came through; decides the shape of every answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completion,
    Generate,
}

impl Api {
    /// Where the request goes on an OpenAI-compatible cloud endpoint (under `/v1/`);
    /// KServe's generate extension is always answered on the device.
    pub fn openai_path(self) -> Option<&'static str> {
        match self {
            Api::Chat => Some("chat/completions"),
            Api::Completion => Some("completions"),
            Api::Generate => None,
        }
    }
}

/// A parsed request: which model, what to generate from, how.
pub struct Parsed {
    pub model: String,
    pub prompt: Prompt,
    pub params: GenerateParams,
    pub stream: bool,
    pub include_usage: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields every API shares; unknown fields are ignored as OpenAI's clients send many.
#[derive(Deserialize, Default)]
struct Sampling {
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<OneOrMany>,
    n: Option<u32>,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: OneOrMany,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Deserialize)]
struct GenerateRequest {
    text_input: String,
    #[serde(default)]
    parameters: Sampling,
}

/// Parses `body` for `api`; `model` is the path's model name for the generate extension.
pub fn parse(api: Api, body: &[u8], model: Option<&str>) -> Result<Parsed, String> {
    let invalid = |e: serde_json::Error| format!("invalid request body: {e}");
    match api {
        Api::Chat => {
            let r: ChatRequest = serde_json::from_slice(body).map_err(invalid)?;
            if r.messages.is_empty() {
                return Err("messages: must not be empty".into());
            }
            let messages = r
                .messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| message(i, m))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Parsed {
                model: r.model,
                prompt: Prompt::Chat(messages),
                params: params(r.sampling, None)?,
                stream: r.stream,
                include_usage: r.stream_options.unwrap_or_default().include_usage,
            })
        }
        Api::Completion => {
            let r: CompletionRequest = serde_json::from_slice(body).map_err(invalid)?;
            let prompt = match r.prompt {
                OneOrMany::One(p) => p,
                OneOrMany::Many(mut many) if many.len() == 1 => many.remove(0),
                OneOrMany::Many(_) => {
                    return Err("prompt: only one prompt per request is supported".into());
                }
            };
            Ok(Parsed {
                model: r.model,
                prompt: Prompt::Text(prompt),
                // OpenAI's legacy completions default to 16 tokens.
                params: params(r.sampling, Some(16))?,
                stream: r.stream,
                include_usage: r.stream_options.unwrap_or_default().include_usage,
            })
        }
        Api::Generate => {
            let r: GenerateRequest = serde_json::from_slice(body).map_err(invalid)?;
            Ok(Parsed {
                model: model.unwrap_or_default().to_string(),
                prompt: Prompt::Text(r.text_input),
                params: params(r.parameters, None)?,
                stream: false,
                include_usage: false,
            })
        }
    }
}

fn message(index: usize, m: Message) -> Result<ChatMessage, String> {
    if !matches!(
        m.role.as_str(),
        "system" | "developer" | "user" | "assistant" | "tool"
    ) {
        return Err(format!("messages[{index}].role: unknown role {:?}", m.role));
    }
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(text)) => text,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (p, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(format!(
                            "messages[{index}].content[{p}]: only text parts are supported, \
                             not {kind:?}"
                        ));
                    }
                }
            }
            text
        }
    };
    let role = if m.role == "developer" {
        "system".to_string()
    } else {
        m.role
    };
    Ok(ChatMessage { role, content })
}

fn params(s: Sampling, default_max: Option<u32>) -> Result<GenerateParams, String> {
    if s.n.is_some_and(|n| n != 1) {
        return Err("n: only one choice per request is supported".into());
    }
    let max_tokens = s.max_completion_tokens.or(s.max_tokens).or(default_max);
    if max_tokens == Some(0) {
        return Err("max_tokens: must be at least 1".into());
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(format!("temperature: {temperature} is not between 0 and 2"));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
        return Err(format!("top_p: {top_p} is not in (0, 1]"));
    }
    let stop = match s.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(many)) => many,
    };
    if stop.len() > 4 {
        return Err(format!("stop: {} sequences given, at most 4", stop.len()));
    }
    Ok(GenerateParams {
        max_tokens,
        stop,
        temperature,
        top_p,
        // Seeds are 32-bit in llama.cpp; larger ones are folded, not refused.
        seed: s.seed.map(|seed| seed as u32),
    })
}

/// Fields of every answer about one request.
pub struct Meta<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub version: &'a str,
}

pub fn usage(f: &Finished) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

/// A whole (non-streamed) answer.
pub fn full(api: Api, m: &Meta, text: &str, f: &Finished) -> Value {
    let reason = f.reason.as_str();
    match api {
        Api::Chat => json!({
            "id": m.id, "object": "chat.completion", "created": m.created, "model": m.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": reason,
            }],
            "usage": usage(f),
        }),
        Api::Completion => json!({
            "id": m.id, "object": "text_completion", "created": m.created, "model": m.model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": reason}],
            "usage": usage(f),
        }),
        Api::Generate => json!({
            "model_name": m.model, "model_version": m.version, "text_output": text,
            "finish_reason": reason, "usage": usage(f),
        }),
    }
}

/// One streamed piece; `finish` is set on the last content chunk.
pub fn chunk(api: Api, m: &Meta, text: &str, finish: Option<FinishReason>) -> Value {
    let reason = finish.map(FinishReason::as_str);
    match api {
        Api::Chat => json!({
            "id": m.id, "object": "chat.completion.chunk", "created": m.created, "model": m.model,
            "choices": [{
                "index": 0,
                "delta": if finish.is_some() { json!({}) } else { json!({"role": "assistant", "content": text}) },
                "logprobs": null,
                "finish_reason": reason,
            }],
        }),
        Api::Completion => json!({
            "id": m.id, "object": "text_completion", "created": m.created, "model": m.model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": reason}],
        }),
        Api::Generate => json!({
            "model_name": m.model, "model_version": m.version, "text_output": text,
            "finish_reason": reason,
        }),
    }
}

/// The extra chunk `stream_options.include_usage` asks for: no choices, only usage.
pub fn usage_chunk(api: Api, m: &Meta, f: &Finished) -> Value {
    let object = match api {
        Api::Chat => "chat.completion.chunk",
        _ => "text_completion",
    };
    json!({
        "id": m.id, "object": object, "created": m.created, "model": m.model,
        "choices": [], "usage": usage(f),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_requests_take_openai_fields_and_ignore_unknown_ones() {
        let body = br#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi"}]}],
            "max_completion_tokens":8,"temperature":0,"stop":"\n","seed":7,
            "presence_penalty":0.5,"stream":true,"stream_options":{"include_usage":true}}"#;
        let p = parse(Api::Chat, body, None).unwrap();
        assert_eq!(p.model, "m");
        assert!(p.stream && p.include_usage);
        assert_eq!(p.params.max_tokens, Some(8));
        assert_eq!(p.params.stop, vec!["\n".to_string()]);
        assert_eq!(p.params.seed, Some(7));
        let Prompt::Chat(messages) = p.prompt else {
            panic!("a chat prompt")
        };
        assert_eq!(messages[0].role, "system");
        assert_eq!(messages[1].content, "hi");
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases: [(Api, &[u8], &str); 8] = [
            (
                Api::Chat,
                b"{not json",
                "invalid request body: key must be a string",
            ),
            (
                Api::Chat,
                br#"{"model":"m","messages":[]}"#,
                "messages: must not be empty",
            ),
            (
                Api::Chat,
                br#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
                "messages[0].role: unknown role \"robot\"",
            ),
            (
                Api::Chat,
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature: 3 is not between 0 and 2",
            ),
            (
                Api::Completion,
                br#"{"model":"m","prompt":"x","max_tokens":0}"#,
                "max_tokens: must be at least 1",
            ),
            (
                Api::Completion,
                br#"{"model":"m","prompt":["a","b"]}"#,
                "prompt: only one prompt per request is supported",
            ),
            (
                Api::Completion,
                br#"{"model":"m","prompt":"x","stop":["a","b","c","d","e"]}"#,
                "stop: 5 sequences given, at most 4",
            ),
            (
                Api::Chat,
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#,
                "n: only one choice per request is supported",
            ),
        ];
        for (api, body, want) in cases {
            let got = parse(api, body, None).err().expect("refused");
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn completions_default_to_sixteen_tokens_and_generate_takes_the_path_model() {
        let p = parse(Api::Completion, br#"{"model":"m","prompt":"x"}"#, None).unwrap();
        assert_eq!(p.params.max_tokens, Some(16));
        let g = parse(
            Api::Generate,
            br#"{"text_input":"x","parameters":{"max_tokens":3}}"#,
            Some("chat"),
        )
        .unwrap();
        assert_eq!(g.model, "chat");
        assert_eq!(g.params.max_tokens, Some(3));
    }
}
