//! The contract between architectures and everything that runs them (scoring,
//! generation, training): logits for every position, a key/value cache, optional
//! attention capture.

use candle_core::{Device, Tensor, TensorId};

use crate::Result;

/// A causal language model as the engine sees it.
pub trait LanguageModel: Send + Sync {
    /// Logits for every position of `tokens` (`[batch, seq]`, u32), appended after what
    /// `cache` already holds: shape `[batch, seq, vocab]`, f32. `mask` is `[batch,
    /// cache.len() + seq]` with 1 for real tokens and 0 for padding (left padding for
    /// batched generation); `None` means no padding.
    fn forward(&self, tokens: &Tensor, mask: Option<&Tensor>, cache: &mut Cache) -> Result<Tensor>;
    /// Logits of the last position of `tokens` only, `[batch, vocab]`, with the same
    /// effect on `cache` as [`LanguageModel::forward`]: what generation needs after a
    /// prefill or a decode step. With left padding the last position is a real token of
    /// every row. The default takes the last row of `forward`; architectures override it
    /// to skip the output layer for every other position.
    fn forward_last(&self, tokens: &Tensor, mask: Option<&Tensor>, cache: &mut Cache) -> Result<Tensor> {
        last_position(&self.forward(tokens, mask, cache)?)
    }
    /// An empty cache for this model (one slot per layer).
    /// Log-probabilities of `batch`'s target tokens, `[batch.scored()]` in row order,
    /// differentiable when the model is: what SFT, DPO, perplexity and judges need. The
    /// default takes every position's logits; the architectures override it to run the
    /// output layer on the scored positions only, fused with the log-softmax
    /// ([`crate::fused::linear_target_logprobs`]).
    fn target_logprobs(&self, batch: &crate::scoring::ScoringBatch) -> Result<Tensor> {
        let logits = self.forward(&batch.tokens, Some(&batch.mask), &mut self.new_cache())?;
        batch.token_logprobs(&logits)
    }

    fn new_cache(&self) -> Cache;
    fn vocab_size(&self) -> usize;
    /// The longest sequence the model was trained for.
    fn max_context(&self) -> usize;
    fn device(&self) -> &Device;
}

/// The last position of `[batch, seq, width]`: `[batch, width]`.
pub(crate) fn last_position(xs: &Tensor) -> Result<Tensor> {
    let seq = xs.dim(1)?;
    if seq == 0 {
        return Err(crate::ModelError::Config("no tokens: there is no last position".to_string()));
    }
    Ok(xs.narrow(1, seq - 1, 1)?.squeeze(1)?)
}

/// Per-layer keys and values of the tokens seen so far, and (when switched on) the
/// attention probabilities of every forward call.
///
/// Architectures that extend the cache through [`Cache::append`] write each new
/// position into room reserved ahead (a decode step then copies one position, not the
/// whole cache); `layers` holds views of the filled prefix. Anyone may still replace an
/// entry of `layers` (batched generation selects rows and pads them): the reserved room
/// is then left behind and the next append starts a new one.
#[derive(Debug, Default)]
pub struct Cache {
    /// `(keys, values)` per layer, each `[batch, kv_heads, len, head_dim]`; `None`
    /// before the first forward call.
    pub layers: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens held (the sequence length of every entry of `layers`).
    pub len: usize,
    /// `Some` to record attention: one entry per forward call, per layer
    /// `[batch, heads, seq, cache.len + seq]`. `None` (the default) costs nothing.
    pub attention: Option<Vec<Vec<Tensor>>>,
    /// Per layer, the buffers behind `layers` when [`Cache::append`] made them.
    reserved: Vec<Option<Reserved>>,
}

/// Keys and values of one layer with room for more positions, and which views of
/// them `Cache::layers` holds (so that a replaced entry is noticed).
#[derive(Debug)]
struct Reserved {
    /// `[batch, kv_heads, capacity, head_dim]`, contiguous.
    keys: Tensor,
    values: Tensor,
    keys_view: TensorId,
    values_view: TensorId,
}

/// Positions reserved at a time: a new buffer (one copy of the cache) every this many
/// decode steps, at most this many positions unused.
const RESERVE_STEP: usize = 128;

