//! The OpenAI-compatible HTTP backend: agora's requests sent to `/chat/completions` and
//! `/completions` of llama.cpp's server, vLLM, Ollama, `agora serve` or a hosted API.
//!
//! What it promises:
//! - at most `max_concurrency` requests in flight (the rest wait for a permit; waiting
//!   does not count against the timeout);
//! - retries with exponential backoff and full jitter on 408, 429, 5xx, connection
//!   errors, dropped connections, truncated bodies and timeouts, waiting what
//!   `Retry-After` (or OpenAI's `retry-after-ms`) asks, capped by `max_backoff`; a
//!   streamed request is retried only until its first chunk has reached the caller, since
//!   a retry after that would send the caller text twice;
//! - an immediate [`LlmError::Status`] with the server's own message on other 4xx, an
//!   [`LlmError::InvalidReply`] naming the field on a reply that breaks the API;
//! - every attempt bounded by `timeout`, so no request hangs;
//! - the API key goes only into the `Authorization` header: it is printed as `***`,
//!   never part of [`BackendInfo`], and blanked out of any error text (servers do echo
//!   keys back in "invalid key" messages).

mod sse;
mod wire;

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agora_core::{SplitMix64, mix64};
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::Value;
use tokio::sync::Semaphore;

use self::sse::SseDecoder;
use self::wire::{Endpoint, StreamAssembler, StreamError};
use crate::{
    Backend, BackendInfo, BackendSpec, BoxFuture, Chunk, LlmError, Reply, Request, Result, StreamSink,
};

/// A secret API key. It prints as `***` (Debug and Display alike), so a config or a
/// backend can be logged whole.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The environment variables [`ApiKey::from_env`] reads, first match wins.
    pub const ENVIRONMENT_VARIABLES: [&'static str; 2] = ["AGORA_API_KEY", "OPENAI_API_KEY"];

    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The key from `AGORA_API_KEY`, else `OPENAI_API_KEY`; `None` when neither is set
    /// to a non-empty value.
    pub fn from_env() -> Option<ApiKey> {
        ApiKey::ENVIRONMENT_VARIABLES.iter().find_map(|name| {
            let key = std::env::var(name).ok()?;
            let key = key.trim();
            (!key.is_empty()).then(|| ApiKey(key.to_string()))
        })
    }

    /// The key itself, for the one place that must send it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("***")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("***")
    }
}

/// Where the server is and how patiently to talk to it.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// The API base, e.g. `http://127.0.0.1:8080/v1`; the routes are appended to it.
    pub base_url: String,
    /// The model name sent with every request.
    pub model: String,
    /// Sent as `Authorization: Bearer KEY` when set.
    pub api_key: Option<ApiKey>,
    /// The most one attempt may take, from sending the request to the end of the reply
    /// (the whole stream, when streaming).
    pub timeout: Duration,
    /// The most opening a connection may take.
    pub connect_timeout: Duration,
    /// Requests in flight at once; more wait their turn.
    pub max_concurrency: usize,
    /// Retries after the first attempt (so at most `max_retries + 1` attempts).
    pub max_retries: u32,
    /// The backoff before the first retry is drawn from `[0, initial_backoff]`, and the
    /// range doubles with every retry...
    pub initial_backoff: Duration,
    /// ...up to this; it also caps what `Retry-After` may ask.
    pub max_backoff: Duration,
}

impl Default for OpenAiConfig {
    fn default() -> OpenAiConfig {
        OpenAiConfig {
            base_url: "http://127.0.0.1:8080/v1".to_string(),
            model: "default".to_string(),
            api_key: None,
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            max_concurrency: 8,
            max_retries: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl OpenAiConfig {
    /// The defaults for the server at `base_url` serving `model`.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> OpenAiConfig {
        OpenAiConfig { base_url: base_url.into(), model: model.into(), ..OpenAiConfig::default() }
    }
}

/// A [`Backend`] that sends requests to an OpenAI-compatible server.
pub struct OpenAiBackend {
    info: BackendInfo,
    config: OpenAiConfig,
    /// `base_url` without a trailing `/`.
    base_url: String,
    client: reqwest::Client,
    authorization: Option<HeaderValue>,
    permits: Semaphore,
    jitter: Mutex<SplitMix64>,
}

impl fmt::Debug for OpenAiBackend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("OpenAiBackend")
            .field("info", &self.info)
            .field("config", &self.config)
            .finish()
    }
}

