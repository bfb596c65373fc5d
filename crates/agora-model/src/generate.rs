//! The generation loop: prefill a batch of prompts, then decode token by token with the
//! key/value cache, each row stopping on its own (end of sequence, stop tokens, stop
//! strings, token cap, the caller), every token streamed to a callback.
//!
//! Batching: prompts of different lengths are LEFT-padded to the longest (pad id 0,
//! never seen by the model because the padding mask hides it) and the mask is passed on
//! every call. Positions are the model's business: the architectures of this crate
//! number a token by the real tokens before it (`cumsum(mask) - 1`, as transformers'
//! `generate` does), so a padded row sees the same positions as the prompt alone and a
//! batch yields the same tokens as each prompt run by itself (up to floating-point
//! rounding of the batched matrix products). Rows that finish are dropped from the batch
//! (their cache rows are removed), so a long straggler does not pay for finished rows.

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::{Deserialize, Serialize};

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
    /// The callback asked to stop.
    Cancelled,
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
}

/// What generation needs beyond the sampling configuration.
#[derive(Default)]
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

/// Pad id written into the left padding; the mask hides it, so any valid id would do.
const PAD_TOKEN_ID: u32 = 0;

/// The state of one batch row while generating.
struct Row {
    prompt_tokens: usize,
    /// Left padding in front of the prompt (columns of the cache that are not this row's).
    padding: usize,
    /// Prompt followed by the generated tokens: what the penalties look at.
    history: Vec<u32>,
    sampler: Sampler,
    finish_reason: Option<FinishReason>,
    /// Where the first stop string starts in the decoded text.
    stop_at: Option<usize>,
    attention: Option<Vec<Vec<Tensor>>>,
}

impl Row {
    fn generated(&self) -> &[u32] {
        &self.history[self.prompt_tokens..]
    }
}

/// Generates a continuation of every prompt (see the module documentation for batching
/// and positions). `on_token(row, token)` sees each token as soon as it is chosen, also
/// those that end a row; a stop string is trimmed from [`Generation::text`] only.
pub fn generate(
    model: &dyn LanguageModel,
    prompts: &[Vec<u32>],
    config: &SamplingConfig,
    options: &GenerateOptions<'_>,
    on_token: &mut dyn FnMut(usize, u32) -> Control,
) -> Result<Vec<Generation>> {
    config.validate()?;
    check_prompts(model, prompts)?;
    if !config.stop_strings.is_empty() && options.decoder.is_none() {
        return Err(ModelError::Config(
            "generation: stop strings need a token decoder (GenerateOptions::decoder)".to_string(),
        ));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut rows = Vec::with_capacity(prompts.len());
    for (index, prompt) in prompts.iter().enumerate() {
        rows.push(Row {
            prompt_tokens: prompt.len(),
            padding: longest - prompt.len(),
            history: prompt.clone(),
            sampler: Sampler::new(config, index)?,
            finish_reason: None,
            stop_at: None,
            attention: options.capture_attention.then(Vec::new),
        });
    }
    if config.max_new_tokens == 0 {
        rows.iter_mut().for_each(|row| row.finish_reason = Some(FinishReason::Length));
    }

    let device = model.device().clone();
    let mut cache = model.new_cache();
    if options.capture_attention {
        cache = cache.capture_attention();
    }
    // Batch rows of the current forward call, as indices into `rows`.
    let mut active: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].finish_reason.is_none()).collect();
    if active.is_empty() {
        return finish(rows, options, config);
    }

    // Prefill: every prompt at once, left-padded.
    let mut batch_tokens = Vec::with_capacity(active.len() * longest);
    for &index in &active {
        batch_tokens.extend(std::iter::repeat_n(PAD_TOKEN_ID, rows[index].padding));
        batch_tokens.extend_from_slice(&rows[index].history);
    }
    let tokens = Tensor::from_vec(batch_tokens, (active.len(), longest), &device)?;
    let mask = padding_mask(&rows, &active, longest, &device)?;
    let logits = model.forward(&tokens, mask.as_ref(), &mut cache)?;
    take_attention(&mut cache, &mut rows, &active, true)?;
    let mut last_logits = last_position_logits(&logits)?;

    loop {
        let mut next_tokens = Vec::with_capacity(active.len());
        let mut stop_all = false;
        for (batch_index, &index) in active.iter().enumerate() {
            let row = &mut rows[index];
            let token = row.sampler.sample(&last_logits[batch_index], &row.history)?;
            row.history.push(token);
            next_tokens.push(token);
            row.finish_reason = match on_token(index, token) {
                Control::Continue => finish_reason(row, token, config, options, model.max_context())?,
                Control::Stop => Some(FinishReason::Cancelled),
                Control::StopAll => {
                    stop_all = true;
                    break;
                }
            };
        }
        if stop_all {
            // The rows after the one that asked get no token this step.
            for &index in &active {
                rows[index].finish_reason.get_or_insert(FinishReason::Cancelled);
            }
            break;
        }

        // Drop finished rows from the batch and from the cache.
        let still_active: Vec<usize> =
            (0..active.len()).filter(|&b| rows[active[b]].finish_reason.is_none()).collect();
        if still_active.is_empty() {
            break;
        }
        if still_active.len() < active.len() {
            let keep = Tensor::from_vec(
                still_active.iter().map(|&b| b as u32).collect::<Vec<u32>>(),
                still_active.len(),
                &device,
            )?;
            keep_cache_rows(&mut cache, &keep)?;
            next_tokens = still_active.iter().map(|&b| next_tokens[b]).collect();
            active = still_active.iter().map(|&b| active[b]).collect();
        }

        let tokens = Tensor::from_vec(next_tokens, (active.len(), 1), &device)?;
        let mask = padding_mask(&rows, &active, cache.len + 1, &device)?;
        let logits = model.forward(&tokens, mask.as_ref(), &mut cache)?;
        take_attention(&mut cache, &mut rows, &active, false)?;
        last_logits = last_position_logits(&logits)?;
    }
    finish(rows, options, config)
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

