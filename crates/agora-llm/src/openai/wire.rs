//! The OpenAI API's JSON, both ways: request bodies for `/chat/completions` and
//! `/completions`, and replies (whole or streamed) read into [`Reply`] and [`Chunk`].
//!
//! Replies are read through [`Node`], a cursor that remembers its path in the document,
//! so that an error names the exact field (`choices[0].message.content is missing`). The
//! reader is strict where the API promises a field and lenient where real servers differ:
//! `usage` and `model` may be absent (llama.cpp, Ollama and vLLM versions vary), and a
//! `null` message content reads as empty text.

use serde_json::{Map, Value, json};

use crate::{Chunk, FinishReason, Prompt, Reply, Request, TokenLogprob, TopLogprob, Usage};

/// Which of the two generation routes a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub(crate) fn of(prompt: &Prompt) -> Endpoint {
        match prompt {
            Prompt::Chat(_) => Endpoint::Chat,
            Prompt::Text(_) => Endpoint::Completions,
        }
    }

    /// The path under the API base URL.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completions => "completions",
        }
    }
}

/// The JSON body of `request` for `model`.
pub(crate) fn request_body(request: &Request, model: &str, stream: bool) -> Value {
    let sampling = &request.sampling;
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    match &request.prompt {
        Prompt::Chat(messages) => {
            let messages: Vec<Value> = messages
                .iter()
                .map(|message| json!({"role": message.role.as_str(), "content": message.content}))
                .collect();
            body.insert("messages".into(), Value::Array(messages));
            if let Some(top) = request.logprobs {
                body.insert("logprobs".into(), json!(true));
                body.insert("top_logprobs".into(), json!(top));
            }
        }
        Prompt::Text(text) => {
            body.insert("prompt".into(), json!(text));
            if let Some(top) = request.logprobs {
                body.insert("logprobs".into(), json!(top));
            }
        }
    }
    body.insert("temperature".into(), json!(sampling.temperature));
    body.insert("top_p".into(), json!(sampling.top_p));
    body.insert("max_tokens".into(), json!(sampling.max_tokens));
    // Some servers reject an empty `stop` list, and leaving it out means the same.
    if !sampling.stop.is_empty() {
        body.insert("stop".into(), json!(sampling.stop));
    }
    if let Some(seed) = sampling.seed {
        body.insert("seed".into(), json!(seed));
    }
    if let Some(top_k) = sampling.top_k {
        body.insert("top_k".into(), json!(top_k));
    }
    if let Some(min_p) = sampling.min_p {
        body.insert("min_p".into(), json!(min_p));
    }
    if let Some(repetition_penalty) = sampling.repetition_penalty {
        body.insert("repetition_penalty".into(), json!(repetition_penalty));
    }
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

/// A whole (not streamed) reply.
pub(crate) fn parse_reply(
    endpoint: Endpoint,
    body: &[u8],
    wants_logprobs: bool,
    default_model: &str,
) -> Result<Reply, String> {
    let document: Value = serde_json::from_slice(body)
        .map_err(|error| format!("the body is not JSON ({error}); it starts with {}", body_start(body)))?;
    let root = Node::root(&document);
    // Some servers answer an error with status 200.
    if root.value.get("choices").is_none() && root.optional("error").is_some() {
        return Err(format!("the reply holds an error instead of choices: {}", server_error_message(body)));
    }
    let choice = root.get("choices")?.at(0)?;
    let text = match endpoint {
        Endpoint::Chat => {
            choice.get("message")?.nullable("content")?.map(|content| content.string()).transpose()?
        }
        Endpoint::Completions => Some(choice.get("text")?.string()?),
    };
    let finish_reason = match choice.nullable("finish_reason")? {
        Some(reason) => FinishReason::parse(reason.string()?),
        None => FinishReason::Other("unknown".to_string()),
    };
    let logprobs = if wants_logprobs {
        let node = choice.get("logprobs")?;
        Some(parse_logprobs(&node)?)
    } else {
        None
    };
    let usage = match root.optional("usage") {
        Some(usage) => parse_usage(&usage)?,
        None => Usage::default(),
    };
    Ok(Reply {
        text: text.unwrap_or_default().to_string(),
        finish_reason,
        usage,
        logprobs,
        model: model_name(&root, default_model)?,
    })
}

/// What a failed request's body says: `error.message` of an OpenAI-style error, the
/// `error` string or `message` other servers send, else the start of the body.
pub(crate) fn server_error_message(body: &[u8]) -> String {
    if let Ok(document) = serde_json::from_slice::<Value>(body) {
        let error = document.get("error");
        let message = error
            .and_then(|error| error.get("message"))
            .or_else(|| error.filter(|error| error.is_string()))
            .or_else(|| document.get("message"))
            .or_else(|| document.get("detail"))
            .and_then(Value::as_str);
        if let Some(message) = message {
            return message.to_string();
        }
    }
    if body.is_empty() { "(empty body)".to_string() } else { body_start(body) }
}

/// Builds a [`Reply`] from the events of a streamed one.
#[derive(Debug)]
pub(crate) struct StreamAssembler {
    endpoint: Endpoint,
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish_reason: Option<FinishReason>,
    usage: Option<Usage>,
    model: Option<String>,
    events: usize,
    chunks: usize,
}

impl StreamAssembler {
    pub(crate) fn new(endpoint: Endpoint) -> StreamAssembler {
        StreamAssembler {
            endpoint,
            text: String::new(),
            logprobs: Vec::new(),
            finish_reason: None,
            usage: None,
            model: None,
            events: 0,
            chunks: 0,
        }
    }

    /// Reads one event's data (not `[DONE]`); returns the piece of reply it carries,
    /// if any. An error event from the server is returned as `Err(StreamError::Server)`.
    pub(crate) fn apply(&mut self, data: &str) -> Result<Option<Chunk>, StreamError> {
        let index = self.events;
        self.events += 1;
        let in_event = |message: String| StreamError::Invalid(format!("stream event {index}: {message}"));
        let document: Value = serde_json::from_str(data).map_err(|error| {
            in_event(format!("not JSON ({error}); it starts with {}", body_start(data.as_bytes())))
        })?;
        let root = Node::root(&document);
        if let Some(error) = root.optional("error") {
            let message = match error.value {
                Value::String(text) => text.clone(),
                _ => {
                    error.optional("message").and_then(|m| m.value.as_str()).unwrap_or("(no message)").into()
                }
            };
            return Err(StreamError::Server(message));
        }
        if self.model.is_none() {
            self.model = root
                .optional("model")
                .map(|model| model.string().map(str::to_string))
                .transpose()
                .map_err(in_event)?;
        }
        if let Some(usage) = root.optional("usage") {
            self.usage = Some(parse_usage(&usage).map_err(in_event)?);
        }
        let Some(choice) = root.optional("choices").and_then(|choices| choices.optional_at(0)) else {
            // The usage-only event at the end has no choices.
            return Ok(None);
        };
        let text = match self.endpoint {
            Endpoint::Chat => choice.optional("delta").and_then(|delta| delta.optional("content")),
            Endpoint::Completions => choice.optional("text"),
        };
        let text = text.map(|text| text.string().map(str::to_string)).transpose().map_err(in_event)?;
        let logprobs = match choice.optional("logprobs") {
            Some(node) => parse_logprobs(&node).map_err(in_event)?,
            None => Vec::new(),
        };
        if let Some(reason) = choice.optional("finish_reason") {
            self.finish_reason = Some(FinishReason::parse(reason.string().map_err(in_event)?));
        }
        let text = text.unwrap_or_default();
        if text.is_empty() && logprobs.is_empty() {
            return Ok(None);
        }
        self.chunks += 1;
        self.text.push_str(&text);
        self.logprobs.extend(logprobs.iter().cloned());
        Ok(Some(Chunk { text, logprobs }))
    }

    /// Whether the server has said why generation ended.
    pub(crate) fn has_finish_reason(&self) -> bool {
        self.finish_reason.is_some()
    }

    pub(crate) fn chunks(&self) -> usize {
        self.chunks
    }

    /// The reply so far. Without usage from the server, completion tokens are counted
    /// from the log-probs (one per token) or else from the chunks (servers send one
    /// token per chunk), and the prompt's tokens are unknown (0).
    pub(crate) fn finish(self, wants_logprobs: bool, default_model: &str) -> Result<Reply, String> {
        if wants_logprobs && self.logprobs.is_empty() && !self.text.is_empty() {
            return Err("log-probs were asked for, but no stream event carried `choices[0].logprobs`".into());
        }
        let counted = if self.logprobs.is_empty() { self.chunks } else { self.logprobs.len() };
        let usage = self.usage.unwrap_or(Usage { prompt_tokens: 0, completion_tokens: counted });
        Ok(Reply {
            text: self.text,
            finish_reason: self.finish_reason.unwrap_or(FinishReason::Other("unknown".to_string())),
            usage,
            logprobs: wants_logprobs.then_some(self.logprobs),
            model: self.model.unwrap_or_else(|| default_model.to_string()),
        })
    }
}

/// Why a stream event could not be used.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// The event is not what the API promises.
    Invalid(String),
    /// The server reported an error inside the stream.
    Server(String),
}

