//! The generation loop: a stepper ([`BatchGenerator`]) that rows can join while others
//! are decoding (continuous batching), and [`generate`] for a fixed batch of prompts on
//! top of it. Each row has its own sampling configuration and stops on its own (end of
//! sequence, stop tokens, stop strings, token cap, the caller); every token is reported
//! as soon as it is chosen, with its log-probabilities when the row asked for them.
//!
//! The running batch shares one key/value cache whose rows are RIGHT-aligned: the newest
//! token of every row sits in the last column, and a row with fewer tokens than the
//! cache holds is left-padded (pad id 0, never seen by the model because the padding
//! mask hides it). A step is one decode forward for the running rows and, when rows were
//! added since the last step, one prefill forward for the newcomers (left-padded to the
//! longest among them); the newcomers' cache is then merged into the running one by
//! left-padding the shorter side along the sequence axis. Positions are the model's
//! business: the architectures of this crate number a token by the real tokens before it
//! (`cumsum(mask) - 1`, as transformers' `generate` does), so padding shifts nothing, and
//! a row yields the same tokens whether it runs alone, in a fixed batch, or joins one in
//! mid-flight (up to floating-point rounding of the batched matrix products). Rows that
//! join together and begin with the same tokens (a chat template's system prompt) have
//! that prefix computed once; their padding then lies between the prefix and the rest of
//! the prompt instead of in front (see [`BatchGenerator::prefill`]). Rows that
//! finish or are cancelled leave the cache before the next forward, and columns that
//! have become padding in every row are cut, so a long straggler pays neither for
//! finished rows nor for their length.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use crate::engine::on_pool;
use crate::sampling::Sampler;
use crate::{Cache, LanguageModel, ModelError, Result, SamplingConfig};

/// Turns token ids into text, for stop strings and for [`Generation::text`].
/// Implemented for every `Fn(&[u32]) -> Result<String>`.
pub trait TokenDecoder {
    fn decode(&self, tokens: &[u32]) -> Result<String>;
}

impl<F: Fn(&[u32]) -> Result<String>> TokenDecoder for F {
    fn decode(&self, tokens: &[u32]) -> Result<String> {
        self(tokens)
    }
}

/// What the streaming callback wants after seeing a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep generating.
    Continue,
    /// Finish this row now (its reason becomes [`FinishReason::Cancelled`]).
    Stop,
    /// Finish every row now.
    StopAll,
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop string or one of `stop_token_ids`.
    Stop,
    /// `max_new_tokens`, or the model's context is full.
    Length,
    /// An end-of-sequence token of the model.
    Eos,
    /// The callback asked to stop, or the row was cancelled.
    Cancelled,
}

/// A generated token's log-probability under the model's raw distribution (log-softmax
/// of the logits, before temperature, top-k/top-p/min-p and penalties), and the most
/// likely tokens at that position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// `(token, logprob)` of the most likely tokens, most likely first (ties in token
    /// order); as many as the row asked for.
    pub top: Vec<(u32, f32)>,
}

/// One prompt's continuation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Every generated token, the final end-of-sequence or stop token included (as in
    /// transformers' output sequences).
    pub tokens: Vec<u32>,
    /// The decoded continuation when a decoder was given: without a final
    /// end-of-sequence/stop token, cut before the first stop string.
    pub text: Option<String>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// With [`GenerateOptions::capture_attention`]: one entry per forward call that
    /// included this row (the prompt, then each generated token but the last), per layer
    /// the attention probabilities `[heads, queries, keys]`, padding rows and columns
    /// removed, so keys are exactly this row's prompt and generated tokens.
    pub attention: Option<Vec<Vec<Tensor>>>,
    /// When the row asked for log-probs ([`RowRequest::logprobs`]): one entry per token
    /// of `tokens`.
    pub logprobs: Option<Vec<TokenLogprobs>>,
}

/// What generation needs beyond the sampling configuration.
#[derive(Default, Clone)]
pub struct GenerateOptions<'a> {
    /// The model's end-of-sequence tokens (from the tokenizer or the model file).
    pub eos_token_ids: Vec<u32>,
    /// Needed for stop strings and to fill [`Generation::text`].
    pub decoder: Option<&'a dyn TokenDecoder>,
    /// Record attention probabilities (costs memory: one tensor per layer per step).
    pub capture_attention: bool,
}

impl std::fmt::Debug for GenerateOptions<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GenerateOptions")
            .field("eos_token_ids", &self.eos_token_ids)
            .field("decoder", &self.decoder.map(|_| "..."))
            .field("capture_attention", &self.capture_attention)
            .finish()
    }
}