impl OpenAiBackend {
    pub fn new(config: OpenAiConfig) -> Result<OpenAiBackend> {
        let base_url = config.base_url.trim_end_matches('/').to_string();
        let spec =
            BackendSpec::OpenAi { base_url: base_url.clone(), model: config.model.clone() }.to_string();
        let spec_error = |message: String| LlmError::Spec { spec: spec.clone(), message };
        let parsed = reqwest::Url::parse(&base_url)
            .map_err(|error| spec_error(format!("the base URL does not parse: {error}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(spec_error("the base URL must start with http:// or https://".to_string()));
        }
        if config.model.is_empty() {
            return Err(spec_error("the model name is empty".to_string()));
        }
        let authorization = match &config.api_key {
            Some(key) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())).map_err(|_| {
                        spec_error("the API key holds characters an HTTP header cannot carry".to_string())
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("agora/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| spec_error(format!("cannot set up the HTTP client: {error}")))?;
        let info = BackendInfo { kind: "openai".to_string(), spec, model: config.model.clone() };
        // A different jitter sequence per backend and per process (time, process id and a
        // counter), so that clients that failed together do not retry together.
        let now =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_nanos() as u64).unwrap_or(0);
        static BACKENDS_OPENED: AtomicU64 = AtomicU64::new(0);
        let opened = BACKENDS_OPENED.fetch_add(1, Ordering::Relaxed);
        let jitter = Mutex::new(SplitMix64::new(mix64(now ^ u64::from(std::process::id())) ^ mix64(opened)));
        let permits = Semaphore::new(config.max_concurrency.max(1));
        Ok(OpenAiBackend { info, config, base_url, client, authorization, permits, jitter })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    async fn run(&self, request: Request, stream: Option<StreamSink>) -> Result<Reply> {
        let endpoint = Endpoint::of(&request.prompt);
        let url = format!("{}/{}", self.base_url, endpoint.path());
        let body = wire::request_body(&request, &self.config.model, stream.is_some());
        let exchange =
            Exchange { url: &url, body: &body, endpoint, wants_logprobs: request.logprobs.is_some() };
        let attempts = self.config.max_retries.saturating_add(1);
        let mut chunks_sent = false;
        let mut attempt = 1;
        loop {
            let failure = match self.attempt(&exchange, stream.as_ref(), &mut chunks_sent).await {
                Ok(reply) => return Ok(reply),
                Err(failure) => failure,
            };
            let (error, retry_after) = match failure {
                Failure::Final(error) => return Err(self.redact(error)),
                Failure::Retryable { error, retry_after } => (error, retry_after),
            };
            if attempt >= attempts || chunks_sent {
                return Err(self.redact(gave_up(error, attempt, chunks_sent)));
            }
            let wait = self.backoff(attempt - 1, retry_after);
            match &stream {
                // A caller that stopped listening should not wait out a backoff.
                Some(sink) => tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = sink.closed() => return Err(LlmError::Cancelled),
                },
                None => tokio::time::sleep(wait).await,
            }
            attempt += 1;
        }
    }

    /// One try, bounded by the timeout once a permit is held.
    async fn attempt(
        &self,
        exchange: &Exchange<'_>,
        stream: Option<&StreamSink>,
        chunks_sent: &mut bool,
    ) -> Result<Reply, Failure> {
        let _permit = self.permits.acquire().await.map_err(|_| Failure::Final(LlmError::Cancelled))?;
        let timeout = self.config.timeout;
        match tokio::time::timeout(timeout, self.exchange(exchange, stream, chunks_sent)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Retryable {
                error: LlmError::Transport {
                    url: exchange.url.to_string(),
                    message: format!("timed out after {} s", timeout.as_secs_f64()),
                },
                retry_after: None,
            }),
        }
    }

    async fn exchange(
        &self,
        exchange: &Exchange<'_>,
        stream: Option<&StreamSink>,
        chunks_sent: &mut bool,
    ) -> Result<Reply, Failure> {
        let url = exchange.url;
        let mut builder = self.client.post(url).json(exchange.body);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        if stream.is_some() {
            builder = builder.header(ACCEPT, "text/event-stream");
        }
        let response = builder.send().await.map_err(|error| transport_failure(url, error))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers(), SystemTime::now());
            let message = match response.bytes().await {
                Ok(body) => wire::server_error_message(&body),
                Err(error) => format!("(the error body could not be read: {})", describe(error)),
            };
            let error = LlmError::Status { url: url.to_string(), status: status.as_u16(), message };
            return Err(if is_retryable(status) {
                Failure::Retryable { error, retry_after }
            } else {
                Failure::Final(error)
            });
        }
        let is_event_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        match stream {
            Some(sink) if is_event_stream => self.read_stream(exchange, response, sink, chunks_sent).await,
            _ => {
                let body = response.bytes().await.map_err(|error| transport_failure(url, error))?;
                let reply =
                    wire::parse_reply(exchange.endpoint, &body, exchange.wants_logprobs, &self.config.model)
                        .map_err(|message| invalid_reply(url, message))?;
                // A server that ignored `stream: true` still streams, in one piece.
                if let Some(sink) = stream {
                    let chunk = Chunk {
                        text: reply.text.clone(),
                        logprobs: reply.logprobs.clone().unwrap_or_default(),
                    };
                    *chunks_sent = true;
                    sink.send(chunk).map_err(|_| Failure::Final(LlmError::Cancelled))?;
                }
                Ok(reply)
            }
        }
    }