/// Log-probs in either format: the chat API's `{content: [{token, logprob,
/// top_logprobs: [{token, logprob}]}]}` or the completions API's `{tokens,
/// token_logprobs, top_logprobs: [{token: logprob}]}`. A `null` `content` (a chunk
/// without tokens) reads as none.
fn parse_logprobs(node: &Node<'_>) -> Result<Vec<TokenLogprob>, String> {
    let Value::Object(object) = node.value else {
        return Err(format!("`{}` is not an object", node.path));
    };
    if object.contains_key("content") {
        let Some(content) = node.nullable("content")? else {
            return Ok(Vec::new());
        };
        return content
            .array()?
            .iter()
            .map(|entry| {
                let top = match entry.optional("top_logprobs") {
                    Some(top) => top
                        .array()?
                        .iter()
                        .map(|alternative| {
                            Ok(TopLogprob {
                                token: alternative.get("token")?.string()?.to_string(),
                                logprob: alternative.get("logprob")?.number()?,
                            })
                        })
                        .collect::<Result<Vec<_>, String>>()?,
                    None => Vec::new(),
                };
                Ok(TokenLogprob {
                    token: entry.get("token")?.string()?.to_string(),
                    logprob: entry.get("logprob")?.number()?,
                    top,
                })
            })
            .collect();
    }
    let tokens = node.get("tokens")?.array()?;
    let token_logprobs = node.get("token_logprobs")?.array()?;
    if token_logprobs.len() != tokens.len() {
        return Err(format!(
            "`{}.token_logprobs` has {} entries for {} tokens",
            node.path,
            token_logprobs.len(),
            tokens.len()
        ));
    }
    let top_logprobs = match node.optional("top_logprobs") {
        Some(top) => top.array()?,
        None => Vec::new(),
    };
    let mut parsed = Vec::with_capacity(tokens.len());
    for (index, (token, logprob)) in tokens.iter().zip(&token_logprobs).enumerate() {
        let mut top = Vec::new();
        if let Some(alternatives) = top_logprobs.get(index).filter(|node| !node.value.is_null()) {
            let Value::Object(map) = alternatives.value else {
                return Err(format!("`{}` is not an object of token: logprob", alternatives.path));
            };
            for (alternative, value) in map {
                let value = alternatives.child(alternative, value);
                top.push(TopLogprob { token: alternative.clone(), logprob: value.number()? });
            }
            top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
        }
        parsed.push(TokenLogprob { token: token.string()?.to_string(), logprob: logprob.number()?, top });
    }
    Ok(parsed)
}