/// Names a row of a [`BatchGenerator`] from [`BatchGenerator::add`] to its
/// [`RowEvent::Finished`]. Ids are handed out in order, starting at 0, and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowId(pub u64);

/// A prompt to continue, with its own way of choosing tokens.
#[derive(Debug, Clone)]
pub struct RowRequest {
    pub prompt: Vec<u32>,
    pub config: SamplingConfig,
    /// `Some(n)`: report each generated token's log-prob and the `n` most likely tokens
    /// (computed only for rows that ask).
    pub logprobs: Option<usize>,
    /// Which random stream of `config.seed` the row draws from. 0 is the stream a prompt
    /// gets alone (what a request served on its own should use); [`generate`] gives batch
    /// row `r` stream `r`, as it always has.
    pub random_stream: usize,
}

impl RowRequest {
    /// A row on random stream 0, without log-probs.
    pub fn new(prompt: Vec<u32>, config: SamplingConfig) -> RowRequest {
        RowRequest { prompt, config, logprobs: None, random_stream: 0 }
    }

    pub fn with_logprobs(mut self, top: usize) -> RowRequest {
        self.logprobs = Some(top);
        self
    }
}

/// What a step reports, in order: for each row that got a token, its `Token`, followed
/// by `Finished` when that token ended it.
#[derive(Debug, Clone)]
pub enum RowEvent {
    Token { row: RowId, token: u32, logprobs: Option<TokenLogprobs> },
    Finished { row: RowId, generation: Generation },
}

/// Pad id written into the left padding; the mask hides it, so any valid id would do.
const PAD_TOKEN_ID: u32 = 0;

/// The fewest leading tokens that rows joining together must share for their prefill to
/// compute those tokens once ([`BatchGenerator::prefill`]); a shorter prefix saves less
/// than its extra forward call costs.
pub const SHARED_PREFIX_MIN: usize = 8;

/// How many leading tokens every row of `rows` shares, leaving each at least one token
/// of its own (the forward that follows must end on a real token in every row); 0 when
/// that is under [`SHARED_PREFIX_MIN`] or there is only one row.
fn shared_prefix(prompts: &[&[u32]]) -> usize {
    let Some((first, others)) = prompts.split_first() else { return 0 };
    if others.is_empty() {
        return 0;
    }
    let shortest = prompts.iter().map(|prompt| prompt.len()).min().unwrap_or(0);
    let common = others.iter().fold(shortest.saturating_sub(1), |common, prompt| {
        first.iter().zip(prompt.iter()).take(common).take_while(|(a, b)| a == b).count()
    });
    if common >= SHARED_PREFIX_MIN { common } else { 0 }
}

/// The state of one row while generating.
struct Row {
    id: RowId,
    config: SamplingConfig,
    logprobs: Option<usize>,
    prompt_tokens: usize,
    /// Prompt followed by the generated tokens: what the penalties look at.
    history: Vec<u32>,
    /// How many tokens of `history` are in the cache (the rest, at most one, waits to be
    /// fed by the next decode).
    fed: usize,
    /// Padding columns inside the row's stretch of the cache: `(real tokens before it,
    /// padding columns)`, `(0, 0)` for none. A row prefilled after a prefix it shares
    /// with the rows that joined with it has one (see [`BatchGenerator::prefill`]).
    gap: (usize, usize),
    sampler: Sampler,
    /// Set once the row has ended; its `Finished` event has then been sent, and the row
    /// leaves the batch before the next forward.
    finish_reason: Option<FinishReason>,
    /// Where the first stop string starts in the decoded text.
    stop_at: Option<usize>,
    attention: Option<Vec<Vec<Tensor>>>,
    token_logprobs: Option<Vec<TokenLogprobs>>,
}

impl Row {
    fn generated(&self) -> &[u32] {
        &self.history[self.prompt_tokens..]
    }

    /// Cache columns from the row's first real token to the last column.
    fn span(&self) -> usize {
        self.fed + self.gap.1
    }

    /// Where the row's tokens sit in a cache of `columns` columns.
    fn columns(&self, columns: usize) -> RowColumns {
        RowColumns { padding: columns.saturating_sub(self.span()), gap: self.gap }
    }
}

/// The masked columns of one cache row: `padding` in front, then `gap.1` more after the
/// first `gap.0` real tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowColumns {
    padding: usize,
    gap: (usize, usize),
}

