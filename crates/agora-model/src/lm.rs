//! The contract between architectures and everything that runs them (scoring,
//! generation, training): logits for every position, a key/value cache, optional
//! attention capture.

use candle_core::{Device, Tensor};

use crate::Result;

/// A causal language model as the engine sees it.
pub trait LanguageModel {
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
#[derive(Debug, Clone, Default)]
pub struct Cache {
    /// `(keys, values)` per layer, each `[batch, kv_heads, len, head_dim]`; `None`
    /// before the first forward call.
    pub layers: Vec<Option<(Tensor, Tensor)>>,
    /// Tokens held (the sequence length of every entry of `layers`).
    pub len: usize,
    /// `Some` to record attention: one entry per forward call, per layer
    /// `[batch, heads, seq, cache.len + seq]`. `None` (the default) costs nothing.
    pub attention: Option<Vec<Vec<Tensor>>>,
}

impl Cache {
    pub fn new(layers: usize) -> Cache {
        Cache { layers: vec![None; layers], len: 0, attention: None }
    }

    /// Switches attention capture on.
    pub fn capture_attention(mut self) -> Cache {
        self.attention = Some(Vec::new());
        self
    }

    /// Forgets every token (keeps the capture setting, clears what was captured).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|layer| *layer = None);
        self.len = 0;
        if let Some(attention) = &mut self.attention {
            attention.clear();
        }
    }
}
