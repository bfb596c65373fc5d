//! The native backend: agora-model's [`Engine`] behind the [`Backend`] trait, with
//! continuous batching.
//!
//! The model runs on ONE dedicated thread that owns the engine, never on the async
//! runtime's threads (a forward pass takes milliseconds to seconds of CPU and would
//! stall every other task). Requests reach it over a channel, each with a oneshot for
//! its reply and an optional [`StreamSink`]. Before every step the worker admits every
//! request that has arrived (up to [`NativeOptions::max_batch`] rows), so requests that
//! arrive together, or while others are running, share the model's forward calls
//! ([`BatchGenerator`]). A row stops early when its reply future was dropped or its
//! stream's receiver is gone. A model error fails the rows of that step and the worker
//! goes on serving later requests.
//!
//! Streaming: text pieces come from the tokenizer's incremental decoder; text that could
//! be the start of a stop string is held back until it is known not to be one, so the
//! chunks always add up to the reply's text.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use agora_model::generate::{FinishReason as ModelFinishReason, GenerateOptions, Generation};
use agora_model::{
    BatchGenerator, Engine, IncrementalDecoder, LanguageModel, RowEvent, RowId, RowRequest, SamplingConfig,
    TokenLogprobs, Tokenizer,
};
use tokio::sync::oneshot;

use crate::{
    Backend, BackendInfo, BoxFuture, Chunk, FinishReason, LlmError, Prompt, Reply, Request, Result, Sampling,
    StreamSink, TokenLogprob, TopLogprob, Usage,
};

/// The most alternatives a request may ask for per token (the OpenAI API's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How the native backend schedules work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeOptions {
    /// The most requests decoded together; later ones wait for a free row.
    pub max_batch: usize,
}

impl Default for NativeOptions {
    fn default() -> NativeOptions {
        NativeOptions { max_batch: 64 }
    }
}

/// What the worker has done so far (for tests and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NativeStats {
    /// The most rows that took part in one step.
    pub largest_batch: usize,
    /// Steps run (each is one decode forward and, when rows joined, one prefill).
    pub steps: u64,
    /// Requests admitted into the batch.
    pub requests: u64,
    /// Tokens generated over all requests.
    pub generated_tokens: u64,
    /// Steps that failed with a model error.
    pub model_errors: u64,
    /// Prompt tokens whose keys and values came from a prefix shared by requests that
    /// joined together, instead of being computed once per request.
    pub prefix_tokens_reused: u64,
}

/// A request on its way to the worker.
struct Job {
    request: Request,
    sink: Option<StreamSink>,
    reply: oneshot::Sender<Result<Reply>>,
}

/// Serves requests from a model loaded in this process (see the module documentation).
pub struct NativeBackend {
    info: BackendInfo,
    jobs: Option<Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    stats: Arc<Mutex<NativeStats>>,
}

impl std::fmt::Debug for NativeBackend {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NativeBackend")
            .field("info", &self.info)
            .field("stats", &self.stats())
            .finish()
    }
}

impl NativeBackend {
    /// Starts the worker thread, which takes ownership of `engine`. Fails only when the
    /// operating system refuses a thread.
    pub fn new(engine: Engine, options: NativeOptions) -> Result<NativeBackend> {
        let model_name = engine
            .path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| engine.path.display().to_string());
        let info = BackendInfo {
            kind: "native".to_string(),
            spec: format!("native:{}", engine.path.display()),
            model: model_name.clone(),
        };
        let (jobs, receiver) = mpsc::channel();
        let stats = Arc::new(Mutex::new(NativeStats::default()));
        let worker_stats = Arc::clone(&stats);
        let worker = std::thread::Builder::new()
            .name("agora-native-model".to_string())
            .spawn(move || {
                Worker { engine: &engine, options, stats: worker_stats, model_name }.run(receiver);
            })
            .map_err(|error| LlmError::Model(format!("cannot start the native model thread: {error}")))?;
        Ok(NativeBackend { info, jobs: Some(jobs), worker: Some(worker), stats })
    }

    /// What the worker has done so far.
    pub fn stats(&self) -> NativeStats {
        self.stats.lock().map(|stats| *stats).unwrap_or_default()
    }
}