/// Continuous batching: rows are added at any time and advance one token per
/// [`step`](BatchGenerator::step) (see the module documentation).
pub struct BatchGenerator<'a> {
    model: &'a dyn LanguageModel,
    options: GenerateOptions<'a>,
    next_id: u64,
    /// Added since the last step: prefilled by the next one.
    waiting: Vec<Row>,
    /// Rows of the cache, in cache order (`running[b]` is batch row `b`).
    running: Vec<Row>,
    cache: Cache,
    /// Prompt tokens whose keys and values were copied from a shared prefix instead of
    /// computed (see [`BatchGenerator::prefill`]).
    prefix_tokens_reused: usize,
}

impl std::fmt::Debug for BatchGenerator<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BatchGenerator")
            .field("options", &self.options)
            .field("waiting", &self.waiting.len())
            .field("running", &self.running.len())
            .field("cache_len", &self.cache.len)
            .finish()
    }
}

impl<'a> BatchGenerator<'a> {
    pub fn new(model: &'a dyn LanguageModel, options: GenerateOptions<'a>) -> BatchGenerator<'a> {
        let mut cache = model.new_cache();
        if options.capture_attention {
            cache = cache.capture_attention();
        }
        BatchGenerator {
            model,
            options,
            next_id: 0,
            waiting: Vec::new(),
            running: Vec::new(),
            cache,
            prefix_tokens_reused: 0,
        }
    }

    /// Queues a row; the next step prefills it. Fails, adding nothing, on an empty
    /// prompt, one longer than the model's context or holding a token outside the
    /// vocabulary, a sampling configuration that has no meaning, or stop strings without
    /// a decoder.
    pub fn add(&mut self, request: RowRequest) -> Result<RowId> {
        let RowRequest { prompt, config, logprobs, random_stream } = request;
        check_prompt(self.model, &prompt)
            .map_err(|problem| ModelError::Config(format!("generation: {problem}")))?;
        if !config.stop_strings.is_empty() && self.options.decoder.is_none() {
            return Err(ModelError::Config(
                "generation: stop strings need a token decoder (GenerateOptions::decoder)".to_string(),
            ));
        }
        let sampler = Sampler::new(&config, random_stream)?;
        let id = RowId(self.next_id);
        self.next_id += 1;
        self.waiting.push(Row {
            id,
            logprobs,
            prompt_tokens: prompt.len(),
            history: prompt,
            fed: 0,
            gap: (0, 0),
            sampler,
            finish_reason: None,
            stop_at: None,
            attention: self.options.capture_attention.then(Vec::new),
            token_logprobs: logprobs.map(|_| Vec::new()),
            config,
        });
        Ok(id)
    }

    /// Rows that have not finished (waiting or running).
    pub fn active_rows(&self) -> usize {
        self.waiting.len() + self.running.iter().filter(|row| row.finish_reason.is_none()).count()
    }

    /// Prompt tokens not computed so far because rows that joined together shared them
    /// (each shared prefix counts once per row beyond the first).
    pub fn prefix_tokens_reused(&self) -> usize {
        self.prefix_tokens_reused
    }

    pub fn is_idle(&self) -> bool {
        self.active_rows() == 0
    }

    /// Finishes `row` now with [`FinishReason::Cancelled`] and returns what it had
    /// generated; `Ok(None)` when the row has already finished (or never existed). Its
    /// cache row is dropped before the next forward. Fails only when decoding the text
    /// fails (the row is finished all the same).
    pub fn cancel(&mut self, row: RowId) -> Result<Option<Generation>> {
        if let Some(index) = self.waiting.iter().position(|waiting| waiting.id == row) {
            let mut waiting = self.waiting.remove(index);
            waiting.finish_reason = Some(FinishReason::Cancelled);
            return finish_row(&mut waiting, &self.options).map(Some);
        }
        let Some(running) =
            self.running.iter_mut().find(|running| running.id == row && running.finish_reason.is_none())
        else {
            return Ok(None);
        };
        running.finish_reason = Some(FinishReason::Cancelled);
        finish_row(running, &self.options).map(Some)
    }

    /// One token for every active row: see [`BatchGenerator::step_with`].
    pub fn step(&mut self) -> Result<Vec<RowEvent>> {
        self.step_with(&mut |_, _| Control::Continue)
    }

    /// One forward for the running rows and one prefill for the rows added since the
    /// last step (no forward at all when there is nothing to do). `on_token` sees each
    /// token as it is chosen, also those that end a row, and may stop that row or every
    /// row ([`Control::StopAll`]: the rows after the one that asked get no token this
    /// step). On an error the generator's state is undefined: drop it.
    pub fn step_with(&mut self, on_token: &mut dyn FnMut(RowId, u32) -> Control) -> Result<Vec<RowEvent>> {
        let timer = StepTimer::start();
        self.drop_finished_rows()?;
        let dropped = timer.lap();
        let (decoding, waiting) = (self.running.len(), self.waiting.len());
        let mut events = Vec::new();
        let mut stop_all = false;
        if !self.running.is_empty() {
            stop_all = self.decode(on_token, &mut events)?;
        }
        let decoded = timer.lap();
        if !stop_all && !self.waiting.is_empty() {
            stop_all = self.prefill(on_token, &mut events)?;
        }
        timer.report(|| {
            format!(
                "step: {decoding} decoding, {waiting} joining, cache {}: drop {dropped:.1} ms, decode {:.1} ms, prefill {:.1} ms",
                self.cache.len,
                decoded - dropped,
                timer.lap() - decoded
            )
        });
        if stop_all {
            for row in self.running.iter_mut().chain(self.waiting.iter_mut()) {
                if row.finish_reason.is_none() {
                    row.finish_reason = Some(FinishReason::Cancelled);
                    events.push(RowEvent::Finished {
                        row: row.id,
                        generation: finish_row(row, &self.options)?,
                    });
                }
            }
            self.waiting.clear();
        }
        Ok(events)
    }

    /// Feeds every running row its newest token and chooses the next one.
    fn decode(
        &mut self,
        on_token: &mut dyn FnMut(RowId, u32) -> Control,
        events: &mut Vec<RowEvent>,
    ) -> Result<bool> {
        let device = self.model.device().clone();
        let keys = self.cache.len + 1;
        let mut next_tokens = Vec::with_capacity(self.running.len());
        let mut layouts = Vec::with_capacity(self.running.len());
        for row in &self.running {
            let token = *row
                .history
                .last()
                .ok_or_else(|| ModelError::Config("generation: a running row has no token".to_string()))?;
            next_tokens.push(token);
            layouts.push(row.columns(self.cache.len));
        }
        let paddings: Vec<usize> = layouts.iter().map(|layout| layout.padding).collect();
        let tokens = Tensor::from_vec(next_tokens, (self.running.len(), 1), &device)?;
        let mask = padding_mask(&layouts, keys, &device)?;
        let timer = StepTimer::start();
        let (model, cache) = (self.model, &mut self.cache);
        let logits = on_pool(|| model.forward_last(&tokens, mask.as_ref(), cache))?;
        let forward = timer.lap();
        take_attention(&mut self.cache, &mut self.running, &paddings, false)?;
        self.running.iter_mut().for_each(|row| row.fed += 1);
        let logits = logits_rows(&logits)?;
        let copied = timer.lap();
        let stop_all = choose_tokens(
            &mut self.running,
            &logits,
            self.model.max_context(),
            &self.options,
            on_token,
            events,
        )?;
        timer.report(|| {
            format!(
                "  decode: forward {forward:.1} ms, logits copy {:.1} ms, choose {:.1} ms",
                copied - forward,
                timer.lap() - copied
            )
        });
        Ok(stop_all)
    }

    /// Prefills the waiting rows (one left-padded batch), chooses their first tokens and
    /// merges their cache into the running one.
    ///
    /// Rows that join together often begin alike (a chat template's system prompt): when
    /// they share at least [`SHARED_PREFIX_MIN`] leading tokens, the prefix is computed
    /// once, in a batch of one, its keys and values copied to every row, and only the
    /// rest of each prompt is fed as a batch. That rest is left-padded among the rows,
    /// so each row's padding lies between its prefix and its rest (a gap the mask hides;
    /// positions count real tokens only, so nothing shifts). Not with attention capture,
    /// whose per-row maps assume padding in front.
    fn prefill(
        &mut self,
        on_token: &mut dyn FnMut(RowId, u32) -> Control,
        events: &mut Vec<RowEvent>,
    ) -> Result<bool> {
        let mut newcomers = Vec::with_capacity(self.waiting.len());
        for mut row in self.waiting.drain(..) {
            if row.config.max_new_tokens == 0 {
                row.finish_reason = Some(FinishReason::Length);
                events.push(RowEvent::Finished {
                    row: row.id,
                    generation: finish_row(&mut row, &self.options)?,
                });
            } else {
                newcomers.push(row);
            }
        }
        if newcomers.is_empty() {
            return Ok(false);
        }
        let device = self.model.device().clone();
        let mut cache = self.model.new_cache();
        if self.options.capture_attention {
            cache = cache.capture_attention();
        }
        let prompts: Vec<&[u32]> = newcomers.iter().map(|row| row.history.as_slice()).collect();
        let shared = if self.options.capture_attention { 0 } else { shared_prefix(&prompts) };
        self.prefix_tokens_reused += shared * (newcomers.len() - 1);
        let model = self.model;
        if shared > 0 {
            let prefix = Tensor::from_vec(newcomers[0].history[..shared].to_vec(), (1, shared), &device)?;
            on_pool(|| model.forward_last(&prefix, None, &mut cache))?;
            let every_row = |tensor: &Tensor| -> Result<Tensor> {
                let (_, heads, columns, dim) = tensor.dims4()?;
                Ok(tensor.broadcast_as((newcomers.len(), heads, columns, dim))?.contiguous()?)
            };
            for (keys, values) in cache.layers.iter_mut().flatten() {
                *keys = every_row(keys)?;
                *values = every_row(values)?;
            }
        }
        let longest = newcomers.iter().map(|row| row.history.len() - shared).max().unwrap_or(0);
        let paddings: Vec<usize> =
            newcomers.iter().map(|row| longest - (row.history.len() - shared)).collect();
        let mut batch_tokens = Vec::with_capacity(newcomers.len() * longest);
        for (row, &padding) in newcomers.iter_mut().zip(&paddings) {
            batch_tokens.extend(std::iter::repeat_n(PAD_TOKEN_ID, padding));
            batch_tokens.extend_from_slice(&row.history[shared..]);
            row.fed = row.history.len();
            if shared > 0 {
                row.gap = (shared, padding);
            }
        }
        let tokens = Tensor::from_vec(batch_tokens, (newcomers.len(), longest), &device)?;
        let layouts: Vec<RowColumns> = newcomers.iter().map(|row| row.columns(shared + longest)).collect();
        let mask = padding_mask(&layouts, shared + longest, &device)?;
        let logits = on_pool(|| model.forward_last(&tokens, mask.as_ref(), &mut cache))?;
        take_attention(&mut cache, &mut newcomers, &paddings, true)?;
        let logits = logits_rows(&logits)?;
        let stop_all = choose_tokens(
            &mut newcomers,
            &logits,
            self.model.max_context(),
            &self.options,
            on_token,
            events,
        )?;
        let timer = StepTimer::start();
        merge_cache(&mut self.cache, self.running.is_empty(), cache)?;
        timer.report(|| {
            format!("  prefill of {} (shared prefix {shared}): merge {:.1} ms", newcomers.len(), timer.lap())
        });
        self.running.extend(newcomers);
        Ok(stop_all)
    }

    /// Removes finished and cancelled rows from the batch and the cache, then the
    /// leading columns that are padding in every remaining row.
    fn drop_finished_rows(&mut self) -> Result<()> {
        if self.running.iter().all(|row| row.finish_reason.is_none()) {
            return Ok(());
        }
        let keep: Vec<u32> = (0..self.running.len())
            .filter(|&index| self.running[index].finish_reason.is_none())
            .map(|index| index as u32)
            .collect();
        self.running.retain(|row| row.finish_reason.is_none());
        if self.running.is_empty() {
            self.cache.clear();
            return Ok(());
        }
        let keep_count = keep.len();
        let keep = Tensor::from_vec(keep, keep_count, self.model.device())?;
        let longest = self.running.iter().map(Row::span).max().unwrap_or(0);
        let unused_columns = self.cache.len.saturating_sub(longest);
        for (keys, values) in self.cache.layers.iter_mut().flatten() {
            // The cache's entries may be strided views of its reserved room.
            *keys = keys.contiguous()?.index_select(&keep, 0)?;
            *values = values.contiguous()?.index_select(&keep, 0)?;
            if unused_columns > 0 {
                *keys = keys.narrow(2, unused_columns, longest)?;
                *values = values.narrow(2, unused_columns, longest)?;
            }
        }
        self.cache.len = longest;
        Ok(())
    }
}

