//! A backend that needs no model: replies are a deterministic function of the request
//! (or a script), tokens are whitespace-separated words. Tests of discussions,
//! annotators, judges and the server run on it, and `fake:seeded` lets a user dry-run an
//! experiment file in seconds.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agora_core::{SplitMix64, mix64};

use crate::{
    Backend, BackendInfo, BoxFuture, Chunk, FinishReason, LlmError, Prompt, Reply, Request, Result,
    StreamSink, TokenLogprob, TopLogprob, Usage,
};

/// The fake replies that can be named in a [`crate::BackendSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeMode {
    /// Words drawn from a small vocabulary by a generator seeded with the request's seed
    /// and its prompt: the same request always gets the same reply, another seed or
    /// prompt another one.
    Seeded,
    /// The last message (or the text prompt), repeated back.
    Echo,
}

type ReplyFn = dyn Fn(&Request) -> Result<String> + Send + Sync;

enum Source {
    Mode(FakeMode),
    Script(Mutex<VecDeque<String>>),
    Function(Box<ReplyFn>),
}

pub struct FakeBackend {
    info: BackendInfo,
    source: Source,
    token_delay: Option<Duration>,
    served: AtomicUsize,
}

impl std::fmt::Debug for FakeBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("FakeBackend").field("info", &self.info).finish()
    }
}

const VOCABULARY: [&str; 24] = [
    "I", "think", "that", "we", "should", "consider", "the", "evidence", "because", "people", "often",
    "agree", "with", "this", "point", "but", "not", "always", "and", "it", "matters", "here", "really",
    "today",
];

impl FakeBackend {
    pub fn new(mode: FakeMode) -> FakeBackend {
        let name = match mode {
            FakeMode::Seeded => "seeded",
            FakeMode::Echo => "echo",
        };
        FakeBackend::with_source(Source::Mode(mode), name)
    }

    /// Replies with `replies` in order, one per request; a request after the last one is
    /// an error.
    pub fn scripted<I, S>(replies: I) -> FakeBackend
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let replies = replies.into_iter().map(Into::into).collect();
        FakeBackend::with_source(Source::Script(Mutex::new(replies)), "scripted")
    }

    /// Replies with whatever `reply` returns for the request.
    pub fn from_fn(reply: impl Fn(&Request) -> Result<String> + Send + Sync + 'static) -> FakeBackend {
        FakeBackend::with_source(Source::Function(Box::new(reply)), "function")
    }

    fn with_source(source: Source, name: &str) -> FakeBackend {
        let info = BackendInfo {
            kind: "fake".to_string(),
            spec: format!("fake:{name}"),
            model: format!("fake-{name}"),
        };
        FakeBackend { info, source, token_delay: None, served: AtomicUsize::new(0) }
    }

    /// Waits this long before each token, like a slow model (for concurrency and
    /// cancellation tests).
    pub fn with_token_delay(mut self, delay: Duration) -> FakeBackend {
        self.token_delay = Some(delay);
        self
    }

    /// How many requests have been answered (completed or not) so far.
    pub fn requests_served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    fn full_reply(&self, request: &Request) -> Result<String> {
        match &self.source {
            Source::Mode(FakeMode::Echo) => Ok(match &request.prompt {
                Prompt::Chat(messages) => {
                    messages.last().map(|message| message.content.clone()).unwrap_or_default()
                }
                Prompt::Text(text) => text.clone(),
            }),
            Source::Mode(FakeMode::Seeded) => {
                let seed = mix64(request.sampling.seed.unwrap_or(0) ^ fnv1a(&prompt_text(&request.prompt)));
                let mut rng = SplitMix64::new(seed);
                let words = 6 + (rng.next_u64() % 12) as usize;
                let text = (0..words)
                    .map(|_| VOCABULARY[(rng.next_u64() % VOCABULARY.len() as u64) as usize])
                    .collect::<Vec<_>>()
                    .join(" ");
                Ok(format!("{text}."))
            }
            Source::Script(replies) => {
                let mut replies =
                    replies.lock().map_err(|_| LlmError::Model("fake script lock poisoned".into()))?;
                replies.pop_front().ok_or_else(|| {
                    LlmError::InvalidRequest(format!(
                        "the scripted fake backend has no reply left ({} served)",
                        self.requests_served()
                    ))
                })
            }
            Source::Function(reply) => reply(request),
        }
    }

    async fn run(&self, request: Request, stream: Option<StreamSink>) -> Result<Reply> {
        self.served.fetch_add(1, Ordering::SeqCst);
        let full = self.full_reply(&request)?;
        let sampling = &request.sampling;
        let (text, mut finish_reason) =
            match sampling.stop.iter().filter_map(|stop| full.find(stop.as_str())).min() {
                Some(cut) => (full[..cut].to_string(), FinishReason::Stop),
                None => (full, FinishReason::Stop),
            };
        // Tokens: words with the space in front of them, as BPE tokenizers split text.
        let mut tokens: Vec<String> = Vec::new();
        for (index, word) in text.split(' ').enumerate() {
            tokens.push(if index == 0 { word.to_string() } else { format!(" {word}") });
        }
        if tokens.len() > sampling.max_tokens {
            tokens.truncate(sampling.max_tokens);
            finish_reason = FinishReason::Length;
        }
        let mut logprobs = request.logprobs.map(|_| Vec::with_capacity(tokens.len()));
        let mut reply_text = String::new();
        for (index, token) in tokens.iter().enumerate() {
            if let Some(delay) = self.token_delay {
                tokio::time::sleep(delay).await;
            }
            reply_text.push_str(token);
            let logprob = request.logprobs.map(|top| fake_logprob(token, index, top));
            if let (Some(all), Some(logprob)) = (logprobs.as_mut(), logprob.as_ref()) {
                all.push(logprob.clone());
            }
            if let Some(sink) = &stream {
                let chunk = Chunk { text: token.clone(), logprobs: logprob.into_iter().collect() };
                if sink.send(chunk).is_err() {
                    return Err(LlmError::Cancelled);
                }
            }
        }
        Ok(Reply {
            text: reply_text,
            finish_reason,
            usage: Usage {
                prompt_tokens: prompt_text(&request.prompt).split_whitespace().count(),
                completion_tokens: tokens.len(),
            },
            logprobs,
            model: self.info.model.clone(),
        })
    }
}