impl Drop for NativeBackend {
    /// Closes the channel and waits for the worker, which stops after its current step
    /// (no future of this backend can be alive any more: they borrow it).
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            // A worker that panicked has already reported it; nothing is left to clean.
            let _ = worker.join();
        }
    }
}

impl Backend for NativeBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn generate(&self, request: Request, stream: Option<StreamSink>) -> BoxFuture<'_, Result<Reply>> {
        let (reply, receiver) = oneshot::channel();
        let sent =
            self.jobs.as_ref().is_some_and(|jobs| jobs.send(Job { request, sink: stream, reply }).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(LlmError::Model("the native model thread has stopped".to_string()));
            }
            receiver.await.map_err(|_| {
                LlmError::Model(
                    "the native model thread stopped before replying (see its error output)".to_string(),
                )
            })?
        })
    }
}

/// Maps the API's sampling parameters onto the engine's. Unset extras are switched off
/// (`top_k` 0, `min_p` 0, `repetition_penalty` 1); no seed means seed 0, so an unseeded
/// request is reproducible too.
pub fn sampling_config(sampling: &Sampling) -> SamplingConfig {
    SamplingConfig {
        temperature: sampling.temperature,
        top_k: sampling.top_k.unwrap_or(0),
        top_p: sampling.top_p,
        min_p: sampling.min_p.unwrap_or(0.0),
        repetition_penalty: sampling.repetition_penalty.unwrap_or(1.0),
        no_repeat_ngram_size: 0,
        max_new_tokens: sampling.max_tokens,
        stop_strings: sampling.stop.clone(),
        stop_token_ids: Vec::new(),
        seed: sampling.seed.unwrap_or(0),
    }
}

/// The model thread's state that lives as long as the thread.
struct Worker<'e> {
    engine: &'e Engine,
    options: NativeOptions,
    stats: Arc<Mutex<NativeStats>>,
    model_name: String,
}

/// A request being generated.
struct Active<'e> {
    reply: oneshot::Sender<Result<Reply>>,
    sink: Option<StreamSink>,
    decoder: IncrementalDecoder<'e>,
    stops: Vec<String>,
    /// Alternatives per token when log-probs were asked for.
    top_logprobs: Option<usize>,
    prompt_tokens: usize,
    /// The text decoded so far.
    text: String,
    /// Bytes of `text` already streamed.
    streamed: usize,
    /// Log-probs of tokens whose text has not been streamed yet.
    unsent_logprobs: Vec<TokenLogprob>,
    logprobs: Vec<TokenLogprob>,
}