/// Per-step timings on standard error when `AGORA_STEP_TIMES` is set (a profiling aid
/// for batched serving; nothing is measured otherwise).
struct StepTimer {
    started: Option<std::time::Instant>,
}

impl StepTimer {
    fn start() -> StepTimer {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let enabled = *ENABLED.get_or_init(|| std::env::var_os("AGORA_STEP_TIMES").is_some());
        StepTimer { started: enabled.then(std::time::Instant::now) }
    }

    /// Milliseconds since the start (0 when switched off).
    fn lap(&self) -> f64 {
        self.started.map_or(0.0, |started| started.elapsed().as_secs_f64() * 1000.0)
    }

    fn report(&self, line: impl FnOnce() -> String) {
        if self.started.is_some() {
            eprintln!("{}", line());
        }
    }
}

/// Generates a continuation of every prompt (see the module documentation for batching
/// and positions). Row `r` samples from random stream `r` of `config.seed`.
/// `on_token(row, token)` sees each token as soon as it is chosen, also those that end a
/// row; a stop string is trimmed from [`Generation::text`] only.
pub fn generate(
    model: &dyn LanguageModel,
    prompts: &[Vec<u32>],
    config: &SamplingConfig,
    options: &GenerateOptions<'_>,
    on_token: &mut dyn FnMut(usize, u32) -> Control,
) -> Result<Vec<Generation>> {
    config.validate()?;
    for (index, prompt) in prompts.iter().enumerate() {
        check_prompt(model, prompt)
            .map_err(|problem| ModelError::Config(format!("generation: prompt {index}: {problem}")))?;
    }
    let mut generator = BatchGenerator::new(model, options.clone());
    let mut index_of = HashMap::with_capacity(prompts.len());
    for (index, prompt) in prompts.iter().enumerate() {
        let request = RowRequest {
            prompt: prompt.clone(),
            config: config.clone(),
            logprobs: None,
            random_stream: index,
        };
        index_of.insert(generator.add(request)?, index);
    }
    let mut generations: Vec<Option<Generation>> = vec![None; prompts.len()];
    while !generator.is_idle() {
        let events = generator.step_with(&mut |row, token| match index_of.get(&row) {
            Some(&index) => on_token(index, token),
            None => Control::Continue,
        })?;
        for event in events {
            if let RowEvent::Finished { row, generation } = event
                && let Some(&index) = index_of.get(&row)
            {
                generations[index] = Some(generation);
            }
        }
    }
    generations
        .into_iter()
        .enumerate()
        .map(|(index, generation)| {
            generation.ok_or_else(|| ModelError::Config(format!("generation: prompt {index} never finished")))
        })
        .collect()
}

