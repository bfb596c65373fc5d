//! The OpenAI-compatible endpoints: request bodies become backend [`Request`]s (validated
//! against the server's limits, errors naming the field), replies become OpenAI JSON, and
//! streamed chunks become server-sent events.
//!
//! Streaming runs the backend in a task of its own that forwards events to the response
//! body through a bounded channel. When the client goes away the body is dropped, the
//! channel closes, and the task returns — dropping the backend's future, which is how a
//! [`Backend`] request is cancelled.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use agora_core::{ChatRole, Message, mix64};
use agora_llm::{Backend, Chunk, FinishReason, Reply, Request, Sampling, TokenLogprob, Usage};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::wire::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
    ChatCompletionRequest, ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, Completion, CompletionChoice,
    CompletionLogprobs, CompletionRequest, Delta, MessageContent, ModelCard, ModelList, PromptField,
    SamplingFields, StopField, UsageBody,
};

/// The most alternatives per token a client may ask for (OpenAI allows 20 in chat).
const MAX_TOP_LOGPROBS: u64 = 20;
/// `max_tokens` of `/v1/completions` when the request has none (OpenAI's default).
const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;
/// Events buffered for a slow streaming client before the backend task waits for it.
const STREAM_BUFFER_EVENTS: usize = 64;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub max_body_bytes: usize,
    pub max_tokens_limit: usize,
    pub max_concurrent_requests: usize,
    /// One permit per running generation request (streams hold theirs until they end).
    pub slots: Arc<Semaphore>,
    /// Unix seconds when the server started: the `created` of the model card.
    pub started: u64,
}

impl AppState {
    fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.slots.clone().try_acquire_owned().map_err(|_| ApiError::overloaded(self.max_concurrent_requests))
    }

    fn model(&self) -> String {
        self.backend.info().model.clone()
    }
}

pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList { object: "list", data: vec![model_card(&state)] })
}

pub async fn retrieve_model(State(state): State<AppState>, Path(model_id): Path<String>) -> Response {
    if model_id == state.model() {
        Json(model_card(&state)).into_response()
    } else {
        ApiError::not_found(
            format!("model `{model_id}` is not served here; this server serves `{}`", state.model()),
            "model_not_found",
        )
        .into_response()
    }
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint", "not_found")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        ..ApiError::not_found("this endpoint does not take that method", "method_not_allowed")
    }
}

fn model_card(state: &AppState) -> ModelCard {
    ModelCard { id: state.model(), object: "model", created: state.started, owned_by: "agora" }
}

pub async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let permit = state.admit()?;
    let body: ChatCompletionRequest = parse_body(&state, body)?;
    let call = chat_call(body, state.max_tokens_limit)?;
    let context = StreamContext::new(&state, Endpoint::Chat, &call);
    if call.stream {
        return start_stream(state.backend.clone(), call.request, context, permit).await;
    }
    let reply =
        state.backend.generate(call.request, None).await.map_err(|error| ApiError::from_backend(&error))?;
    drop(permit);
    let logprobs = reply.logprobs.as_deref().map(chat_logprobs);
    Ok(Json(ChatCompletion {
        id: context.id,
        object: "chat.completion",
        created: context.created,
        model: context.model,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage { role: "assistant", content: reply.text, refusal: None },
            logprobs,
            finish_reason: reply.finish_reason.as_str().to_string(),
        }],
        usage: usage_body(reply.usage),
    })
    .into_response())
}

pub async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let permit = state.admit()?;
    let body: CompletionRequest = parse_body(&state, body)?;
    let call = completion_call(body, state.max_tokens_limit)?;
    let context = StreamContext::new(&state, Endpoint::Completion, &call);
    if call.stream {
        return start_stream(state.backend.clone(), call.request, context, permit).await;
    }
    let reply =
        state.backend.generate(call.request, None).await.map_err(|error| ApiError::from_backend(&error))?;
    drop(permit);
    let logprobs = reply.logprobs.as_deref().map(|tokens| completion_logprobs(tokens, 0));
    Ok(Json(Completion {
        id: context.id,
        object: "text_completion",
        created: context.created,
        model: context.model,
        choices: vec![CompletionChoice {
            index: 0,
            text: reply.text,
            logprobs,
            finish_reason: Some(reply.finish_reason.as_str().to_string()),
        }],
        usage: Some(usage_body(reply.usage)),
    })
    .into_response())
}