fn parse_usage(usage: &Node<'_>) -> Result<Usage, String> {
    Ok(Usage {
        prompt_tokens: usage.get("prompt_tokens")?.count()?,
        completion_tokens: usage.get("completion_tokens")?.count()?,
    })
}

fn model_name(root: &Node<'_>, default_model: &str) -> Result<String, String> {
    match root.optional("model") {
        Some(model) => Ok(model.string()?.to_string()),
        None => Ok(default_model.to_string()),
    }
}

/// The first 200 characters of a body, quoted, for error messages.
fn body_start(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let start: String = text.chars().take(200).collect();
    if start.len() < text.len() { format!("{start:?}...") } else { format!("{start:?}") }
}

/// A value in a JSON document and its path from the root, for errors that name a field.
#[derive(Debug, Clone)]
struct Node<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> Node<'a> {
    fn root(value: &'a Value) -> Node<'a> {
        Node { value, path: String::new() }
    }

    fn child(&self, key: &str, value: &'a Value) -> Node<'a> {
        let path = if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) };
        Node { value, path }
    }

    /// A field the API promises: missing or `null` is an error.
    fn get(&self, key: &str) -> Result<Node<'a>, String> {
        match self.nullable(key)? {
            Some(node) => Ok(node),
            None => Err(format!("`{}` is null", self.child(key, self.value).path)),
        }
    }

    /// A field that must be present but may be `null`.
    fn nullable(&self, key: &str) -> Result<Option<Node<'a>>, String> {
        match self.value.get(key) {
            None => Err(format!("`{}` is missing", self.child(key, self.value).path)),
            Some(Value::Null) => Ok(None),
            Some(value) => Ok(Some(self.child(key, value))),
        }
    }

    /// A field that may be absent or `null`.
    fn optional(&self, key: &str) -> Option<Node<'a>> {
        self.value.get(key).filter(|value| !value.is_null()).map(|value| self.child(key, value))
    }

    fn at(&self, index: usize) -> Result<Node<'a>, String> {
        self.optional_at(index).ok_or_else(|| match self.value {
            Value::Array(_) => format!("`{}[{index}]` is missing", self.path),
            _ => format!("`{}` is not an array", self.path),
        })
    }

    fn optional_at(&self, index: usize) -> Option<Node<'a>> {
        let value = self.value.as_array()?.get(index)?;
        Some(Node { value, path: format!("{}[{index}]", self.path) })
    }

    fn array(&self) -> Result<Vec<Node<'a>>, String> {
        let Value::Array(items) = self.value else {
            return Err(format!("`{}` is not an array", self.path));
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(index, value)| Node { value, path: format!("{}[{index}]", self.path) })
            .collect())
    }

    fn string(&self) -> Result<&'a str, String> {
        self.value.as_str().ok_or_else(|| format!("`{}` is not a string", self.path))
    }

    fn number(&self) -> Result<f32, String> {
        self.value
            .as_f64()
            .map(|number| number as f32)
            .ok_or_else(|| format!("`{}` is not a number", self.path))
    }

    fn count(&self) -> Result<usize, String> {
        self.value
            .as_u64()
            .and_then(|count| usize::try_from(count).ok())
            .ok_or_else(|| format!("`{}` is not a count", self.path))
    }
}

