//! The OpenAI-compatible client against real loopback servers that answer in raw
//! HTTP/1.1, so that each can misbehave precisely: rate limits with `Retry-After`, 5xx,
//! replies slower than the timeout, truncated bodies, dropped connections, invalid JSON,
//! event streams cut short, and a count of requests in flight.
//!
//! Attempts are counted by the server; the only timing check is a lower bound (a
//! `Retry-After` wait was honoured). Every test runs under a one-minute guard, so a hang
//! fails instead of blocking the suite.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_core::Message;
use agora_llm::{
    ApiKey, Backend, Chunk, FinishReason, LlmError, OpenAiBackend, OpenAiConfig, Request, Sampling, Usage,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::unbounded_channel;

/// What the test server does with one request.
#[derive(Debug, Clone)]
enum Act {
    /// A whole response with a correct `Content-Length`.
    Reply { status: u16, headers: Vec<(&'static str, String)>, body: String },
    /// These bytes, then close (truncated bodies, dropped connections, event streams).
    Raw(String),
    /// These pieces with a pause after each, then close (streams that trickle in).
    Pieces(Vec<String>, Duration),
    /// Wait, then act.
    Delay(Duration, Box<Act>),
}

/// A request as the server read it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

type Script = dyn Fn(usize, &Seen) -> Act + Send + Sync;

#[derive(Default)]
struct ServerState {
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

struct TestServer {
    base_url: String,
    state: Arc<ServerState>,
}

impl TestServer {
    /// Serves the `n`-th request (from 0) with `acts[n]`, and every later one with the
    /// last act.
    async fn with_acts(acts: Vec<Act>) -> TestServer {
        TestServer::with_script(move |index, _| acts[index.min(acts.len() - 1)].clone()).await
    }

    async fn with_script(script: impl Fn(usize, &Seen) -> Act + Send + Sync + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let state = Arc::new(ServerState::default());
        let script: Arc<Script> = Arc::new(script);
        let server_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((connection, _)) = listener.accept().await else { return };
                tokio::spawn(serve_connection(connection, server_state.clone(), script.clone()));
            }
        });
        TestServer { base_url, state }
    }

    fn attempts(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    fn seen(&self, index: usize) -> Seen {
        self.state.seen.lock().unwrap()[index].clone()
    }

    fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// A backend for this server with small backoffs.
    fn backend(&self, adjust: impl FnOnce(&mut OpenAiConfig)) -> OpenAiBackend {
        let mut config = OpenAiConfig {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_retries: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
            ..OpenAiConfig::new(self.base_url.clone(), "test-model")
        };
        adjust(&mut config);
        OpenAiBackend::new(config).unwrap()
    }
}

/// One request per connection (responses say `Connection: close`).
async fn serve_connection(mut connection: TcpStream, state: Arc<ServerState>, script: Arc<Script>) {
    let Some(seen) = read_request(&mut connection).await else { return };
    let index = {
        let mut all = state.seen.lock().unwrap();
        all.push(seen.clone());
        all.len() - 1
    };
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let act = script(index, &seen);
    perform(&mut connection, act).await;
    let _ = connection.shutdown().await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
}

async fn read_request(connection: &mut TcpStream) -> Option<Seen> {
    let mut buffer = Vec::new();
    let mut piece = [0u8; 4096];
    let header_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        let read = connection.read(&mut piece).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&piece[..read]);
    };
    let head = String::from_utf8(buffer[..header_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())?;
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        let read = connection.read(&mut piece).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&piece[..read]);
    }
    Some(Seen { path, headers, body: serde_json::from_slice(&body).ok()? })
}

async fn perform(connection: &mut TcpStream, act: Act) {
    match act {
        Act::Reply { status, headers, body } => {
            let mut response = format!("HTTP/1.1 {status} Whatever\r\nConnection: close\r\n");
            if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
                response.push_str("Content-Type: application/json\r\n");
            }
            for (name, value) in headers {
                response.push_str(&format!("{name}: {value}\r\n"));
            }
            response.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
            let _ = connection.write_all(response.as_bytes()).await;
        }
        Act::Raw(bytes) => {
            let _ = connection.write_all(bytes.as_bytes()).await;
        }
        Act::Pieces(pieces, pause) => {
            for piece in pieces {
                if connection.write_all(piece.as_bytes()).await.is_err() {
                    return;
                }
                let _ = connection.flush().await;
                tokio::time::sleep(pause).await;
            }
        }
        Act::Delay(wait, act) => {
            tokio::time::sleep(wait).await;
            Box::pin(perform(connection, *act)).await;
        }
    }
}