/// [`generate`] for one prompt, without streaming.
pub fn generate_one(
    model: &dyn LanguageModel,
    prompt: &[u32],
    config: &SamplingConfig,
    options: &GenerateOptions<'_>,
) -> Result<Generation> {
    let mut generations =
        generate(model, &[prompt.to_vec()], config, options, &mut |_, _| Control::Continue)?;
    generations.pop().ok_or_else(|| ModelError::Config("generation returned no row".to_string()))
}

/// What is wrong with a prompt, if anything.
fn check_prompt(model: &dyn LanguageModel, prompt: &[u32]) -> std::result::Result<(), String> {
    let vocab_size = model.vocab_size();
    if prompt.is_empty() {
        return Err("the prompt is empty (a model needs at least one token to continue)".to_string());
    }
    if prompt.len() > model.max_context() {
        return Err(format!(
            "the prompt has {} tokens, more than the model's context of {}",
            prompt.len(),
            model.max_context()
        ));
    }
    if let Some(token) = prompt.iter().find(|&&token| token as usize >= vocab_size) {
        return Err(format!("the prompt holds token id {token}, outside the vocabulary of {vocab_size}"));
    }
    Ok(())
}

/// Samples the next token of every row of a forward call (`logits[b]` is row `b`'s),
/// reports it and decides whether the row ends. Returns true when the callback asked to
/// stop every row (the rows after the one that asked get no token).
fn choose_tokens(
    rows: &mut [Row],
    logits: &[Vec<f32>],
    max_context: usize,
    options: &GenerateOptions<'_>,
    on_token: &mut dyn FnMut(RowId, u32) -> Control,
    events: &mut Vec<RowEvent>,
) -> Result<bool> {
    for (row, row_logits) in rows.iter_mut().zip(logits) {
        if row.finish_reason.is_some() {
            continue;
        }
        let token = row.sampler.sample(row_logits, &row.history)?;
        let logprobs = row.logprobs.map(|top| token_logprobs(row_logits, token, top));
        row.history.push(token);
        if let (Some(all), Some(logprobs)) = (row.token_logprobs.as_mut(), logprobs.as_ref()) {
            all.push(logprobs.clone());
        }
        events.push(RowEvent::Token { row: row.id, token, logprobs });
        row.finish_reason = match on_token(row.id, token) {
            Control::Continue => finish_reason(row, token, options, max_context)?,
            Control::Stop => Some(FinishReason::Cancelled),
            Control::StopAll => return Ok(true),
        };
        if row.finish_reason.is_some() {
            events.push(RowEvent::Finished { row: row.id, generation: finish_row(row, options)? });
        }
    }
    Ok(false)
}