    async fn read_stream(
        &self,
        exchange: &Exchange<'_>,
        response: reqwest::Response,
        sink: &StreamSink,
        chunks_sent: &mut bool,
    ) -> Result<Reply, Failure> {
        let url = exchange.url;
        let mut decoder = SseDecoder::default();
        let mut assembler = StreamAssembler::new(exchange.endpoint);
        let mut body = response.bytes_stream();
        let finished = loop {
            let next = tokio::select! {
                next = body.next() => next,
                () = sink.closed() => return Err(Failure::Final(LlmError::Cancelled)),
            };
            let events = match next {
                Some(Ok(bytes)) => decoder.push(&bytes).map_err(|message| invalid_reply(url, message))?,
                Some(Err(error)) => return Err(transport_failure(url, error)),
                None => {
                    let last = decoder.finish().map_err(|message| invalid_reply(url, message))?;
                    let done = last.as_deref() == Some("[DONE]");
                    if let Some(data) = last.filter(|_| !done) {
                        forward_event(url, &mut assembler, &data, sink, chunks_sent)?;
                    }
                    break done;
                }
            };
            if forward_events(url, &mut assembler, events, sink, chunks_sent)? {
                break true;
            }
        };
        // Some servers close the stream after the finishing event without `[DONE]`;
        // the reply is whole then. Without a finish reason it was cut short.
        if !finished && !assembler.has_finish_reason() {
            return Err(Failure::Retryable {
                error: LlmError::Transport {
                    url: url.to_string(),
                    message: format!(
                        "the event stream ended before `data: [DONE]`, after {} chunks",
                        assembler.chunks()
                    ),
                },
                retry_after: None,
            });
        }
        assembler
            .finish(exchange.wants_logprobs, &self.config.model)
            .map_err(|message| invalid_reply(url, message))
    }

    /// Full jitter: uniform in `[0, min(max_backoff, initial_backoff * 2^retry_index)]`,
    /// unless the server said how long to wait.
    fn backoff(&self, retry_index: u32, retry_after: Option<Duration>) -> Duration {
        let max_backoff = self.config.max_backoff;
        if let Some(retry_after) = retry_after {
            return retry_after.min(max_backoff);
        }
        let ceiling =
            self.config.initial_backoff.saturating_mul(2u32.saturating_pow(retry_index)).min(max_backoff);
        // A poisoned lock only means another thread panicked mid-draw; any value will do.
        let fraction = match self.jitter.lock() {
            Ok(mut jitter) => jitter.next_f64(),
            Err(poisoned) => poisoned.into_inner().next_f64(),
        };
        ceiling.mul_f64(fraction)
    }