impl Clone for Cache {
    /// The clone shares the tensors but not the reserved room: both caches writing past
    /// their common prefix into one buffer would overwrite each other's positions.
    fn clone(&self) -> Cache {
        Cache {
            layers: self.layers.clone(),
            len: self.len,
            attention: self.attention.clone(),
            reserved: Vec::new(),
        }
    }
}

impl Cache {
    pub fn new(layers: usize) -> Cache {
        Cache { layers: vec![None; layers], len: 0, attention: None, reserved: Vec::new() }
    }

    /// Switches attention capture on.
    pub fn capture_attention(mut self) -> Cache {
        self.attention = Some(Vec::new());
        self
    }

    /// Forgets every token (keeps the capture setting, clears what was captured).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|layer| *layer = None);
        self.reserved.clear();
        self.len = 0;
        if let Some(attention) = &mut self.attention {
            attention.clear();
        }
    }

    /// Appends `keys` and `values` (`[batch, kv_heads, seq, head_dim]`) to layer
    /// `layer` along the sequence and returns everything the layer now holds. Tensors
    /// that record a gradient are concatenated as before (the backward pass goes through
    /// `cat`); others are written in place into reserved room.
    pub fn append(&mut self, layer: usize, keys: Tensor, values: Tensor) -> Result<(Tensor, Tensor)> {
        let layers = self.layers.len();
        let slot = self.layers.get_mut(layer).ok_or_else(|| {
            crate::ModelError::Config(format!("cache layer {layer} does not exist ({layers} layers)"))
        })?;
        if self.reserved.len() < layers {
            self.reserved.resize_with(layers, || None);
        }
        let reserved = &mut self.reserved[layer];
        if keys.track_op() || values.track_op() {
            *reserved = None;
            let (keys, values) = match slot.take() {
                Some((past_keys, past_values)) => {
                    (Tensor::cat(&[past_keys, keys], 2)?, Tensor::cat(&[past_values, values], 2)?)
                }
                None => (keys, values),
            };
            *slot = Some((keys.clone(), values.clone()));
            return Ok((keys, values));
        }
        let keys = keys.contiguous()?;
        let values = values.contiguous()?;
        let (batch, kv_heads, new, head_dim) = keys.dims4()?;
        let past = match slot.as_ref() {
            Some((past_keys, _)) => past_keys.dim(2)?,
            None => 0,
        };
        let total = past + new;
        // Only room whose views are still what `layers` holds may be written: a view
        // anyone else took of it covers the filled prefix alone, never what comes after.
        let fits = match (reserved.as_ref(), slot.as_ref()) {
            (Some(room), Some((past_keys, past_values))) => {
                let (room_batch, room_heads, capacity, room_dim) = room.keys.dims4()?;
                room.keys_view == past_keys.id()
                    && room.values_view == past_values.id()
                    && (room_batch, room_heads, room_dim) == (batch, kv_heads, head_dim)
                    && capacity >= total
            }
            _ => false,
        };
        if !fits {
            let capacity = total.div_ceil(RESERVE_STEP) * RESERVE_STEP;
            let shape = (batch, kv_heads, capacity, head_dim);
            let room_keys = Tensor::zeros(shape, keys.dtype(), keys.device())?;
            let room_values = Tensor::zeros(shape, values.dtype(), values.device())?;
            if let Some((past_keys, past_values)) = slot.as_ref() {
                room_keys.slice_set(&past_keys.contiguous()?, 2, 0)?;
                room_values.slice_set(&past_values.contiguous()?, 2, 0)?;
            }
            *reserved = Some(Reserved {
                keys: room_keys,
                values: room_values,
                keys_view: keys.id(),
                values_view: values.id(),
            });
        }
        let Some(room) = reserved.as_mut() else {
            return Err(crate::ModelError::Config("cache: no room reserved".to_string()));
        };
        room.keys.slice_set(&keys, 2, past)?;
        room.values.slice_set(&values, 2, past)?;
        let all_keys = room.keys.narrow(2, 0, total)?;
        let all_values = room.values.narrow(2, 0, total)?;
        room.keys_view = all_keys.id();
        room.values_view = all_values.id();
        *slot = Some((all_keys.clone(), all_values.clone()));
        Ok((all_keys, all_values))
    }
}