#[cfg(test)]
mod tests {
    use agora_core::Message;

    use super::*;
    use crate::Sampling;

    #[test]
    fn chat_and_text_bodies_carry_what_was_asked_and_no_more() {
        let sampling =
            Sampling { seed: Some(7), top_k: Some(40), stop: vec!["\n".into()], ..Sampling::greedy(5) };
        let chat = Request::chat(vec![Message::user("hi")], sampling.clone()).with_logprobs(3);
        let body = request_body(&chat, "m", true);
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!((body["logprobs"].clone(), body["top_logprobs"].clone()), (json!(true), json!(3)));
        assert_eq!(
            (body["seed"].clone(), body["top_k"].clone(), body["stop"].clone()),
            (json!(7), json!(40), json!(["\n"]))
        );
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert!(body.get("min_p").is_none() && body.get("repetition_penalty").is_none());
        let text = request_body(&Request::text("once", Sampling::default()), "m", false);
        assert_eq!(text["prompt"], json!("once"));
        for absent in ["logprobs", "stop", "seed", "stream", "top_k", "messages"] {
            assert!(text.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn errors_name_the_missing_or_mistyped_field() {
        for (body, expected) in [
            (r#"{"choices": []}"#, "`choices[0]` is missing"),
            (r#"{"choices": [{"finish_reason": "stop"}]}"#, "`choices[0].message` is missing"),
            (
                r#"{"choices": [{"message": {}, "finish_reason": "stop"}]}"#,
                "`choices[0].message.content` is missing",
            ),
            (
                r#"{"choices": [{"message": {"content": 3}, "finish_reason": "stop"}]}"#,
                "`choices[0].message.content` is not a string",
            ),
            (r#"{"choices": {}}"#, "`choices` is not an array"),
            (
                r#"{"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": -1}}"#,
                "`usage.prompt_tokens` is not a count",
            ),
            ("<html>", "not JSON"),
        ] {
            let error = parse_reply(Endpoint::Chat, body.as_bytes(), false, "m").unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
        }
    }

    #[test]
    fn completions_logprobs_are_sorted_and_checked() {
        let body = r#"{"choices": [{"text": " a b", "finish_reason": "length", "logprobs": {
            "tokens": [" a", " b"], "token_logprobs": [-0.5, -1.0],
            "top_logprobs": [{" x": -2.0, " a": -0.5}, null]}}]}"#;
        let reply = parse_reply(Endpoint::Completions, body.as_bytes(), true, "served").unwrap();
        let logprobs = reply.logprobs.unwrap();
        assert_eq!(logprobs[0].top.iter().map(|top| top.token.as_str()).collect::<Vec<_>>(), [" a", " x"]);
        assert!(logprobs[1].top.is_empty());
        assert_eq!(
            (reply.model.as_str(), reply.finish_reason, reply.usage),
            ("served", FinishReason::Length, Usage::default())
        );
        let uneven = body.replace("[-0.5, -1.0]", "[-0.5]");
        let error = parse_reply(Endpoint::Completions, uneven.as_bytes(), true, "m").unwrap_err();
        assert!(error.contains("`choices[0].logprobs.token_logprobs` has 1 entries for 2 tokens"), "{error}");
    }

    #[test]
    fn server_error_messages_in_their_various_shapes() {
        assert_eq!(server_error_message(br#"{"error": {"message": "bad model", "type": "x"}}"#), "bad model");
        assert_eq!(server_error_message(br#"{"error": "overloaded"}"#), "overloaded");
        assert_eq!(server_error_message(br#"{"detail": "Not Found"}"#), "Not Found");
        assert_eq!(server_error_message(b"plain text"), "\"plain text\"");
        assert_eq!(server_error_message(b""), "(empty body)");
        assert!(server_error_message("y".repeat(500).as_bytes()).ends_with("\"..."));
    }
}