/// Why `row` must stop after `token`, if it must.
fn finish_reason(
    row: &mut Row,
    token: u32,
    options: &GenerateOptions<'_>,
    max_context: usize,
) -> Result<Option<FinishReason>> {
    if options.eos_token_ids.contains(&token) {
        return Ok(Some(FinishReason::Eos));
    }
    if row.config.stop_token_ids.contains(&token) {
        return Ok(Some(FinishReason::Stop));
    }
    if let (false, Some(decoder)) = (row.config.stop_strings.is_empty(), options.decoder) {
        let text = decoder.decode(row.generated())?;
        row.stop_at = row.config.stop_strings.iter().filter_map(|stop| text.find(stop.as_str())).min();
        if row.stop_at.is_some() {
            return Ok(Some(FinishReason::Stop));
        }
    }
    if row.generated().len() >= row.config.max_new_tokens || row.history.len() >= max_context {
        return Ok(Some(FinishReason::Length));
    }
    Ok(None)
}

/// The log-probability of `token` under the log-softmax of `logits` (NaN counts as
/// -inf), and the `top` most likely tokens.
pub fn token_logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
    let clean = |logit: f32| if logit.is_nan() { f32::NEG_INFINITY } else { logit };
    let max = logits.iter().map(|&logit| clean(logit)).fold(f32::NEG_INFINITY, f32::max);
    let log_normaliser = if max.is_finite() {
        let total: f64 = logits.iter().map(|&logit| f64::from(clean(logit) - max).exp()).sum();
        f64::from(max) + total.ln()
    } else {
        f64::from(max)
    };
    let logprob = |id: u32| -> f32 {
        let logit = logits.get(id as usize).map_or(f32::NEG_INFINITY, |&logit| clean(logit));
        (f64::from(logit) - log_normaliser) as f32
    };
    let top = top.min(logits.len());
    let mut best: Vec<u32> = (0..logits.len() as u32).collect();
    let more_likely =
        |a: &u32, b: &u32| clean(logits[*b as usize]).total_cmp(&clean(logits[*a as usize])).then(a.cmp(b));
    if top > 0 && top < best.len() {
        best.select_nth_unstable_by(top - 1, more_likely);
    }
    best.truncate(top);
    best.sort_by(more_likely);
    TokenLogprobs {
        token,
        logprob: logprob(token),
        top: best.into_iter().map(|id| (id, logprob(id))).collect(),
    }
}