fn check_prompts(model: &dyn LanguageModel, prompts: &[Vec<u32>]) -> Result<()> {
    let vocab_size = model.vocab_size();
    for (index, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(ModelError::Config(format!(
                "generation: prompt {index} is empty (a model needs at least one token to continue)"
            )));
        }
        if prompt.len() > model.max_context() {
            return Err(ModelError::Config(format!(
                "generation: prompt {index} has {} tokens, more than the model's context of {}",
                prompt.len(),
                model.max_context()
            )));
        }
        if let Some(token) = prompt.iter().find(|&&token| token as usize >= vocab_size) {
            return Err(ModelError::Config(format!(
                "generation: prompt {index} holds token id {token}, outside the vocabulary of {vocab_size}"
            )));
        }
    }
    Ok(())
}

/// Why `row` must stop after `token`, if it must.
fn finish_reason(
    row: &mut Row,
    token: u32,
    config: &SamplingConfig,
    options: &GenerateOptions<'_>,
    max_context: usize,
) -> Result<Option<FinishReason>> {
    if options.eos_token_ids.contains(&token) {
        return Ok(Some(FinishReason::Eos));
    }
    if config.stop_token_ids.contains(&token) {
        return Ok(Some(FinishReason::Stop));
    }
    if let (false, Some(decoder)) = (config.stop_strings.is_empty(), options.decoder) {
        let text = decoder.decode(row.generated())?;
        row.stop_at = config.stop_strings.iter().filter_map(|stop| text.find(stop.as_str())).min();
        if row.stop_at.is_some() {
            return Ok(Some(FinishReason::Stop));
        }
    }
    if row.generated().len() >= config.max_new_tokens || row.history.len() >= max_context {
        return Ok(Some(FinishReason::Length));
    }
    Ok(None)
}

/// `[batch, keys]` u32 mask of the active rows (1 = real token), or `None` when no active
/// row is padded.
fn padding_mask(rows: &[Row], active: &[usize], keys: usize, device: &Device) -> Result<Option<Tensor>> {
    if active.iter().all(|&index| rows[index].padding == 0) {
        return Ok(None);
    }
    let mut mask = Vec::with_capacity(active.len() * keys);
    for &index in active {
        let padding = rows[index].padding.min(keys);
        mask.extend(std::iter::repeat_n(0u32, padding));
        mask.extend(std::iter::repeat_n(1u32, keys - padding));
    }
    Ok(Some(Tensor::from_vec(mask, (active.len(), keys), device)?))
}

/// The logits of the last position of each row, `[batch][vocab]`.
fn last_position_logits(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let (_batch, seq, _vocab) = logits.dims3()?;
    if seq == 0 {
        return Err(ModelError::Config("generation: the model returned logits for no position".to_string()));
    }
    Ok(logits.i((.., seq - 1, ..))?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// Keeps rows `keep` (u32 indices into the batch) of every cached key and value.
fn keep_cache_rows(cache: &mut Cache, keep: &Tensor) -> Result<()> {
    for (keys, values) in cache.layers.iter_mut().flatten() {
        *keys = keys.index_select(keep, 0)?;
        *values = values.index_select(keep, 0)?;
    }
    Ok(())
}

/// Moves what the cache captured during the last forward call to the rows, without the
/// padding (`prefill`: the padded query rows go too).
fn take_attention(cache: &mut Cache, rows: &mut [Row], active: &[usize], prefill: bool) -> Result<()> {
    let Some(captured) = cache.attention.as_mut() else { return Ok(()) };
    for call in captured.drain(..) {
        for (batch_index, &index) in active.iter().enumerate() {
            let row = &mut rows[index];
            let Some(attention) = row.attention.as_mut() else { continue };
            let mut layers = Vec::with_capacity(call.len());
            for layer in &call {
                let (_batch, _heads, queries, keys) = layer.dims4()?;
                let mut probabilities = layer.i(batch_index)?;
                if row.padding > 0 {
                    probabilities = probabilities.narrow(2, row.padding, keys - row.padding)?;
                    if prefill {
                        probabilities = probabilities.narrow(1, row.padding, queries - row.padding)?;
                    }
                }
                layers.push(probabilities);
            }
            attention.push(layers);
        }
    }
    Ok(())
}

fn finish(rows: Vec<Row>, options: &GenerateOptions<'_>, config: &SamplingConfig) -> Result<Vec<Generation>> {
    rows.into_iter()
        .map(|row| {
            let finish_reason = row.finish_reason.unwrap_or(FinishReason::Length);
            let tokens = row.generated().to_vec();
            let text = match options.decoder {
                None => None,
                Some(decoder) => {
                    let ends_with_stop_token = tokens.last().is_some_and(|token| {
                        options.eos_token_ids.contains(token) || config.stop_token_ids.contains(token)
                    });
                    let shown = if ends_with_stop_token { &tokens[..tokens.len() - 1] } else { &tokens[..] };
                    let mut text = decoder.decode(shown)?;
                    if let Some(stop_at) = row.stop_at {
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
                attention: row.attention,
            })
        })
        .collect()
}