    /// Blanks the API key out of an error's text.
    fn redact(&self, error: LlmError) -> LlmError {
        let Some(key) = self.config.api_key.as_ref().map(ApiKey::expose_secret).filter(|key| !key.is_empty())
        else {
            return error;
        };
        let clean = |text: String| text.replace(key, "***");
        match error {
            LlmError::Status { url, status, message } => {
                LlmError::Status { url: clean(url), status, message: clean(message) }
            }
            LlmError::Transport { url, message } => {
                LlmError::Transport { url: clean(url), message: clean(message) }
            }
            LlmError::InvalidReply { url, message } => {
                LlmError::InvalidReply { url: clean(url), message: clean(message) }
            }
            LlmError::InvalidRequest(message) => LlmError::InvalidRequest(clean(message)),
            LlmError::Model(message) => LlmError::Model(clean(message)),
            LlmError::Spec { spec, message } => LlmError::Spec { spec: clean(spec), message: clean(message) },
            LlmError::Cancelled => LlmError::Cancelled,
        }
    }
}

impl Backend for OpenAiBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn generate(&self, request: Request, stream: Option<StreamSink>) -> BoxFuture<'_, Result<Reply>> {
        Box::pin(self.run(request, stream))
    }
}

/// What one request sends, the same for every attempt.
struct Exchange<'a> {
    url: &'a str,
    body: &'a Value,
    endpoint: Endpoint,
    wants_logprobs: bool,
}

/// How an attempt failed.
enum Failure {
    /// Another attempt may succeed; `retry_after` is what the server asked to wait.
    Retryable {
        error: LlmError,
        retry_after: Option<Duration>,
    },
    Final(LlmError),
}

/// Sends the chunks of a batch of events; `true` once `[DONE]` arrives.
fn forward_events(
    url: &str,
    assembler: &mut StreamAssembler,
    events: Vec<String>,
    sink: &StreamSink,
    chunks_sent: &mut bool,
) -> Result<bool, Failure> {
    for data in events {
        if data == "[DONE]" {
            return Ok(true);
        }
        forward_event(url, assembler, &data, sink, chunks_sent)?;
    }
    Ok(false)
}

fn forward_event(
    url: &str,
    assembler: &mut StreamAssembler,
    data: &str,
    sink: &StreamSink,
    chunks_sent: &mut bool,
) -> Result<(), Failure> {
    match assembler.apply(data) {
        Ok(Some(chunk)) => {
            *chunks_sent = true;
            sink.send(chunk).map_err(|_| Failure::Final(LlmError::Cancelled))
        }
        Ok(None) => Ok(()),
        Err(StreamError::Invalid(message)) => Err(invalid_reply(url, message)),
        // Like a 5xx: worth another attempt if nothing has reached the caller yet.
        Err(StreamError::Server(message)) => Err(Failure::Retryable {
            error: LlmError::Transport {
                url: url.to_string(),
                message: format!("the server reported an error in the event stream: {message}"),
            },
            retry_after: None,
        }),
    }
}

fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

fn invalid_reply(url: &str, message: String) -> Failure {
    Failure::Final(LlmError::InvalidReply { url: url.to_string(), message })
}

/// Connection errors, dropped connections and truncated bodies are all worth retrying;
/// only a request reqwest could not even build is not.
fn transport_failure(url: &str, error: reqwest::Error) -> Failure {
    let is_builder = error.is_builder();
    let error = LlmError::Transport { url: url.to_string(), message: describe(error) };
    if is_builder { Failure::Final(error) } else { Failure::Retryable { error, retry_after: None } }
}

/// A reqwest error and its causes on one line, without the URL (the caller names it).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

/// The last error, saying how many attempts were made.
fn gave_up(error: LlmError, attempts: u32, chunks_sent: bool) -> LlmError {
    let note = if chunks_sent {
        " (not retried: part of the reply had been streamed)".to_string()
    } else if attempts > 1 {
        format!(" (gave up after {attempts} attempts)")
    } else {
        return error;
    };
    match error {
        LlmError::Status { url, status, message } => {
            LlmError::Status { url, status, message: message + &note }
        }
        LlmError::Transport { url, message } => LlmError::Transport { url, message: message + &note },
        other => other,
    }
}

/// How long the server asked to wait: OpenAI's `retry-after-ms`, else `Retry-After` in
/// seconds or as an HTTP date.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name| headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);
    let seconds =
        |text: &str| text.parse::<f64>().ok().and_then(|seconds| Duration::try_from_secs_f64(seconds).ok());
    if let Some(milliseconds) = header("retry-after-ms").and_then(seconds) {
        return Some(milliseconds / 1000);
    }
    let text = header(RETRY_AFTER.as_str())?;
    if let Some(wait) = seconds(text) {
        return Some(wait);
    }
    let when = UNIX_EPOCH.checked_add(Duration::from_secs(parse_http_date(text)?))?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Seconds since the Unix epoch of an HTTP date in its preferred form
