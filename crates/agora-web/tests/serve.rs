//! End-to-end tests of the OpenAI-compatible server over loopback (port 0), with reqwest as
//! the client and fake backends behind it: every endpoint streamed and not, both log-prob
//! layouts, the token, the limits, concurrency and cancellation of abandoned streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agora_llm::{Backend, BackendInfo, BoxFuture, FakeBackend, FakeMode, Reply, Request, Result, StreamSink};
use agora_web::{ServeConfig, bind};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// A running server; dropping it shuts it down.
struct TestServer {
    base: String,
    _stop: oneshot::Sender<()>,
}

async fn start(backend: Arc<dyn Backend>, config: ServeConfig) -> TestServer {
    let config = ServeConfig { bind: SocketAddr::from(([127, 0, 0, 1], 0)), ..config };
    let server = bind(backend, &config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    TestServer { base, _stop: stop }
}

async fn start_fake(mode: FakeMode) -> TestServer {
    start(Arc::new(FakeBackend::new(mode)), ServeConfig::default()).await
}

async fn post(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let response =
        reqwest::Client::new().post(format!("{}{path}", server.base)).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The `data:` payloads of an SSE body, in order.
async fn sse_events(server: &TestServer, path: &str, body: &Value) -> Vec<String> {
    let response =
        reqwest::Client::new().post(format!("{}{path}", server.base)).json(body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
        .map(str::to_string)
        .collect()
}

fn chat_body(content: &str) -> Value {
    json!({"model": "anything", "messages": [{"role": "user", "content": content}], "seed": 3})
}

#[tokio::test]
async fn health_and_models() {
    let server = start_fake(FakeMode::Seeded).await;
    let health: Value = reqwest::get(format!("{}/health", server.base)).await.unwrap().json().await.unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let models: Value =
        reqwest::get(format!("{}/v1/models", server.base)).await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "fake-seeded");
    assert_eq!(models["data"][0]["object"], "model");
    let one = reqwest::get(format!("{}/v1/models/fake-seeded", server.base)).await.unwrap();
    assert_eq!(one.status().as_u16(), 200);
    let missing = reqwest::get(format!("{}/v1/models/gpt-9", server.base)).await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "model_not_found");
    let nowhere = reqwest::get(format!("{}/v1/nowhere", server.base)).await.unwrap();
    assert_eq!(nowhere.status().as_u16(), 404);
}

#[tokio::test]
async fn chat_completion_matches_the_backend_reply() {
    let server = start_fake(FakeMode::Seeded).await;
    let (status, reply) = post(&server, "/v1/chat/completions", &chat_body("hello")).await;
    assert_eq!(status, 200, "{reply}");
    let backend: Arc<dyn Backend> = Arc::new(FakeBackend::new(FakeMode::Seeded));
    let sampling = agora_llm::Sampling { seed: Some(3), max_tokens: 4096, ..Default::default() };
    let expected = backend.chat(vec![agora_core::Message::user("hello")], sampling).await.unwrap();
    assert!(reply["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(reply["object"], "chat.completion");
    assert!(reply["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(reply["model"], "fake-seeded");
    let choice = &reply["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], expected.text.as_str());
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    let usage = &reply["usage"];
    assert_eq!(usage["completion_tokens"], expected.usage.completion_tokens);
    assert_eq!(usage["prompt_tokens"], expected.usage.prompt_tokens);
    assert_eq!(usage["total_tokens"], expected.usage.total_tokens());
}

#[tokio::test]
async fn completion_with_stop_and_max_tokens() {
    let server = start_fake(FakeMode::Echo).await;
    let body = json!({"model": "m", "prompt": ["one two three four five"], "max_tokens": 3});
    let (status, reply) = post(&server, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(reply["object"], "text_completion");
    assert_eq!(reply["choices"][0]["text"], "one two three");
    assert_eq!(reply["choices"][0]["finish_reason"], "length");
    assert_eq!(reply["usage"]["completion_tokens"], 3);
    let body = json!({"prompt": "one two three four five", "stop": [" four", "x"]});
    let (_, reply) = post(&server, "/v1/completions", &body).await;
    assert_eq!(reply["choices"][0]["text"], "one two three");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn chat_logprobs() {
    let server = start_fake(FakeMode::Echo).await;
    let mut body = chat_body("alpha beta");
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let (status, reply) = post(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    let content = reply["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    assert_eq!(content[1]["token"], " beta");
    assert_eq!(content[1]["bytes"], json!(b" beta".to_vec()));
    let logprob = content[1]["logprob"].as_f64().unwrap();
    assert!(logprob < 0.0);
    let top = content[1]["top_logprobs"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!(top[0]["token"], " beta");
    assert!(top[1]["logprob"].as_f64().unwrap() < logprob);
    assert!(top[1]["bytes"].is_array());
}

#[tokio::test]
async fn completion_logprobs() {
    let server = start_fake(FakeMode::Echo).await;
    let body = json!({"prompt": "alpha beta gamma", "logprobs": 3, "max_tokens": 10});
    let (status, reply) = post(&server, "/v1/completions", &body).await;
    assert_eq!(status, 200, "{reply}");
    let logprobs = &reply["choices"][0]["logprobs"];
    assert_eq!(logprobs["tokens"], json!(["alpha", " beta", " gamma"]));
    assert_eq!(logprobs["text_offset"], json!([0, 5, 10]));
    assert_eq!(logprobs["token_logprobs"].as_array().unwrap().len(), 3);
    let top = logprobs["top_logprobs"][2].as_object().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(top.keys().next().unwrap(), " gamma");
}

#[tokio::test]
async fn chat_streaming_with_usage_and_logprobs() {
    let server = start_fake(FakeMode::Echo).await;
    let mut body = chat_body("one two three");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body["logprobs"] = json!(true);
    let events = sse_events(&server, "/v1/chat/completions", &body).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|event| serde_json::from_str(event).unwrap()).collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    assert!(chunks.iter().all(|chunk| chunk["id"] == id && chunk["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    // Opening role chunk, three tokens, the finish chunk, the usage chunk.
    assert_eq!(chunks.len(), 6, "{chunks:#?}");
    let text: String =
        chunks[1..4].iter().map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().unwrap()).collect();
    assert_eq!(text, "one two three");
    assert_eq!(chunks[2]["choices"][0]["logprobs"]["content"][0]["token"], " two");
    assert!(chunks[1..4].iter().all(|chunk| chunk["choices"][0]["finish_reason"].is_null()));
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[4]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 3);
    assert!(chunks[..5].iter().all(|chunk| chunk.get("usage").is_none()));
}

#[tokio::test]
async fn completion_streaming_with_logprobs() {
    let server = start_fake(FakeMode::Echo).await;
    let body = json!({"prompt": "aa bb cc dd", "stream": true, "logprobs": 1, "max_tokens": 3});
    let events = sse_events(&server, "/v1/completions", &body).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|event| serde_json::from_str(event).unwrap()).collect();
    assert_eq!(chunks.len(), 4, "three tokens and the finish chunk: {chunks:#?}");
    assert!(chunks.iter().all(|chunk| chunk["object"] == "text_completion"));
    assert!(chunks[0]["id"].as_str().unwrap().starts_with("cmpl-"));
    let text: String = chunks.iter().map(|chunk| chunk["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, "aa bb cc");
    let offsets: Vec<Value> =
        chunks[..3].iter().map(|chunk| chunk["choices"][0]["logprobs"]["text_offset"][0].clone()).collect();
    assert_eq!(offsets, vec![json!(0), json!(2), json!(5)]);
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn the_token_is_required_when_configured() {
    let config = ServeConfig { token: Some("s3cret-token".into()), ..ServeConfig::default() };
    let server = start(Arc::new(FakeBackend::new(FakeMode::Seeded)), config).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.base);
    for authorization in [None, Some("Bearer wrong"), Some("Bearer s3cret-tokenX"), Some("s3cret-token")] {
        let mut request = client.post(&url).json(&chat_body("hi"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{authorization:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_api_key");
        assert!(!error.to_string().contains("s3cret"), "the token is never echoed: {error}");
    }
    let models = client.get(format!("{}/v1/models", server.base)).send().await.unwrap();
    assert_eq!(models.status().as_u16(), 401);
    let ok = client.post(&url).bearer_auth("s3cret-token").json(&chat_body("hi")).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let health = client.get(format!("{}/health", server.base)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "health stays open for supervisors");
}

#[tokio::test]
async fn default_bind_is_loopback() {
    assert_eq!(ServeConfig::default().bind, SocketAddr::from(([127, 0, 0, 1], 8000)));
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let config = ServeConfig { max_body_bytes: 1000, ..ServeConfig::default() };
    let server = start(Arc::new(FakeBackend::new(FakeMode::Seeded)), config).await;
    let (status, error) = post(&server, "/v1/chat/completions", &chat_body(&"x".repeat(2000))).await;
    assert_eq!(status, 413);
    assert_eq!(error["error"]["code"], "request_too_large");
    assert!(error["error"]["message"].as_str().unwrap().contains("1000 bytes"));
}

#[tokio::test]
async fn bad_requests_get_400_naming_the_problem() {
    let config = ServeConfig { max_tokens_limit: 100, ..ServeConfig::default() };
    let server = start(Arc::new(FakeBackend::new(FakeMode::Seeded)), config).await;
    let mut over = chat_body("hi");
    over["max_tokens"] = json!(101);
    let (status, error) = post(&server, "/v1/chat/completions", &over).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["param"], "max_tokens");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(error["error"]["message"].as_str().unwrap().contains("limit of 100"), "{error}");

    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .header("content-type", "application/json")
        .body(r#"{"messages": [{"role": "user", "content": "hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("not valid JSON"), "{error}");

    for (body, named) in [
        (json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}), "max_tokens"),
        (json!({"messages": [{"role": "user"}], "n": 3}), "n"),
        (json!({"model": "m"}), "messages"),
        (json!({"messages": [{"content": "hi"}]}), "role"),
    ] {
        let (status, error) = post(&server, "/v1/chat/completions", &body).await;
        assert_eq!(status, 400, "{body}");
        assert!(error["error"]["message"].as_str().unwrap().contains(named), "{body}: {error}");
    }
    let (status, error) = post(&server, "/v1/completions", &json!({"prompt": "a", "max_tokens": 1000})).await;
    assert_eq!((status, error["error"]["param"].as_str()), (400, Some("max_tokens")));
}

#[tokio::test]
async fn backend_failures_are_500_with_the_cause() {
    let backend = FakeBackend::from_fn(|_| Err(agora_llm::LlmError::Model("out of memory".into())));
    let server = start(Arc::new(backend), ServeConfig::default()).await;
    let (status, error) = post(&server, "/v1/chat/completions", &chat_body("hi")).await;
    assert_eq!(status, 500);
    assert_eq!(error["error"]["type"], "server_error");
    assert!(error["error"]["message"].as_str().unwrap().contains("out of memory"));
}

/// A backend that counts the requests running in it, the most at once, and the requests
/// abandoned before they finished (their future dropped).
struct CountingBackend {
    inner: FakeBackend,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    abandoned: Arc<AtomicUsize>,
}

struct InFlight {
    in_flight: Arc<AtomicUsize>,
    abandoned: Arc<AtomicUsize>,
    finished: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl CountingBackend {
    fn new(token_delay: Duration) -> CountingBackend {
        CountingBackend {
            inner: FakeBackend::new(FakeMode::Echo).with_token_delay(token_delay),
            in_flight: Arc::default(),
            most_in_flight: Arc::default(),
            abandoned: Arc::default(),
        }
    }
}

impl Backend for CountingBackend {
    fn info(&self) -> &BackendInfo {
        self.inner.info()
    }

    fn generate(&self, request: Request, stream: Option<StreamSink>) -> BoxFuture<'_, Result<Reply>> {
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let mut guard = InFlight {
                in_flight: self.in_flight.clone(),
                abandoned: self.abandoned.clone(),
                finished: false,
            };
            let reply = self.inner.generate(request, stream).await;
            guard.finished = true;
            reply
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_overlap_in_the_backend() {
    let backend = Arc::new(CountingBackend::new(Duration::from_millis(20)));
    let most_in_flight = backend.most_in_flight.clone();
    let server = Arc::new(start(backend, ServeConfig::default()).await);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for index in 0..64 {
        let client = client.clone();
        let url = format!("{}/v1/chat/completions", server.base);
        tasks.push(tokio::spawn(async move {
            let body = chat_body(&format!("request {index} a b c d e f g h"));
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            let reply: Value = response.json().await.unwrap();
            (status, reply["choices"][0]["message"]["content"].as_str().map(str::to_string))
        }));
    }
    for (index, task) in tasks.into_iter().enumerate() {
        let (status, content) = task.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(content.unwrap(), format!("request {index} a b c d e f g h"));
    }
    // Ten tokens of 20 ms each: requests run one at a time would never overlap.
    let most = most_in_flight.load(Ordering::SeqCst);
    assert!(most > 1, "the backend saw at most {most} requests at once");
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_get_503() {
    let backend = Arc::new(CountingBackend::new(Duration::from_millis(50)));
    let in_flight = backend.in_flight.clone();
    let config = ServeConfig { max_concurrent_requests: 1, ..ServeConfig::default() };
    let server = start(backend, config).await;
    let mut slow = chat_body(&"word ".repeat(100));
    slow["stream"] = json!(true);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.base);
    let mut stream = client.post(&url).json(&slow).send().await.unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    stream.chunk().await.unwrap();
    assert_eq!(in_flight.load(Ordering::SeqCst), 1);
    let response = client.post(&url).json(&chat_body("hi")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "overloaded");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_cancels_the_backend_request() {
    let backend = Arc::new(CountingBackend::new(Duration::from_millis(20)));
    let (in_flight, abandoned) = (backend.in_flight.clone(), backend.abandoned.clone());
    let server = start(backend, ServeConfig::default()).await;
    let mut body = chat_body(&"word ".repeat(1000));
    body["stream"] = json!(true);
    let mut response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    // Wait for a streamed token (past the opening role chunk), then hang up.
    let mut received = String::new();
    while !received.contains("word") {
        received.push_str(&String::from_utf8_lossy(&response.chunk().await.unwrap().unwrap()));
    }
    assert_eq!(in_flight.load(Ordering::SeqCst), 1);
    drop(response);
    // A thousand tokens of 20 ms would take 20 s; cancellation ends it at once. The loop
    // only bounds the wait, it does not time anything.
    for _ in 0..500 {
        if abandoned.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(abandoned.load(Ordering::SeqCst), 1, "the backend request was not cancelled");
    assert_eq!(in_flight.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn shutdown_lets_a_running_stream_finish() {
    let backend: Arc<dyn Backend> =
        Arc::new(FakeBackend::new(FakeMode::Echo).with_token_delay(Duration::from_millis(10)));
    let config = ServeConfig { bind: SocketAddr::from(([127, 0, 0, 1], 0)), ..ServeConfig::default() };
    let server = bind(backend, &config).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let mut body = json!({"prompt": "one two three four five six seven eight", "stream": true});
    body["max_tokens"] = json!(20);
    let mut response =
        reqwest::Client::new().post(format!("{base}/v1/completions")).json(&body).send().await.unwrap();
    let mut received = String::from_utf8_lossy(&response.chunk().await.unwrap().unwrap()).into_owned();
    stop.send(()).unwrap();
    while let Some(bytes) = response.chunk().await.unwrap() {
        received.push_str(&String::from_utf8_lossy(&bytes));
    }
    assert!(received.contains(" eight") && received.contains("[DONE]"), "{received}");
    running.await.unwrap().unwrap();
    assert!(reqwest::get(format!("{base}/health")).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn a_client_that_hangs_up_before_a_plain_reply_cancels_the_backend_request() {
    let backend = Arc::new(CountingBackend::new(Duration::from_millis(20)));
    let (in_flight, abandoned) = (backend.in_flight.clone(), backend.abandoned.clone());
    let server = start(backend, ServeConfig::default()).await;
    let request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&chat_body(&"word ".repeat(1000)))
        .send();
    let pending = tokio::spawn(request);
    for _ in 0..500 {
        if in_flight.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(in_flight.load(Ordering::SeqCst), 1);
    pending.abort();
    for _ in 0..500 {
        if abandoned.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(abandoned.load(Ordering::SeqCst), 1, "the backend request was not cancelled");
}

/// Streams two tokens, then fails.
struct FailingMidStream {
    info: BackendInfo,
}

impl Backend for FailingMidStream {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn generate(&self, _request: Request, stream: Option<StreamSink>) -> BoxFuture<'_, Result<Reply>> {
        Box::pin(async move {
            for text in ["one", " two"] {
                if let Some(sink) = &stream {
                    let _ = sink.send(agora_llm::Chunk { text: text.into(), logprobs: Vec::new() });
                }
            }
            Err(agora_llm::LlmError::Model("the model fell over".into()))
        })
    }
}

#[tokio::test]
async fn a_backend_failure_mid_stream_ends_with_an_error_event() {
    let info = BackendInfo { kind: "test".into(), spec: "test".into(), model: "failing".into() };
    let server = start(Arc::new(FailingMidStream { info }), ServeConfig::default()).await;
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    let events = sse_events(&server, "/v1/chat/completions", &body).await;
    // The role chunk, two pieces, the error, [DONE].
    assert_eq!(events.len(), 5, "{events:?}");
    let error: Value = serde_json::from_str(&events[3]).unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("the model fell over"), "{error}");
    assert_eq!(events[4], "[DONE]");
}

#[tokio::test]
async fn a_stream_refused_before_its_first_token_gets_an_error_status() {
    let backend =
        FakeBackend::from_fn(|_| Err(agora_llm::LlmError::InvalidRequest("the prompt is too long".into())));
    let server = start(Arc::new(backend), ServeConfig::default()).await;
    let mut body = json!({"prompt": "x", "stream": true});
    let (status, error) = post(&server, "/v1/completions", &body).await;
    assert_eq!(status, 400);
    assert!(error["error"]["message"].as_str().unwrap().contains("too long"), "{error}");
    body["prompt"] = json!("y");
    let (status, _) = post(&server, "/v1/completions", &body).await;
    assert_eq!(status, 400, "the permit of the refused stream was given back");
}

#[tokio::test]
async fn wrong_methods_get_json_errors() {
    let server = start_fake(FakeMode::Seeded).await;
    let response = reqwest::get(format!("{}/v1/chat/completions", server.base)).await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "method_not_allowed");
}