/// `[batch, keys]` u32 mask (1 = real token) for rows laid out as `layouts[b]` says (the
/// last columns beyond the layout are real: tokens being fed), or `None` when no column
/// of any row is padding.
fn padding_mask(layouts: &[RowColumns], keys: usize, device: &Device) -> Result<Option<Tensor>> {
    if layouts.iter().all(|layout| layout.padding == 0 && layout.gap.1 == 0) {
        return Ok(None);
    }
    let mut mask = Vec::with_capacity(layouts.len() * keys);
    for layout in layouts {
        let row_start = mask.len();
        let padding = layout.padding.min(keys);
        mask.extend(std::iter::repeat_n(0u32, padding));
        mask.extend(std::iter::repeat_n(1u32, keys - padding));
        let (before, gap) = layout.gap;
        let gap_start = (row_start + padding + before).min(row_start + keys);
        let gap_end = (gap_start + gap).min(row_start + keys);
        mask[gap_start..gap_end].iter_mut().for_each(|value| *value = 0);
    }
    Ok(Some(Tensor::from_vec(mask, (layouts.len(), keys), device)?))
}

/// The logits of the last position of each row, `[batch][vocab]`.
/// The `[batch, vocab]` logits of the last position (left padding keeps every row's last
/// position a real token), one `Vec` per row.
fn logits_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// Appends the rows of `newcomers` (a cache of their own) to `running`, left-padding
/// whichever side holds fewer columns so that every row stays right-aligned.
fn merge_cache(running: &mut Cache, running_is_empty: bool, mut newcomers: Cache) -> Result<()> {
    if running_is_empty {
        newcomers.attention = running.attention.take().map(|_| Vec::new());
        *running = newcomers;
        return Ok(());
    }
    let columns = running.len.max(newcomers.len);
    let (running_padding, newcomer_padding) = (columns - running.len, columns - newcomers.len);
    for (mine, theirs) in running.layers.iter_mut().zip(newcomers.layers) {
        let (Some((keys, values)), Some((new_keys, new_values))) = (mine.take(), theirs) else {
            return Err(ModelError::Config(
                "generation: a cache layer is empty after a forward call".to_string(),
            ));
        };
        let pad = |tensor: Tensor, padding: usize| tensor.pad_with_zeros(2, padding, 0);
        *mine = Some((
            Tensor::cat(&[pad(keys, running_padding)?, pad(new_keys, newcomer_padding)?], 0)?,
            Tensor::cat(&[pad(values, running_padding)?, pad(new_values, newcomer_padding)?], 0)?,
        ));
    }
    running.len = columns;
    Ok(())
}