/// (`Sun, 06 Nov 1994 08:49:37 GMT`); the obsolete forms are not read.
fn parse_http_date(text: &str) -> Option<u64> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [_weekday, day, month, year, time, "GMT"] = fields.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|name| name == month)? as i64 + 1;
    let day: i64 = day.parse().ok().filter(|day| (1..=31).contains(day))?;
    let year: i64 = year.parse().ok().filter(|year| *year >= 1970)?;
    let mut clock = time.split(':').map(|part| part.parse::<i64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if clock.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(seconds).ok()
}

/// Howard Hinnant's civil-to-days algorithm, the inverse of
/// [`agora_core::time::civil_from_days`]: (year, month 1-12, day 1-31) to days since
/// 1970-01-01.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use agora_core::time::civil_from_days;

    use super::*;

    #[test]
    fn http_dates_and_retry_after_headers() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        for bad in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        for days in [-1, 0, 59, 10_956, 11_016, 20_000] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770);
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert_eq!(retry_after(&headers(&[("retry-after", "3")]), now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&headers(&[("retry-after", "0.5")]), now), Some(Duration::from_millis(500)));
        let date = headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert_eq!(retry_after(&date, now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&date, now + Duration::from_secs(60)), Some(Duration::ZERO));
        let both = headers(&[("retry-after", "3"), ("retry-after-ms", "250")]);
        assert_eq!(retry_after(&both, now), Some(Duration::from_millis(250)));
        for bad in ["-1", "soon", "inf"] {
            let mut map = HeaderMap::new();
            map.insert("retry-after", HeaderValue::from_str(bad).unwrap());
            assert_eq!(retry_after(&map, now), None, "{bad}");
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_obeys_the_server() {
        let config = OpenAiConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..OpenAiConfig::default()
        };
        let backend = OpenAiBackend::new(config).unwrap();
        for retry_index in 0..6 {
            let ceiling = Duration::from_millis(100 * (1 << retry_index)).min(Duration::from_millis(350));
            for _ in 0..50 {
                assert!(backend.backoff(retry_index, None) <= ceiling);
            }
        }
        let draws: Vec<Duration> = (0..50).map(|_| backend.backoff(3, None)).collect();
        assert!(draws.iter().any(|draw| *draw != draws[0]), "the jitter varies");
        assert_eq!(backend.backoff(0, Some(Duration::from_millis(200))), Duration::from_millis(200));
        assert_eq!(backend.backoff(0, Some(Duration::from_secs(3600))), Duration::from_millis(350));
    }

    #[test]
    fn the_key_never_shows() {
        let key = ApiKey::new("sk-very-secret");
        assert_eq!((format!("{key}"), format!("{key:?}")), ("***".to_string(), "***".to_string()));
        let config = OpenAiConfig { api_key: Some(key), ..OpenAiConfig::new("http://127.0.0.1:9/v1/", "m") };
        let backend = OpenAiBackend::new(config).unwrap();
        assert_eq!(backend.info().spec, "openai:http://127.0.0.1:9/v1#m");
        assert!(!format!("{backend:?}").contains("very-secret"));
        let error = backend.redact(LlmError::Status {
            url: "u".into(),
            status: 401,
            message: "Incorrect API key provided: sk-very-secret".into(),
        });
        assert_eq!(error.to_string(), "u: HTTP 401: Incorrect API key provided: ***");
    }

    #[test]
    fn bad_configs_are_spec_errors() {
        for (base_url, model, expected) in [
            ("127.0.0.1:8080/v1", "m", "does not parse"),
            ("ftp://host/v1", "m", "http:// or https://"),
            ("http://host/v1", "", "model name is empty"),
        ] {
            let error = OpenAiBackend::new(OpenAiConfig::new(base_url, model)).unwrap_err().to_string();
            assert!(error.contains(expected), "{base_url}: {error}");
        }
        let config = OpenAiConfig { api_key: Some(ApiKey::new("bad\nkey")), ..OpenAiConfig::default() };
        let error = OpenAiBackend::new(config).unwrap_err().to_string();
        assert!(error.contains("cannot carry") && !error.contains("bad\nkey"), "{error}");
    }
}