impl Backend for FakeBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn generate(&self, request: Request, stream: Option<StreamSink>) -> BoxFuture<'_, Result<Reply>> {
        Box::pin(self.run(request, stream))
    }
}

fn prompt_text(prompt: &Prompt) -> String {
    match prompt {
        Prompt::Chat(messages) => messages
            .iter()
            .map(|message| format!("{}: {}\n", message.role.as_str(), message.content))
            .collect(),
        Prompt::Text(text) => text.clone(),
    }
}

fn fnv1a(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}

/// A made-up but deterministic log-prob; alternatives are less likely than the token.
fn fake_logprob(token: &str, index: usize, top: usize) -> TokenLogprob {
    let logprob = -0.05 * (1 + fnv1a(token) % 20) as f32 - 0.01 * (index % 3) as f32;
    let alternatives = (0..top).map(|rank| TopLogprob {
        token: if rank == 0 { token.to_string() } else { format!("{token}~{rank}") },
        logprob: logprob - rank as f32,
    });
    TokenLogprob { token: token.to_string(), logprob, top: alternatives.collect() }
}

#[cfg(test)]
mod tests {
    use agora_core::Message;
    use tokio::sync::mpsc::unbounded_channel;

    use super::*;
    use crate::Sampling;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(future)
    }

    #[test]
    fn seeded_replies_depend_on_seed_and_prompt_only() {
        let backend = FakeBackend::new(FakeMode::Seeded);
        let backend: &dyn Backend = &backend;
        let ask = |seed: u64, text: &str| {
            let sampling = Sampling { seed: Some(seed), ..Sampling::default() };
            block_on(backend.chat(vec![Message::user(text)], sampling)).unwrap().text
        };
        assert_eq!(ask(1, "hello"), ask(1, "hello"));
        assert_ne!(ask(1, "hello"), ask(2, "hello"));
        assert_ne!(ask(1, "hello"), ask(1, "goodbye"));
        assert!(ask(7, "hello").ends_with('.'));
    }

    #[test]
    fn stop_strings_max_tokens_and_usage() {
        let backend = FakeBackend::new(FakeMode::Echo);
        let backend: &dyn Backend = &backend;
        let reply = block_on(
            backend.complete("one two three four", Sampling { max_tokens: 2, ..Sampling::default() }),
        )
        .unwrap();
        assert_eq!((reply.text.as_str(), reply.finish_reason.clone()), ("one two", FinishReason::Length));
        assert_eq!(reply.usage, Usage { prompt_tokens: 4, completion_tokens: 2 });
        let sampling = Sampling { stop: vec![" three".into()], ..Sampling::default() };
        let reply = block_on(backend.complete("one two three four", sampling)).unwrap();
        assert_eq!((reply.text.as_str(), reply.finish_reason), ("one two", FinishReason::Stop));
    }

    #[test]
    fn streamed_chunks_add_up_to_the_reply_and_carry_logprobs() {
        let backend = FakeBackend::new(FakeMode::Echo);
        let (sink, mut chunks) = unbounded_channel();
        let request = Request::text("a bb ccc", Sampling::default()).with_logprobs(2);
        let reply = block_on(backend.generate(request, Some(sink))).unwrap();
        let mut streamed = String::new();
        let mut count = 0;
        while let Ok(chunk) = chunks.try_recv() {
            assert_eq!(chunk.logprobs.len(), 1);
            assert_eq!(chunk.logprobs[0].top.len(), 2);
            streamed.push_str(&chunk.text);
            count += 1;
        }
        assert_eq!((streamed.as_str(), count), (reply.text.as_str(), 3));
        let logprobs = reply.logprobs.unwrap();
        assert_eq!(logprobs.len(), 3);
        assert!(logprobs.iter().all(|entry| entry.logprob < 0.0 && entry.top[1].logprob < entry.logprob));
    }

    #[test]
    fn a_script_runs_out_with_an_error() {
        let backend = FakeBackend::scripted(["first", "second"]);
        let backend: &dyn Backend = &backend;
        let sampling = Sampling::default();
        assert_eq!(block_on(backend.complete("x", sampling.clone())).unwrap().text, "first");
        assert_eq!(block_on(backend.complete("x", sampling.clone())).unwrap().text, "second");
        let error = block_on(backend.complete("x", sampling)).unwrap_err().to_string();
        assert!(error.contains("no reply left (3 served)"), "{error}");
    }

    #[test]
    fn a_dropped_stream_cancels() {
        let backend = FakeBackend::new(FakeMode::Echo);
        let (sink, chunks) = unbounded_channel();
        drop(chunks);
        let error =
            block_on(backend.generate(Request::text("a b", Sampling::default()), Some(sink))).unwrap_err();
        assert!(matches!(error, LlmError::Cancelled));
    }
}