fn ok(body: Value) -> Act {
    Act::Reply { status: 200, headers: Vec::new(), body: body.to_string() }
}

fn status(status: u16, body: Value) -> Act {
    Act::Reply { status, headers: Vec::new(), body: body.to_string() }
}

fn chat_body(text: &str) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "served-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    })
}

const EVENT_STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                                 Cache-Control: no-cache\r\nConnection: close\r\n\r\n";

fn event(data: Value) -> String {
    format!("data: {data}\n\n")
}

fn chat_delta(content: &str) -> Value {
    json!({
        "model": "served-model",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
    })
}

fn chat_request() -> Request {
    Request::chat(vec![Message::user("Say hello.")], Sampling::greedy(8))
}

/// Fails the test instead of hanging it.
async fn within_a_minute<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future).await.expect("the test hung for a minute")
}

/// Generates with a stream; returns the outcome and every chunk received.
async fn generate_streamed(
    backend: &OpenAiBackend,
    request: Request,
) -> (agora_llm::Result<agora_llm::Reply>, Vec<Chunk>) {
    let (sink, mut receiver) = unbounded_channel();
    let outcome = backend.generate(request, Some(sink)).await;
    let mut chunks = Vec::new();
    while let Ok(chunk) = receiver.try_recv() {
        chunks.push(chunk);
    }
    (outcome, chunks)
}

#[tokio::test]
async fn a_chat_reply_with_logprobs_and_the_request_the_server_saw() {
    within_a_minute(async {
        let mut body = chat_body("Hello!");
        body["choices"][0]["logprobs"] = json!({"content": [
            {"token": "Hello", "logprob": -0.25, "bytes": [72], "top_logprobs": [
                {"token": "Hello", "logprob": -0.25}, {"token": "Hi", "logprob": -1.5}]},
            {"token": "!", "logprob": -0.5, "top_logprobs": [
                {"token": "!", "logprob": -0.5}, {"token": ".", "logprob": -1.0}]},
        ]});
        let server = TestServer::with_acts(vec![ok(body)]).await;
        let backend = server.backend(|config| config.api_key = Some(ApiKey::new("sk-test-1234")));
        let sampling = Sampling {
            temperature: 0.5,
            top_p: 0.75,
            max_tokens: 16,
            stop: vec!["\n\n".into()],
            seed: Some(3),
            top_k: Some(20),
            ..Sampling::default()
        };
        let messages = vec![Message::system("Be brief."), Message::user("Say hello.")];
        let reply = backend.generate(Request::chat(messages, sampling).with_logprobs(2), None).await.unwrap();

        assert_eq!(reply.text, "Hello!");
        assert_eq!(reply.finish_reason, FinishReason::Stop);
        assert_eq!(reply.usage, Usage { prompt_tokens: 5, completion_tokens: 2 });
        assert_eq!(reply.model, "served-model");
        let logprobs = reply.logprobs.unwrap();
        assert_eq!(logprobs.iter().map(|entry| entry.token.as_str()).collect::<Vec<_>>(), ["Hello", "!"]);
        let runner_up = &logprobs[0].top[1];
        assert_eq!((logprobs[0].logprob, runner_up.token.as_str(), runner_up.logprob), (-0.25, "Hi", -1.5));

        let seen = server.seen(0);
        assert_eq!(seen.path, "/v1/chat/completions");
        assert_eq!(seen.header("authorization"), Some("Bearer sk-test-1234"));
        assert_eq!(
            seen.body,
            json!({
                "model": "test-model",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Say hello."},
                ],
                "logprobs": true, "top_logprobs": 2,
                "temperature": 0.5, "top_p": 0.75, "max_tokens": 16, "stop": ["\n\n"], "seed": 3, "top_k": 20,
            })
        );
        assert_eq!(server.attempts(), 1);
        assert_eq!(backend.info().spec, format!("openai:{}#test-model", server.base_url));
        assert_eq!(backend.info().kind, "openai");
    })
    .await;
}