impl<'e> Worker<'e> {
    fn run(self, jobs: Receiver<Job>) {
        let decode = |tokens: &[u32]| self.engine.tokenizer.decode(tokens, true);
        let generate_options = GenerateOptions {
            eos_token_ids: self.engine.tokenizer.eos_token_ids().to_vec(),
            decoder: Some(&decode),
            capture_attention: false,
        };
        let model: &dyn LanguageModel = &self.engine.model;
        let mut generator = BatchGenerator::new(model, generate_options.clone());
        let mut queue: VecDeque<Job> = VecDeque::new();
        let mut active: HashMap<RowId, Active<'e>> = HashMap::new();
        // What generators replaced after a model error had reused.
        let mut reused_before = 0u64;
        loop {
            if active.is_empty() && queue.is_empty() {
                match jobs.recv() {
                    Ok(job) => queue.push_back(job),
                    Err(_) => return,
                }
            }
            loop {
                match jobs.try_recv() {
                    Ok(job) => queue.push_back(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            self.cancel_abandoned(&mut generator, &mut active);
            while active.len() < self.options.max_batch.max(1) {
                let Some(job) = queue.pop_front() else { break };
                self.admit(&mut generator, &mut active, job);
            }
            if generator.is_idle() {
                continue;
            }
            let batch = generator.active_rows();
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| generator.step()));
            let result = match step {
                Ok(result) => result.map_err(|error| error.to_string()),
                Err(panic) => Err(panic_message(panic.as_ref())),
            };
            let reused = reused_before + generator.prefix_tokens_reused() as u64;
            self.update_stats(|stats| {
                stats.largest_batch = stats.largest_batch.max(batch);
                stats.steps += 1;
                stats.prefix_tokens_reused = reused;
            });
            match result {
                Ok(events) => self.handle_events(&mut generator, &mut active, events),
                Err(message) => {
                    // The generator's state is undefined after a failed step: every row
                    // in it fails, and a fresh generator serves what comes next.
                    for (_, row) in active.drain() {
                        let _ = row.reply.send(Err(LlmError::Model(message.clone())));
                    }
                    reused_before = reused;
                    generator = BatchGenerator::new(model, generate_options.clone());
                    self.update_stats(|stats| stats.model_errors += 1);
                }
            }
        }
    }

    fn update_stats(&self, update: impl FnOnce(&mut NativeStats)) {
        if let Ok(mut stats) = self.stats.lock() {
            update(&mut stats);
        }
    }

    /// Stops the rows whose caller is gone: the reply future was dropped, or the stream's
    /// receiver.
    fn cancel_abandoned(&self, generator: &mut BatchGenerator<'_>, active: &mut HashMap<RowId, Active<'e>>) {
        let abandoned: Vec<RowId> = active
            .iter()
            .filter(|(_, row)| row.reply.is_closed() || row.sink.as_ref().is_some_and(StreamSink::is_closed))
            .map(|(&id, _)| id)
            .collect();
        for id in abandoned {
            // The partial generation is of no use to anyone; a decoding failure in it neither.
            let _ = generator.cancel(id);
            if let Some(row) = active.remove(&id) {
                let _ = row.reply.send(Err(LlmError::Cancelled));
            }
        }
    }

    /// Turns a request into a row, or answers it with the reason it cannot be served.
    fn admit(&self, generator: &mut BatchGenerator<'_>, active: &mut HashMap<RowId, Active<'e>>, job: Job) {
        let Job { request, sink, reply } = job;
        if reply.is_closed() {
            return;
        }
        let admitted = self.row_request(&request).and_then(|row| {
            let prompt_tokens = row.prompt.len();
            let id = generator.add(row).map_err(|error| LlmError::InvalidRequest(error.to_string()))?;
            Ok((id, prompt_tokens))
        });
        match admitted {
            Ok((id, prompt_tokens)) => {
                self.update_stats(|stats| stats.requests += 1);
                active.insert(
                    id,
                    Active {
                        reply,
                        sink,
                        decoder: self.engine.tokenizer.incremental_decoder(true),
                        stops: request.sampling.stop,
                        top_logprobs: request.logprobs,
                        prompt_tokens,
                        text: String::new(),
                        streamed: 0,
                        unsent_logprobs: Vec::new(),
                        logprobs: Vec::new(),
                    },
                );
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// The prompt's tokens: a chat through the model's chat template, raw text with the
    /// tokenizer's special tokens (a BOS token where the model uses one).
    fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let tokens = match prompt {
            Prompt::Chat(messages) => {
                let messages: Vec<agora_model::Message> = messages
                    .iter()
                    .map(|message| agora_model::Message::new(message.role.as_str(), message.content.clone()))
                    .collect();
                self.engine.chat_prompt(&messages)
            }
            Prompt::Text(text) => self.engine.tokenizer.encode(text, true),
        };
        tokens.map_err(|error| LlmError::InvalidRequest(format!("the prompt cannot be encoded: {error}")))
    }

    fn row_request(&self, request: &Request) -> Result<RowRequest> {
        let prompt = self.encode_prompt(&request.prompt)?;
        let context = self.engine.model.max_context();
        if prompt.len() > context {
            return Err(LlmError::InvalidRequest(format!(
                "the prompt has {} tokens, more than the model's context of {context}",
                prompt.len()
            )));
        }
        if prompt.is_empty() {
            return Err(LlmError::InvalidRequest("the prompt is empty".to_string()));
        }
        if let Some(top) = request.logprobs.filter(|&top| top > MAX_TOP_LOGPROBS) {
            return Err(LlmError::InvalidRequest(format!(
                "top_logprobs is {top}; at most {MAX_TOP_LOGPROBS} alternatives per token"
            )));
        }
        let config = sampling_config(&request.sampling);
        config.validate().map_err(|error| LlmError::InvalidRequest(error.to_string()))?;
        Ok(RowRequest { prompt, config, logprobs: request.logprobs, random_stream: 0 })
    }

    fn handle_events(
        &self,
        generator: &mut BatchGenerator<'_>,
        active: &mut HashMap<RowId, Active<'e>>,
        events: Vec<RowEvent>,
    ) {
        for event in events {
            match event {
                RowEvent::Token { row, token, logprobs } => {
                    let Some(state) = active.get_mut(&row) else { continue };
                    if let Err(error) = self.take_token(state, token, logprobs) {
                        let _ = generator.cancel(row);
                        if let Some(state) = active.remove(&row) {
                            let _ = state.reply.send(Err(error));
                        }
                    }
                }
                RowEvent::Finished { row, generation } => {
                    let Some(state) = active.remove(&row) else { continue };
                    self.update_stats(|stats| stats.generated_tokens += generation.generated_tokens as u64);
                    let (reply, answer) = self.finish(state, &generation);
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// Decodes a new token, records its log-probs, and streams whatever text is safe to
    /// show. An error means the row must stop (`Cancelled` when the stream's receiver is
    /// gone).
    fn take_token(&self, state: &mut Active<'e>, token: u32, logprobs: Option<TokenLogprobs>) -> Result<()> {
        let tokenizer = &self.engine.tokenizer;
        // An end-of-sequence token shows no text and has no place among the log-probs of
        // the reply's text.
        if tokenizer.eos_token_ids().contains(&token) {
            return Ok(());
        }
        if let Some(piece) = state.decoder.step(token).map_err(|error| LlmError::Model(error.to_string()))? {
            state.text.push_str(&piece);
        }
        if let (Some(_), Some(logprobs)) = (state.top_logprobs, logprobs) {
            let entry = api_logprob(tokenizer, &logprobs);
            state.logprobs.push(entry.clone());
            state.unsent_logprobs.push(entry);
        }
        let Some(sink) = &state.sink else { return Ok(()) };
        let shown = safe_to_show(&state.text, &state.stops);
        if shown > state.streamed {
            let chunk = Chunk {
                text: state.text[state.streamed..shown].to_string(),
                logprobs: std::mem::take(&mut state.unsent_logprobs),
            };
            state.streamed = shown;
            sink.send(chunk).map_err(|_| LlmError::Cancelled)?;
        }
        Ok(())
    }

    /// The reply of a finished row, after streaming what remains of its text.
    fn finish(
        &self,
        state: Active<'e>,
        generation: &Generation,
    ) -> (oneshot::Sender<Result<Reply>>, Result<Reply>) {
        let Active {
            reply,
            sink,
            mut decoder,
            stops,
            top_logprobs,
            prompt_tokens,
            mut text,
            streamed,
            unsent_logprobs,
            logprobs,
        } = state;
        match decoder.finish() {
            Ok(rest) => text.push_str(&rest),
            Err(error) => return (reply, Err(LlmError::Model(error.to_string()))),
        }
        if let Some(cut) = first_stop(&text, &stops) {
            text.truncate(cut);
        }
        if let Some(sink) = &sink {
            let rest = text.get(streamed..).unwrap_or_default();
            if (!rest.is_empty() || !unsent_logprobs.is_empty())
                && sink.send(Chunk { text: rest.to_string(), logprobs: unsent_logprobs }).is_err()
            {
                return (reply, Err(LlmError::Cancelled));
            }
        }
        let finish_reason = match generation.finish_reason {
            ModelFinishReason::Stop | ModelFinishReason::Eos => FinishReason::Stop,
            ModelFinishReason::Length => FinishReason::Length,
            ModelFinishReason::Cancelled => FinishReason::Cancelled,
        };
        let answer = Reply {
            text,
            finish_reason,
            usage: Usage { prompt_tokens, completion_tokens: generation.generated_tokens },
            logprobs: top_logprobs.map(|_| logprobs),
            model: self.model_name.clone(),
        };
        (reply, Ok(answer))
    }
}

/// Where the first stop string starts in `text`, if one occurs.
fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|stop| text.find(stop.as_str())).min()
}

/// How much of `text` can be streamed: everything before the first stop string, and
/// never an ending that could still grow into one.
fn safe_to_show(text: &str, stops: &[String]) -> usize {
    if let Some(cut) = first_stop(text, stops) {
        return cut;
    }
    let could_grow_into_a_stop = |start: usize| {
        let ending = &text[start..];
        stops.iter().any(|stop| stop.len() > ending.len() && stop.starts_with(ending))
    };
    // The earliest start of an ending that is a proper prefix of a stop string.
    text.char_indices()
        .map(|(start, _)| start)
        .find(|&start| could_grow_into_a_stop(start))
        .unwrap_or(text.len())
}

/// A token's log-probs with the tokenizer's text for each token.
fn api_logprob(tokenizer: &Tokenizer, logprobs: &TokenLogprobs) -> TokenLogprob {
    TokenLogprob {
        token: token_text(tokenizer, logprobs.token),
        logprob: logprobs.logprob,
        top: logprobs
            .top
            .iter()
            .map(|&(token, logprob)| TopLogprob { token: token_text(tokenizer, token), logprob })
            .collect(),
    }
}

/// The text of one token as the OpenAI API shows it (special tokens included; a
/// byte-level token that is part of a character comes out as U+FFFD). A token the
/// tokenizer cannot decode falls back to its vocabulary entry.
fn token_text(tokenizer: &Tokenizer, token: u32) -> String {
    tokenizer
        .decode(&[token], false)
        .ok()
        .or_else(|| tokenizer.id_to_token(token))
        .unwrap_or_else(|| format!("<token {token}>"))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    format!("the model panicked: {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_could_become_a_stop_string_is_held_back() {
        let stops = vec!["\nUser:".to_string(), "END".to_string()];
        assert_eq!(safe_to_show("hello", &stops), 5);
        assert_eq!(safe_to_show("hello\nUs", &stops), 5);
        assert_eq!(safe_to_show("hello E", &stops), 6);
        assert_eq!(safe_to_show("hello\nUser: hi", &stops), 5);
        assert_eq!(safe_to_show("a ENDING", &stops), 2);
        assert_eq!(safe_to_show("héllo\n", &stops), "héllo".len());
        assert_eq!(safe_to_show("anything", &[]), 8);
    }

    #[test]
    fn sampling_maps_onto_the_engine_configuration() {
        let config = sampling_config(&Sampling::greedy(7));
        assert_eq!(config, SamplingConfig { max_new_tokens: 7, ..SamplingConfig::default() });
        let sampling = Sampling {
            temperature: 0.7,
            top_p: 0.9,
            max_tokens: 3,
            stop: vec!["x".to_string()],
            seed: Some(5),
            top_k: Some(40),
            min_p: Some(0.05),
            repetition_penalty: Some(1.1),
        };
        let config = sampling_config(&sampling);
        assert_eq!(
            (config.temperature, config.top_p, config.max_new_tokens, config.seed, config.top_k),
            (0.7, 0.9, 3, 5, 40)
        );
        assert_eq!((config.min_p, config.repetition_penalty), (0.05, 1.1));
        assert_eq!(config.stop_strings, vec!["x".to_string()]);
    }
}