/// A request body with the shared sampling fields (which every generation request has).
trait WithSampling: DeserializeOwned {
    fn set_sampling(&mut self, sampling: SamplingFields);
}

impl WithSampling for ChatCompletionRequest {
    fn set_sampling(&mut self, sampling: SamplingFields) {
        self.sampling = sampling;
    }
}

impl WithSampling for CompletionRequest {
    fn set_sampling(&mut self, sampling: SamplingFields) {
        self.sampling = sampling;
    }
}

/// Reads a JSON body; errors say which field is wrong (`messages[0].role: ...`) or where
/// the JSON breaks.
fn parse_body<T: WithSampling>(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.max_body_bytes)
        } else {
            ApiError::bad_request(None, format!("cannot read the request body: {}", rejection.body_text()))
        }
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::bad_request(None, format!("the request body is not valid JSON: {error}"))
    })?;
    let mut body: T = from_json_value(&value)?;
    body.set_sampling(from_json_value(&value)?);
    Ok(body)
}

fn from_json_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.inner();
        if path == "." {
            ApiError::bad_request(None, format!("invalid request body: {inner}"))
        } else {
            ApiError::bad_request(Some(&path), format!("invalid request body: `{path}`: {inner}"))
        }
    })
}

/// A validated request, ready for the backend.
#[derive(Debug)]
struct Call {
    request: Request,
    stream: bool,
    include_usage: bool,
}