#[tokio::test]
async fn a_text_completion_with_logprobs() {
    within_a_minute(async {
        let body = json!({
            "object": "text_completion", "model": "served-model",
            "choices": [{"index": 0, "text": " upon a", "finish_reason": "length", "logprobs": {
                "tokens": [" upon", " a"], "token_logprobs": [-0.1, -0.2], "text_offset": [4, 9],
                "top_logprobs": [{" upon": -0.1, " a": -3.0}, {" time": -2.5, " a": -0.2}]}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        });
        let server = TestServer::with_acts(vec![ok(body)]).await;
        let backend = server.backend(|_| {});
        let reply = backend
            .generate(Request::text("Once", Sampling::greedy(2)).with_logprobs(2), None)
            .await
            .unwrap();
        assert_eq!((reply.text.as_str(), reply.finish_reason), (" upon a", FinishReason::Length));
        let logprobs = reply.logprobs.unwrap();
        assert_eq!(logprobs[1].token, " a");
        assert_eq!(logprobs[1].top.iter().map(|top| top.token.as_str()).collect::<Vec<_>>(), [" a", " time"]);
        let seen = server.seen(0);
        assert_eq!(seen.path, "/v1/completions");
        assert_eq!((seen.body["prompt"].clone(), seen.body["logprobs"].clone()), (json!("Once"), json!(2)));
        assert!(seen.body.get("messages").is_none() && seen.header("authorization").is_none());
    })
    .await;
}

#[tokio::test]
async fn a_streamed_chat_arrives_in_chunks_that_add_up_to_the_reply() {
    within_a_minute(async {
        let logprob = |token: &str, value: f32| {
            json!({"content": [{"token": token, "logprob": value, "top_logprobs": []}]})
        };
        let mut hello = chat_delta("Hel");
        hello["choices"][0]["logprobs"] = logprob("Hel", -0.5);
        let mut rest = chat_delta("lo");
        rest["choices"][0]["logprobs"] = logprob("lo", -0.25);
        let body = [
            event(json!({
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null},
                ],
            })),
            ": keep-alive\n\n".to_string(),
            event(hello),
            event(rest),
            event(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
            event(json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        // Pieces of 7 bytes, so events and lines are split across reads.
        let mut pieces = vec![EVENT_STREAM_HEAD.to_string()];
        pieces.extend(body.as_bytes().chunks(7).map(|piece| String::from_utf8(piece.to_vec()).unwrap()));
        let server = TestServer::with_acts(vec![Act::Pieces(pieces, Duration::from_millis(1))]).await;
        let backend = server.backend(|_| {});
        let (outcome, chunks) = generate_streamed(&backend, chat_request().with_logprobs(0)).await;
        let reply = outcome.unwrap();

        assert_eq!(chunks.iter().map(|chunk| chunk.text.as_str()).collect::<Vec<_>>(), ["Hel", "lo"]);
        assert_eq!(chunks[1].logprobs[0].logprob, -0.25);
        assert_eq!(reply.text, "Hello");
        assert_eq!(reply.finish_reason, FinishReason::Stop);
        assert_eq!(reply.usage, Usage { prompt_tokens: 9, completion_tokens: 2 });
        assert_eq!(reply.logprobs.unwrap().len(), 2);
        assert_eq!(reply.model, "served-model");
        let seen = server.seen(0);
        assert_eq!(seen.body["stream"], json!(true));
        assert_eq!(seen.body["stream_options"], json!({"include_usage": true}));
        assert_eq!(seen.header("accept"), Some("text/event-stream"));
    })
    .await;
}

#[tokio::test]
async fn a_streamed_completion_without_usage_counts_its_chunks() {
    within_a_minute(async {
        let piece = |text: &str, finish: Value| {
            event(json!({"model": "m", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}))
        };
        let stream = [
            EVENT_STREAM_HEAD,
            &piece(" a", Value::Null),
            &piece(" b", Value::Null),
            &piece(" c", json!("length")),
            "data: [DONE]\n\n",
        ]
        .concat();
        let server = TestServer::with_acts(vec![Act::Raw(stream)]).await;
        let backend = server.backend(|_| {});
        let (outcome, chunks) = generate_streamed(&backend, Request::text("x", Sampling::greedy(3))).await;
        let reply = outcome.unwrap();
        assert_eq!((reply.text.as_str(), reply.finish_reason), (" a b c", FinishReason::Length));
        assert_eq!(reply.usage, Usage { prompt_tokens: 0, completion_tokens: 3 });
        assert_eq!(chunks.len(), 3);
        assert_eq!(reply.logprobs, None);
    })
    .await;
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_as_retry_after_asks() {
    within_a_minute(async {
        let limited = Act::Reply {
            status: 429,
            headers: vec![("Retry-After", "1".to_string())],
            body: json!({"error": {"message": "slow down"}}).to_string(),
        };
        let server = TestServer::with_acts(vec![limited, ok(chat_body("fine"))]).await;
        // Without Retry-After the backoff would be at most 1 ms.
        let backend = server.backend(|config| config.max_backoff = Duration::from_secs(5));
        let started = Instant::now();
        let reply = backend.generate(chat_request(), None).await.unwrap();
        assert_eq!(reply.text, "fine");
        assert_eq!(server.attempts(), 2);
        assert!(started.elapsed() >= Duration::from_millis(950), "waited only {:?}", started.elapsed());
    })
    .await;
}

#[tokio::test]
async fn retry_after_is_capped_by_max_backoff() {
    within_a_minute(async {
        let limited = Act::Reply {
            status: 503,
            headers: vec![("Retry-After", "3600".to_string())],
            body: String::new(),
        };
        let server = TestServer::with_acts(vec![limited, ok(chat_body("fine"))]).await;
        let backend = server.backend(|_| {});
        assert_eq!(backend.generate(chat_request(), None).await.unwrap().text, "fine");
        assert_eq!(server.attempts(), 2);
    })
    .await;
}

#[tokio::test]
async fn server_errors_twice_then_a_reply() {
    within_a_minute(async {
        let failing = status(500, json!({"error": {"message": "boom"}}));
        let server = TestServer::with_acts(vec![failing.clone(), failing, ok(chat_body("third time"))]).await;
        let backend = server.backend(|_| {});
        assert_eq!(backend.generate(chat_request(), None).await.unwrap().text, "third time");
        assert_eq!(server.attempts(), 3);
    })
    .await;
}

#[tokio::test]
async fn a_server_that_always_fails_is_given_up_after_max_retries() {
    within_a_minute(async {
        let server =
            TestServer::with_acts(vec![status(502, json!({"error": {"message": "bad gateway"}}))]).await;
        let backend = server.backend(|config| config.max_retries = 3);
        let error = backend.generate(chat_request(), None).await.unwrap_err();
        assert_eq!(server.attempts(), 4);
        let LlmError::Status { status, message, url } = &error else { panic!("{error:?}") };
        assert_eq!((*status, message.as_str()), (502, "bad gateway (gave up after 4 attempts)"));
        assert_eq!(url, &format!("{}/chat/completions", server.base_url));
    })
    .await;
}

#[tokio::test]
async fn a_client_error_fails_at_once_with_the_servers_message() {
    within_a_minute(async {
        let body = json!({"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}});
        let server = TestServer::with_acts(vec![status(400, body)]).await;
        let backend = server.backend(|_| {});
        let error = backend.generate(chat_request(), None).await.unwrap_err();
        assert_eq!(server.attempts(), 1);
        assert_eq!(
            error.to_string(),
            format!("{}/chat/completions: HTTP 400: max_tokens is too large", server.base_url)
        );
    })
    .await;
}

#[tokio::test]
async fn a_reply_slower_than_the_timeout_is_retried_then_reported() {
    within_a_minute(async {
        // The delay outlasts the test's guard, so only the client's timeout ends it.
        let server = TestServer::with_acts(vec![Act::Delay(
            Duration::from_secs(120),
            Box::new(ok(chat_body("late"))),
        )])
        .await;
        let backend = server.backend(|config| {
            config.timeout = Duration::from_millis(300);
            config.max_retries = 1;
        });
        let error = backend.generate(chat_request(), None).await.unwrap_err();
        assert_eq!(server.attempts(), 2);
        let LlmError::Transport { message, .. } = &error else { panic!("{error:?}") };
        assert_eq!(message, "timed out after 0.3 s (gave up after 2 attempts)");
    })
    .await;
}

#[tokio::test]
async fn dropped_connections_and_truncated_bodies_are_retried() {
    within_a_minute(async {
        let truncated =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"choices\": [";
        let server = TestServer::with_acts(vec![
            Act::Raw(String::new()),
            Act::Raw(truncated.to_string()),
            ok(chat_body("whole")),
        ])
        .await;
        let backend = server.backend(|_| {});
        assert_eq!(backend.generate(chat_request(), None).await.unwrap().text, "whole");
        assert_eq!(server.attempts(), 3);

        // Always truncated: a transport error after the last retry.
        let server = TestServer::with_acts(vec![Act::Raw(truncated.to_string())]).await;
        let backend = server.backend(|config| config.max_retries = 1);
        let error = backend.generate(chat_request(), None).await.unwrap_err();
        assert!(matches!(error, LlmError::Transport { .. }), "{error:?}");
        assert!(error.to_string().contains("gave up after 2 attempts"), "{error}");
        assert_eq!(server.attempts(), 2);
    })
    .await;
}

#[tokio::test]
async fn invalid_json_and_missing_fields_are_invalid_replies_naming_the_problem() {
    within_a_minute(async {
        let cases = [
            (
                Act::Reply { status: 200, headers: Vec::new(), body: "<html>oops</html>".into() },
                "the body is not JSON",
            ),
            (
                ok(json!({"choices": [{"message": {"role": "assistant"}, "finish_reason": "stop"}]})),
                "`choices[0].message.content` is missing",
            ),
            (ok(json!({"choices": []})), "`choices[0]` is missing"),
            (
                ok(json!({
                    "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": "five"},
                })),
                "`usage.prompt_tokens` is not a count",
            ),
            (
                ok(json!({"error": {"message": "model overloaded", "code": 503}})),
                "the reply holds an error instead of choices: model overloaded",
            ),
        ];
        for (act, expected) in cases {
            let server = TestServer::with_acts(vec![act]).await;
            let backend = server.backend(|_| {});
            let error = backend.generate(chat_request(), None).await.unwrap_err();
            assert!(matches!(error, LlmError::InvalidReply { .. }), "{error:?}");
            assert!(error.to_string().contains(expected), "{expected}: {error}");
            assert_eq!(server.attempts(), 1, "{expected}: not retried");
        }
        // Log-probs asked for but not sent.
        let server = TestServer::with_acts(vec![ok(chat_body("x"))]).await;
        let error = server.backend(|_| {}).generate(chat_request().with_logprobs(1), None).await.unwrap_err();
        assert!(error.to_string().contains("`choices[0].logprobs` is missing"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn a_stream_cut_after_chunks_is_an_error_and_not_retried() {
    within_a_minute(async {
        let cut = [EVENT_STREAM_HEAD, &event(chat_delta("Hel")), &event(chat_delta("lo"))].concat();
        let server = TestServer::with_acts(vec![Act::Raw(cut), ok(chat_body("never asked"))]).await;
        let backend = server.backend(|_| {});
        let (outcome, chunks) = generate_streamed(&backend, chat_request()).await;
        let error = outcome.unwrap_err();
        assert_eq!(server.attempts(), 1);
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            error.to_string(),
            format!(
                "{}/chat/completions: the event stream ended before `data: [DONE]`, after 2 chunks \
                 (not retried: part of the reply had been streamed)",
                server.base_url
            )
        );
    })
    .await;
}

#[tokio::test]
async fn a_stream_cut_before_its_first_chunk_is_retried_without_duplicates() {
    within_a_minute(async {
        let role_only =
            event(json!({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]}));
        let cut = [EVENT_STREAM_HEAD, &role_only].concat();
        let whole = [
            EVENT_STREAM_HEAD,
            &role_only,
            &event(chat_delta("Hi")),
            &event(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
            "data: [DONE]\n\n",
        ]
        .concat();
        let server = TestServer::with_acts(vec![Act::Raw(cut), Act::Raw(whole)]).await;
        let backend = server.backend(|_| {});
        let (outcome, chunks) = generate_streamed(&backend, chat_request()).await;
        assert_eq!(outcome.unwrap().text, "Hi");
        assert_eq!(chunks, [Chunk { text: "Hi".into(), logprobs: Vec::new() }]);
        assert_eq!(server.attempts(), 2);

        // An error event inside the stream, before any text, is retried like a 5xx.
        let error_event =
            [EVENT_STREAM_HEAD, &event(json!({"error": {"message": "model crashed"}}))].concat();
        let server = TestServer::with_acts(vec![Act::Raw(error_event)]).await;
        let backend = server.backend(|config| config.max_retries = 1);
        let error = generate_streamed(&backend, chat_request()).await.0.unwrap_err();
        assert!(error.to_string().contains("model crashed (gave up after 2 attempts)"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn a_stream_whose_listener_is_gone_is_cancelled_at_once() {
    within_a_minute(async {
        // After the first chunk the server falls silent for longer than the test's guard.
        let pieces =
            vec![[EVENT_STREAM_HEAD, &event(chat_delta("first"))].concat(), event(chat_delta("never"))];
        let server = TestServer::with_acts(vec![Act::Pieces(pieces, Duration::from_secs(120))]).await;
        let backend = Arc::new(server.backend(|_| {}));
        let (sink, mut receiver) = unbounded_channel();
        let task = tokio::spawn({
            let backend = backend.clone();
            async move { backend.generate(chat_request(), Some(sink)).await }
        });
        assert_eq!(receiver.recv().await.unwrap().text, "first");
        drop(receiver);
        let error = task.await.unwrap().unwrap_err();
        assert!(matches!(error, LlmError::Cancelled), "{error:?}");
        assert_eq!(server.attempts(), 1);
    })
    .await;
}

#[tokio::test]
async fn the_api_key_reaches_the_server_and_no_error_text() {
    within_a_minute(async {
        let key = "sk-live-0123456789abcdef";
        // Servers do echo keys back ("Incorrect API key provided: sk-...").
        let server = TestServer::with_script(|_, seen| {
            let sent = seen.header("authorization").unwrap_or_default().to_string();
            status(401, json!({"error": {"message": format!("Incorrect API key provided: {sent}")}}))
        })
        .await;
        let backend = server.backend(|config| config.api_key = Some(ApiKey::new(key)));
        let error = backend.generate(chat_request(), None).await.unwrap_err();
        assert_eq!(server.seen(0).header("authorization"), Some(format!("Bearer {key}").as_str()));
        assert_eq!(server.attempts(), 1);
        let LlmError::Status { status: 401, message, .. } = &error else { panic!("{error:?}") };
        assert_eq!(message, "Incorrect API key provided: Bearer ***");

        // Nor in transport errors, the backend's Debug output or its info.
        let server = TestServer::with_acts(vec![Act::Raw(String::new())]).await;
        let backend = server.backend(|config| {
            config.api_key = Some(ApiKey::new(key));
            config.max_retries = 1;
        });
        let transport = backend.generate(chat_request(), None).await.unwrap_err();
        for text in [
            error.to_string(),
            format!("{error:?}"),
            transport.to_string(),
            format!("{transport:?}"),
            format!("{backend:?}"),
            format!("{:?}", backend.info()),
        ] {
            assert!(!text.contains(key) && !text.contains("0123456789"), "the key leaked: {text}");
        }
    })
    .await;
}

#[tokio::test]
async fn max_concurrency_bounds_the_requests_in_flight() {
    within_a_minute(async {
        let server = TestServer::with_acts(vec![Act::Delay(
            Duration::from_millis(150),
            Box::new(ok(chat_body("ok"))),
        )])
        .await;
        let backend = server.backend(|config| config.max_concurrency = 3);
        let requests = (0..12).map(|_| backend.generate(chat_request(), None));
        let replies = futures_util::future::join_all(requests).await;
        assert!(replies.iter().all(|reply| reply.as_ref().is_ok_and(|reply| reply.text == "ok")));
        assert_eq!(server.attempts(), 12);
        let max_in_flight = server.max_in_flight();
        assert!((2..=3).contains(&max_in_flight), "{max_in_flight} requests were in flight at once");
    })
    .await;
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported() {
    within_a_minute(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let config = OpenAiConfig {
            max_retries: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..OpenAiConfig::new(format!("http://{address}/v1"), "m")
        };
        let error = OpenAiBackend::new(config).unwrap().generate(chat_request(), None).await.unwrap_err();
        let LlmError::Transport { url, message } = &error else { panic!("{error:?}") };
        assert_eq!(url, &format!("http://{address}/v1/chat/completions"));
        assert!(message.ends_with("(gave up after 3 attempts)"), "{message}");
    })
    .await;
}
