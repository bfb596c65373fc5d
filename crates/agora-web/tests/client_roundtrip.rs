//! agora's OpenAI-compatible client against agora's own server over loopback: whatever a
//! backend answers behind `agora serve` must come out of `OpenAiBackend` unchanged (text,
//! finish reason, usage, log-probs, streamed chunks), and a missing or wrong token must end
//! in a clear 401 without a retry loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agora_core::Message;
use agora_llm::{
    ApiKey, Backend, FakeBackend, FakeMode, FinishReason, LlmError, OpenAiBackend, OpenAiConfig, Request,
    Sampling,
};
use agora_web::{ServeConfig, bind};
use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::oneshot;

struct Running {
    base_url: String,
    _stop: oneshot::Sender<()>,
}

async fn start(backend: Arc<dyn Backend>, token: Option<&str>) -> Running {
    let config = ServeConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        token: token.map(str::to_string),
        ..ServeConfig::default()
    };
    let server = bind(backend, &config).await.unwrap();
    let base_url = format!("http://{}/v1", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running { base_url, _stop: stop }
}

fn client(server: &Running, key: Option<&str>) -> OpenAiBackend {
    let config = OpenAiConfig {
        api_key: key.map(ApiKey::new),
        max_retries: 2,
        initial_backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(30),
        ..OpenAiConfig::new(server.base_url.clone(), "fake-seeded")
    };
    OpenAiBackend::new(config).unwrap()
}

fn requests() -> Vec<Request> {
    let sampling = Sampling { seed: Some(11), max_tokens: 9, ..Sampling::default() };
    vec![
        Request::chat(
            vec![Message::system("Be brief."), Message::user("Is tea better than coffee?")],
            sampling.clone(),
        ),
        Request::chat(
            vec![Message::user("Name a colour.")],
            Sampling { max_tokens: 100, ..sampling.clone() },
        )
        .with_logprobs(3),
        Request::text("Once upon a time", sampling.clone()),
        Request::text("The weather today", Sampling { stop: vec![" the".into()], ..sampling })
            .with_logprobs(2),
    ]
}

#[tokio::test]
async fn replies_cross_the_wire_unchanged() {
    let direct = FakeBackend::new(FakeMode::Seeded);
    let server = start(Arc::new(FakeBackend::new(FakeMode::Seeded)), None).await;
    let remote = client(&server, None);
    assert_eq!(remote.info().spec, format!("openai:{}#fake-seeded", server.base_url));
    for request in requests() {
        let expected = direct.generate(request.clone(), None).await.unwrap();
        let got = remote.generate(request.clone(), None).await.unwrap();
        assert_eq!(got.text, expected.text, "{request:?}");
        assert_eq!(got.finish_reason, expected.finish_reason);
        assert_eq!(got.usage, expected.usage);
        assert_eq!(got.model, expected.model);
        match (&got.logprobs, &expected.logprobs) {
            (None, None) => {}
            (Some(got), Some(expected)) => {
                assert_eq!(got.len(), expected.len());
                for (got, expected) in got.iter().zip(expected) {
                    assert_eq!(got.token, expected.token);
                    assert!((got.logprob - expected.logprob).abs() < 1e-6);
                    let tokens = |entry: &agora_llm::TokenLogprob| {
                        let mut tokens: Vec<String> = entry.top.iter().map(|top| top.token.clone()).collect();
                        tokens.sort();
                        tokens
                    };
                    assert_eq!(tokens(got), tokens(expected));
                }
            }
            other => panic!("log-probs differ: {other:?}"),
        }
    }
}

#[tokio::test]
async fn streamed_replies_arrive_in_chunks_that_add_up() {
    let direct = FakeBackend::new(FakeMode::Seeded);
    let server = start(Arc::new(FakeBackend::new(FakeMode::Seeded)), None).await;
    let remote = client(&server, None);
    for request in requests() {
        let expected = direct.generate(request.clone(), None).await.unwrap();
        let (sink, mut chunks) = unbounded_channel();
        let got = remote.generate(request.clone(), Some(sink)).await.unwrap();
        let mut streamed = String::new();
        let mut pieces = 0;
        while let Ok(chunk) = chunks.try_recv() {
            streamed.push_str(&chunk.text);
            pieces += usize::from(!chunk.text.is_empty());
        }
        assert_eq!(streamed, expected.text, "{request:?}");
        assert_eq!(got.text, expected.text);
        assert_eq!(pieces, expected.usage.completion_tokens);
        assert_eq!(got.usage, expected.usage);
        assert_eq!(got.finish_reason, expected.finish_reason);
        assert_eq!(got.logprobs.map(|all| all.len()), expected.logprobs.map(|all| all.len()));
    }
}

#[tokio::test]
async fn the_token_is_required_and_a_refusal_is_not_retried() {
    let backend = Arc::new(FakeBackend::new(FakeMode::Echo));
    let server = start(backend.clone(), Some("sesame")).await;
    let request = Request::chat(vec![Message::user("hello there")], Sampling::default());

    let reply = client(&server, Some("sesame")).generate(request.clone(), None).await.unwrap();
    assert_eq!((reply.text.as_str(), reply.finish_reason), ("hello there", FinishReason::Stop));

    for key in [None, Some("wrong-key")] {
        let error = client(&server, key).generate(request.clone(), None).await.unwrap_err();
        match &error {
            LlmError::Status { status: 401, .. } => {}
            other => panic!("expected a 401, got {other:?}"),
        }
        assert!(!error.to_string().contains("wrong-key"), "{error}");
    }
    assert_eq!(backend.requests_served(), 1, "refused requests never reach the backend");
}