fn chat_call(body: ChatCompletionRequest, max_tokens_limit: usize) -> Result<Call, ApiError> {
    if body.messages.is_empty() {
        return Err(ApiError::bad_request(Some("messages"), "`messages` must hold at least one message"));
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for (index, message) in body.messages.into_iter().enumerate() {
        let param = format!("messages[{index}]");
        let role = match message.role.as_str() {
            "system" | "developer" => ChatRole::System,
            "user" => ChatRole::User,
            "assistant" => ChatRole::Assistant,
            other => {
                return Err(ApiError::bad_request(
                    Some(&format!("{param}.role")),
                    format!(
                        "`{param}.role` is `{other}`; agora serves system, developer, user and assistant messages"
                    ),
                ));
            }
        };
        let content = match message.content {
            None => String::new(),
            Some(MessageContent::Text(text)) => text,
            Some(MessageContent::Parts(parts)) => {
                let mut text = String::new();
                for (part_index, part) in parts.into_iter().enumerate() {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(part_text)) => text.push_str(&part_text),
                        (kind, _) => {
                            let part_param = format!("{param}.content[{part_index}]");
                            return Err(ApiError::bad_request(
                                Some(&part_param),
                                format!(
                                    "`{part_param}` is a `{kind}` part; only text parts with a `text` field are served"
                                ),
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(Message::new(role, content));
    }
    let top_logprobs = match (body.logprobs.unwrap_or(false), body.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::bad_request(Some("top_logprobs"), "`top_logprobs` needs `logprobs: true`"));
        }
        (false, None) => None,
        (true, top) => Some(top_logprobs_count("top_logprobs", top.unwrap_or(0))?),
    };
    let max_tokens = body.max_completion_tokens.map(|value| ("max_completion_tokens", value));
    let sampling = sampling(&body.sampling, max_tokens, max_tokens_limit, max_tokens_limit)?;
    let mut request = Request::chat(messages, sampling);
    request.logprobs = top_logprobs;
    Ok(Call {
        request,
        stream: body.sampling.stream.unwrap_or(false),
        include_usage: include_usage(&body.sampling),
    })
}

fn completion_call(body: CompletionRequest, max_tokens_limit: usize) -> Result<Call, ApiError> {
    let prompt = match body.prompt {
        PromptField::One(text) => text,
        PromptField::Many(items) => match <[serde_json::Value; 1]>::try_from(items) {
            Ok([serde_json::Value::String(text)]) => text,
            Ok(_) => {
                return Err(ApiError::bad_request(
                    Some("prompt"),
                    "`prompt` must be a string or a list of one string (token-id prompts are not served)",
                ));
            }
            Err(items) => {
                return Err(ApiError::bad_request(
                    Some("prompt"),
                    format!(
                        "`prompt` is a list of {} prompts; agora serves one prompt per request",
                        items.len()
                    ),
                ));
            }
        },
    };
    if body.echo.unwrap_or(false) {
        return Err(ApiError::bad_request(Some("echo"), "`echo: true` is not supported"));
    }
    if body.best_of.is_some_and(|best_of| best_of != 1) {
        return Err(ApiError::bad_request(Some("best_of"), "`best_of` must be 1 (or left out)"));
    }
    if body.suffix.as_deref().is_some_and(|suffix| !suffix.is_empty()) {
        return Err(ApiError::bad_request(Some("suffix"), "`suffix` (insertion) is not supported"));
    }
    let logprobs = body.logprobs.map(|top| top_logprobs_count("logprobs", top)).transpose()?;
    let sampling = sampling(&body.sampling, None, DEFAULT_COMPLETION_MAX_TOKENS, max_tokens_limit)?;
    let mut request = Request::text(prompt, sampling);
    request.logprobs = logprobs;
    Ok(Call {
        request,
        stream: body.sampling.stream.unwrap_or(false),
        include_usage: include_usage(&body.sampling),
    })
}

fn top_logprobs_count(param: &str, value: u64) -> Result<usize, ApiError> {
    if value > MAX_TOP_LOGPROBS {
        return Err(ApiError::bad_request(
            Some(param),
            format!("`{param}` is {value}; at most {MAX_TOP_LOGPROBS} alternatives per token are served"),
        ));
    }
    Ok(value as usize)
}

fn include_usage(fields: &SamplingFields) -> bool {
    fields.stream_options.as_ref().is_some_and(|options| options.include_usage)
}

/// The shared sampling fields as a backend's [`Sampling`]. `newer_max_tokens` is chat's
/// `max_completion_tokens`, which wins over `max_tokens`.
fn sampling(
    fields: &SamplingFields,
    newer_max_tokens: Option<(&str, u64)>,
    default_max_tokens: usize,
    max_tokens_limit: usize,
) -> Result<Sampling, ApiError> {
    if let Some(n) = fields.n
        && n != 1
    {
        return Err(ApiError::bad_request(
            Some("n"),
            format!("`n` is {n}; agora serves one choice per request (n = 1)"),
        ));
    }
    let max_tokens = match newer_max_tokens.or(fields.max_tokens.map(|value| ("max_tokens", value))) {
        None => default_max_tokens,
        Some((param, 0)) => {
            return Err(ApiError::bad_request(Some(param), format!("`{param}` must be at least 1")));
        }
        Some((param, value)) if value > max_tokens_limit as u64 => {
            return Err(ApiError::bad_request(
                Some(param),
                format!("`{param}` is {value}, over this server's limit of {max_tokens_limit}"),
            ));
        }
        Some((_, value)) => value as usize,
    };
    let temperature = fields.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            Some("temperature"),
            format!("`temperature` is {temperature}; it must be between 0 and 2"),
        ));
    }
    let top_p = fields.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request(
            Some("top_p"),
            format!("`top_p` is {top_p}; it must be in (0, 1]"),
        ));
    }
    let stop = match &fields.stop {
        None => Vec::new(),
        Some(StopField::One(stop)) => vec![stop.clone()],
        Some(StopField::Many(stops)) => stops.clone(),
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad_request(Some("stop"), "`stop` holds an empty string"));
    }
    let seed = match &fields.seed {
        None => None,
        Some(number) => match (number.as_u64(), number.as_i64()) {
            (Some(seed), _) => Some(seed),
            // Two's complement keeps distinct negative seeds distinct.
            (None, Some(seed)) => Some(seed as u64),
            (None, None) => {
                return Err(ApiError::bad_request(
                    Some("seed"),
                    format!("`seed` is {number}; it must be an integer"),
                ));
            }
        },
    };
    Ok(Sampling {
        temperature,
        top_p,
        max_tokens,
        stop,
        seed,
        top_k: fields.top_k.map(|top_k| top_k as usize),
        min_p: fields.min_p,
        repetition_penalty: fields.repetition_penalty,
    })
}

fn usage_body(usage: Usage) -> UsageBody {
    UsageBody {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.total_tokens(),
    }
}

/// OpenAI's JSON has no infinities; like vLLM, report an impossible token as -9999.
fn finite(logprob: f32) -> f32 {
    if logprob.is_finite() { logprob } else { -9999.0 }
}