/// Moves what the cache captured during the last forward call to the rows (`rows[b]` is
/// batch row `b`, with `paddings[b]` padding columns in front), without the padding
/// (`prefill`: the padded query rows go too).
fn take_attention(cache: &mut Cache, rows: &mut [Row], paddings: &[usize], prefill: bool) -> Result<()> {
    let Some(captured) = cache.attention.as_mut() else { return Ok(()) };
    for call in captured.drain(..) {
        for (batch_index, (row, &padding)) in rows.iter_mut().zip(paddings).enumerate() {
            let Some(attention) = row.attention.as_mut() else { continue };
            let mut layers = Vec::with_capacity(call.len());
            for layer in &call {
                let (_batch, _heads, queries, keys) = layer.dims4()?;
                let mut probabilities = layer.i(batch_index)?;
                if padding > 0 {
                    probabilities = probabilities.narrow(2, padding, keys - padding)?;
                    if prefill {
                        probabilities = probabilities.narrow(1, padding, queries - padding)?;
                    }
                }
                layers.push(probabilities);
            }
            attention.push(layers);
        }
    }
    Ok(())
}

/// The row's [`Generation`] (its attention and log-probs are moved out; the row is
/// finished and about to leave the batch).
fn finish_row(row: &mut Row, options: &GenerateOptions<'_>) -> Result<Generation> {
    let finish_reason = row.finish_reason.unwrap_or(FinishReason::Length);
    let tokens = row.generated().to_vec();
    let text = match options.decoder {
        None => None,
        Some(decoder) => {
            let ends_with_stop_token = tokens.last().is_some_and(|token| {
                options.eos_token_ids.contains(token) || row.config.stop_token_ids.contains(token)
            });
            let shown = if ends_with_stop_token { &tokens[..tokens.len() - 1] } else { &tokens[..] };
            let mut text = decoder.decode(shown)?;
            if let Some(stop_at) = row.stop_at.filter(|&stop_at| text.is_char_boundary(stop_at)) {
                text.truncate(stop_at);
            }
            Some(text)
        }
    };
    Ok(Generation {
        generated_tokens: tokens.len(),
        tokens,
        text,
        finish_reason,
        prompt_tokens: row.prompt_tokens,
        attention: row.attention.take(),
        logprobs: row.token_logprobs.take(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_prefix_is_long_enough_and_leaves_every_row_a_token() {
        let common: Vec<u32> = (1..=10).collect();
        let with = |tail: &[u32]| [common.as_slice(), tail].concat();
        let (a, b, c) = (with(&[50, 51]), with(&[60]), with(&[70, 71, 72]));
        assert_eq!(shared_prefix(&[&a, &b, &c]), 10);
        assert_eq!(shared_prefix(&[&a]), 0, "one row shares with nobody");
        // Identical prompts: the last token stays each row's own.
        assert_eq!(shared_prefix(&[&a, &a]), 11);
        // The prefix ends where one row differs.
        let mut d = a.clone();
        d[9] = 99;
        assert_eq!(shared_prefix(&[&a, &d]), 9);
        d[7] = 99;
        assert_eq!(shared_prefix(&[&a, &d]), 0, "7 tokens are under the minimum");
        assert_eq!(shared_prefix(&[&a, &common[..9]]), 8, "the shorter row keeps one token");
    }

    #[test]
    fn masks_hide_leading_padding_and_gaps() {
        let layouts = [
            RowColumns { padding: 0, gap: (0, 0) },
            RowColumns { padding: 2, gap: (0, 0) },
            RowColumns { padding: 1, gap: (2, 3) },
        ];
        let mask = padding_mask(&layouts, 8, &Device::Cpu).unwrap().unwrap().to_vec2::<u32>().unwrap();
        assert_eq!(
            mask,
            vec![vec![1, 1, 1, 1, 1, 1, 1, 1], vec![0, 0, 1, 1, 1, 1, 1, 1], vec![0, 1, 1, 0, 0, 0, 1, 1]]
        );
        assert!(padding_mask(&layouts[..1], 8, &Device::Cpu).unwrap().is_none());
    }
}