fn chat_logprobs(tokens: &[TokenLogprob]) -> ChatLogprobs {
    let content = tokens
        .iter()
        .map(|token| ChatTokenLogprob {
            token: token.token.clone(),
            logprob: finite(token.logprob),
            bytes: token.token.as_bytes().to_vec(),
            top_logprobs: token
                .top
                .iter()
                .map(|top| ChatTopLogprob {
                    token: top.token.clone(),
                    logprob: finite(top.logprob),
                    bytes: top.token.as_bytes().to_vec(),
                })
                .collect(),
        })
        .collect();
    ChatLogprobs { content, refusal: None }
}

/// The completions layout; `text_offset` counts characters from the start of the generated
/// text, beginning at `first_offset` (where a streamed chunk starts).
fn completion_logprobs(tokens: &[TokenLogprob], first_offset: usize) -> CompletionLogprobs {
    let mut logprobs = CompletionLogprobs::default();
    let mut offset = first_offset;
    for token in tokens {
        logprobs.tokens.push(token.token.clone());
        logprobs.token_logprobs.push(finite(token.logprob));
        logprobs.top_logprobs.push(
            token
                .top
                .iter()
                .map(|top| (top.token.clone(), serde_json::Value::from(finite(top.logprob))))
                .collect(),
        );
        logprobs.text_offset.push(offset);
        offset += token.token.chars().count();
    }
    logprobs
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

/// What every event of one streamed reply repeats.
#[derive(Debug)]
struct StreamContext {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Characters of generated text sent so far (completions' `text_offset`).
    sent_characters: usize,
    /// The text sent so far, to send what a backend did not stream at the end.
    sent_text: String,
}

impl StreamContext {
    fn new(state: &AppState, endpoint: Endpoint, call: &Call) -> StreamContext {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        StreamContext {
            endpoint,
            id: new_id(prefix),
            created: unix_seconds(),
            model: state.model(),
            include_usage: call.include_usage,
            sent_characters: 0,
            sent_text: String::new(),
        }
    }

    /// Chat streams open with the assistant's role and empty content, as OpenAI's do.
    fn opening(&self) -> Option<Event> {
        match self.endpoint {
            Endpoint::Chat => Some(self.chat_chunk(
                Delta { role: Some("assistant"), content: Some(String::new()) },
                None,
                None,
            )),
            Endpoint::Completion => None,
        }
    }

    fn piece(&mut self, chunk: &Chunk, wants_logprobs: bool) -> Event {
        let event = match self.endpoint {
            Endpoint::Chat => {
                let logprobs = wants_logprobs.then(|| chat_logprobs(&chunk.logprobs));
                self.chat_chunk(Delta { role: None, content: Some(chunk.text.clone()) }, logprobs, None)
            }
            Endpoint::Completion => {
                let logprobs =
                    wants_logprobs.then(|| completion_logprobs(&chunk.logprobs, self.sent_characters));
                self.completion_chunk(chunk.text.clone(), logprobs, None)
            }
        };
        self.sent_characters += chunk.text.chars().count();
        self.sent_text.push_str(&chunk.text);
        event
    }

    /// The events after the last piece: what the backend did not stream (if anything),
    /// the finish reason, the usage chunk when asked for.
    fn closing(&mut self, reply: Reply, wants_logprobs: bool) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(unsent) = reply.text.strip_prefix(self.sent_text.as_str())
            && !unsent.is_empty()
        {
            // Only a backend that never streamed gets here; its log-probs go with the text
            // when none were sent.
            let logprobs = if self.sent_text.is_empty() {
                reply.logprobs.clone().unwrap_or_default()
            } else {
                Vec::new()
            };
            let chunk = Chunk { text: unsent.to_string(), logprobs };
            events.push(self.piece(&chunk, wants_logprobs));
        }
        let finish_reason = Some(finish_reason(&reply.finish_reason));
        events.push(match self.endpoint {
            Endpoint::Chat => self.chat_chunk(Delta::default(), None, finish_reason),
            Endpoint::Completion => self.completion_chunk(String::new(), None, finish_reason),
        });
        if self.include_usage {
            let usage = Some(usage_body(reply.usage));
            events.push(match self.endpoint {
                Endpoint::Chat => json_event(&ChatCompletionChunk {
                    id: self.id.clone(),
                    object: "chat.completion.chunk",
                    created: self.created,
                    model: self.model.clone(),
                    choices: Vec::new(),
                    usage,
                }),
                Endpoint::Completion => json_event(&Completion {
                    id: self.id.clone(),
                    object: "text_completion",
                    created: self.created,
                    model: self.model.clone(),
                    choices: Vec::new(),
                    usage,
                }),
            });
        }
        events
    }

    fn chat_chunk(
        &self,
        delta: Delta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<String>,
    ) -> Event {
        json_event(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChatChunkChoice { index: 0, delta, logprobs, finish_reason }],
            usage: None,
        })
    }

    fn completion_chunk(
        &self,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish_reason: Option<String>,
    ) -> Event {
        json_event(&Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![CompletionChoice { index: 0, text, logprobs, finish_reason }],
            usage: None,
        })
    }
}

fn finish_reason(reason: &FinishReason) -> String {
    reason.as_str().to_string()
}

fn json_event<T: Serialize>(value: &T) -> Event {
    match serde_json::to_string(value) {
        Ok(json) => Event::default().data(json),
        // Our reply types always serialize; should one not, the client sees an error event
        // instead of a silently missing piece.
        Err(error) => error_event(&ApiError::internal(format!("cannot serialize a reply chunk: {error}"))),
    }
}

fn error_event(error: &ApiError) -> Event {
    let json = serde_json::to_string(&error.body()).unwrap_or_else(|_| {
        r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#.into()
    });
    Event::default().data(json)
}

/// Starts the backend task of a streamed reply and returns the SSE response that carries
/// its events. The response waits for the first piece of text (or the end of the reply),
/// so that a request the backend refuses at once (a prompt longer than the context) gets
/// a proper error status instead of a stream that holds only an error.
async fn start_stream(
    backend: Arc<dyn Backend>,
    request: Request,
    context: StreamContext,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let (events, receiver) = mpsc::channel(STREAM_BUFFER_EVENTS);
    let (started, has_started) = oneshot::channel();
    tokio::spawn(run_stream(backend, request, context, events, started, permit));
    match has_started.await {
        Ok(Ok(())) => {
            let body = ReceiverStream::new(receiver).map(Ok::<Event, Infallible>);
            Ok(Sse::new(body).keep_alive(KeepAlive::default()).into_response())
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(ApiError::internal("the streaming task stopped before the reply began")),
    }
}

async fn run_stream(
    backend: Arc<dyn Backend>,
    request: Request,
    mut context: StreamContext,
    events: mpsc::Sender<Event>,
    started: oneshot::Sender<Result<(), ApiError>>,
    permit: OwnedSemaphorePermit,
) {
    // Held until the stream ends, so streams count against max_concurrent_requests.
    let _permit = permit;
    let mut started = Some(started);
    let wants_logprobs = request.logprobs.is_some();
    let (sink, mut chunks) = mpsc::unbounded_channel::<Chunk>();
    let mut generation = backend.generate(request, Some(sink));
    // The channel is empty and its receiver held, so this does not wait.
    if let Some(opening) = context.opening()
        && events.send(opening).await.is_err()
    {
        return;
    }
    let result = loop {
        tokio::select! {
            biased;
            // The client went away: returning drops `generation`, which cancels it.
            () = events.closed() => return,
            Some(chunk) = chunks.recv() => {
                announce_start(&mut started);
                if events.send(context.piece(&chunk, wants_logprobs)).await.is_err() {
                    return;
                }
            }
            result = &mut generation => break result,
        }
    };
    let mut closing = Vec::new();
    while let Ok(chunk) = chunks.try_recv() {
        closing.push(context.piece(&chunk, wants_logprobs));
    }
    match result {
        Ok(reply) => closing.extend(context.closing(reply, wants_logprobs)),
        Err(error) => {
            eprintln!("agora serve: a streamed request failed: {error}");
            let api_error = ApiError::from_backend(&error);
            if closing.is_empty()
                && let Some(started) = started.take()
            {
                // Nothing sent yet: the client gets an error status, not a stream.
                let _ = started.send(Err(api_error));
                return;
            }
            closing.push(error_event(&api_error));
        }
    }
    announce_start(&mut started);
    closing.push(Event::default().data("[DONE]"));
    for event in closing {
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// Tells the handler waiting in [`start_stream`] that the stream has begun (once).
fn announce_start(started: &mut Option<oneshot::Sender<Result<(), ApiError>>>) {
    if let Some(started) = started.take() {
        let _ = started.send(Ok(()));
    }
}

pub fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// `chatcmpl-…` / `cmpl-…`: unique within a process (a counter) and unlikely to repeat
/// across restarts (mixed with the clock).
fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos() as u64);
    format!("{prefix}-{:016x}{:08x}", mix64(nanos ^ mix64(count)), count as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: WithSampling>(json: &str) -> T {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let mut body: T = from_json_value(&value).unwrap();
        body.set_sampling(from_json_value(&value).unwrap());
        body
    }

    fn chat_body(json: &str) -> ChatCompletionRequest {
        parse(json)
    }

    #[test]
    fn chat_requests_map_onto_backend_requests() {
        let body = chat_body(
            r#"{"model": "x", "messages": [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
                "max_tokens": 10, "max_completion_tokens": 5, "temperature": 0, "stop": "\n", "seed": -1,
                "logprobs": true, "top_logprobs": 3, "stream": true, "stream_options": {"include_usage": true},
                "frequency_penalty": 0.5}"#,
        );
        let call = chat_call(body, 100).unwrap();
        assert!(call.stream && call.include_usage);
        assert_eq!(call.request.logprobs, Some(3));
        let sampling = &call.request.sampling;
        assert_eq!((sampling.max_tokens, sampling.temperature, sampling.seed), (5, 0.0, Some(u64::MAX)));
        assert_eq!(sampling.stop, vec!["\n".to_string()]);
        assert_eq!(
            call.request.prompt,
            agora_llm::Prompt::Chat(vec![Message::system("be brief"), Message::user("hi there")])
        );
    }

    #[test]
    fn invalid_chat_requests_name_the_field() {
        for (json, param) in [
            (r#"{"messages": []}"#, "messages"),
            (r#"{"messages": [{"role": "tool", "content": "x"}]}"#, "messages[0].role"),
            (
                r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                "messages[0].content[0]",
            ),
            (r#"{"messages": [{"role": "user", "content": "x"}], "n": 2}"#, "n"),
            (r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 101}"#, "max_tokens"),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}"#,
                "max_completion_tokens",
            ),
            (r#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#, "top_logprobs"),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}"#,
                "top_logprobs",
            ),
            (r#"{"messages": [{"role": "user", "content": "x"}], "temperature": 3}"#, "temperature"),
            (r#"{"messages": [{"role": "user", "content": "x"}], "top_p": 0}"#, "top_p"),
        ] {
            let error = chat_call(chat_body(json), 100).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{json}");
            assert_eq!(error.param.as_deref(), Some(param), "{json}: {}", error.message);
            assert!(error.message.contains(param), "{json}: {}", error.message);
        }
    }

    #[test]
    fn completion_prompts_are_one_string() {
        let call = |json: &str| completion_call(parse(json), 100);
        let one = call(r#"{"prompt": ["Once upon"], "logprobs": 2}"#).unwrap();
        assert_eq!(one.request.prompt, agora_llm::Prompt::Text("Once upon".into()));
        assert_eq!(
            (one.request.logprobs, one.request.sampling.max_tokens),
            (Some(2), DEFAULT_COMPLETION_MAX_TOKENS)
        );
        for (json, param) in [
            (r#"{"prompt": ["a", "b"]}"#, "prompt"),
            (r#"{"prompt": [1, 2, 3]}"#, "prompt"),
            (r#"{"prompt": "a", "echo": true}"#, "echo"),
            (r#"{"prompt": "a", "best_of": 3}"#, "best_of"),
            (r#"{"prompt": "a", "logprobs": 50}"#, "logprobs"),
        ] {
            let error = call(json).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(param), "{json}: {}", error.message);
        }
    }

    #[test]
    fn completion_logprobs_are_parallel_lists_with_offsets() {
        let token = |text: &str, logprob: f32| TokenLogprob {
            token: text.to_string(),
            logprob,
            top: vec![agora_llm::TopLogprob { token: text.to_string(), logprob }],
        };
        let logprobs = completion_logprobs(&[token("Hé", -0.5), token(" lo", f32::NEG_INFINITY)], 4);
        assert_eq!(logprobs.tokens, vec!["Hé", " lo"]);
        assert_eq!(logprobs.token_logprobs, vec![-0.5, -9999.0]);
        assert_eq!(logprobs.text_offset, vec![4, 6]);
        assert_eq!(serde_json::to_string(&logprobs.top_logprobs[0]).unwrap(), r#"{"Hé":-0.5}"#);
    }

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let first = new_id("chatcmpl");
        let second = new_id("chatcmpl");
        assert!(first.starts_with("chatcmpl-") && first != second);
    }
}
