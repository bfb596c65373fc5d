//! Building blocks of the architectures, differentiable whenever a gradient is wanted.
//!
//! candle's fused `softmax_last_dim`, `rms_norm`, `layer_norm` and `rotary_emb::rope`
//! record no gradient (parameters upstream of them silently get none). So the
//! activations, norms and softmax here run agora's own fused ops ([`crate::fused`]: one
//! vectorised pass, with a hand-written backward) for f32 tensors in CPU memory, tracked
//! or not, and are composed from basic candle ops, which record a backward pass, for
//! anything else. Everything computes in the input's dtype; the models run in f32.

use candle_core::{D, DType, Device, Tensor};

use crate::{ModelError, Result, fused};

/// The additive value that hides a key from a query. Finite (like Hugging Face's
/// `finfo.min`) so that a row whose keys are all hidden (a padding query) gives a
/// uniform distribution instead of NaN after the max subtraction.
pub const MASKED: f32 = f32::MIN;

/// Softmax over the last dimension, with the row maximum subtracted first so `exp`
/// never overflows.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if fused::applies(&[xs]) {
        return fused::softmax_op(xs);
    }
    if !xs.track_op() {
        return Ok(candle_nn::ops::softmax_last_dim(&xs.contiguous()?)?);
    }
    let max = xs.max_keepdim(D::Minus1)?;
    let exp = xs.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    Ok(exp.broadcast_div(&sum)?)
}

/// `log(softmax(xs))` over the last dimension, stable for large logits.
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?;
    let shifted = xs.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// `log softmax(logits)[row, targets[row]]` for `[rows, vocab]` logits: `[rows]`,
/// differentiable (the composed form of [`crate::fused::linear_target_logprobs`]).
pub fn target_logprobs(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let index = Tensor::from_slice(targets, (targets.len(), 1), logits.device())?;
    Ok(log_softmax_last_dim(logits)?.gather(&index, 1)?.squeeze(1)?)
}

/// Root-mean-square normalisation (Llama): `xs / sqrt(mean(xs²) + eps) * weight`.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::applies(&[xs, weight]) {
        return fused::rms_norm_op(xs, weight, eps);
    }
    if !xs.track_op() && !weight.track_op() {
        return Ok(candle_nn::ops::rms_norm(&xs.contiguous()?, weight, eps as f32)?);
    }
    let mean_square = xs.sqr()?.mean_keepdim(D::Minus1)?;
    let normalised = xs.broadcast_div(&(mean_square + eps)?.sqrt()?)?;
    Ok(normalised.broadcast_mul(weight)?)
}

/// Layer normalisation (GPT-2): centre, divide by the standard deviation (biased
/// variance, as PyTorch), then scale and shift.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::applies(&[xs, weight, bias]) {
        return fused::layer_norm_op(xs, weight, bias, eps);
    }
    if !xs.track_op() && !weight.track_op() && !bias.track_op() {
        return Ok(candle_nn::ops::layer_norm(&xs.contiguous()?, weight, bias, eps as f32)?);
    }
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centred = xs.broadcast_sub(&mean)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normalised = centred.broadcast_div(&(variance + eps)?.sqrt()?)?;
    Ok(normalised.broadcast_mul(weight)?.broadcast_add(bias)?)
}

/// GPT-2's `gelu_new`: `0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`.
pub fn gelu_new(xs: &Tensor) -> Result<Tensor> {
    if fused::applies(&[xs]) {
        return fused::gelu_tanh_op(xs);
    }
    if !xs.track_op() {
        // candle's `gelu` is this tanh approximation, in one pass.
        return Ok(xs.gelu()?);
    }
    let sqrt_two_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    let inner = ((xs + (xs.powf(3.0)? * 0.044715)?)? * sqrt_two_over_pi)?;
    Ok(((xs * 0.5)? * (inner.tanh()? + 1.0)?)?)
}

/// `x * sigmoid(x)`, written as `x / (1 + exp(-x))`.
pub fn silu(xs: &Tensor) -> Result<Tensor> {
    if fused::applies(&[xs]) {
        return fused::silu_op(xs);
    }
    if !xs.track_op() {
        return Ok(xs.silu()?);
    }
    Ok((xs / (xs.neg()?.exp()? + 1.0)?)?)
}

/// Repeats each key/value head `repeats` times (grouped-query attention):
/// `[batch, kv_heads, seq, dim]` -> `[batch, kv_heads * repeats, seq, dim]`, each head
/// followed by its copies, as Hugging Face's `repeat_kv`.
pub fn repeat_kv(xs: Tensor, repeats: usize) -> Result<Tensor> {
    if repeats == 1 {
        return Ok(xs);
    }
    let (batch, kv_heads, seq, dim) = xs.dims4()?;
    Ok(xs.unsqueeze(2)?.broadcast_as((batch, kv_heads, repeats, seq, dim))?.reshape((
        batch,
        kv_heads * repeats,
        seq,
        dim,
    ))?)
}

/// How rotary frequencies are stretched for contexts longer than pre-training.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (every frequency divided by it).
    Linear {
        factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp in
    /// between (wavelengths measured against the original context).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// One divisor per frequency, as llama.cpp stores Llama 3 scaling in GGUF files
    /// (the `rope_freqs.weight` tensor).
    Factors(Vec<f64>),
}

/// Rotary position embeddings in the `rotate_half` layout of Hugging Face's Llama (the
/// first half of each head rotates with the second half). The inverse frequencies are
/// precomputed (with any scaling applied); cosines and sines are computed for the
/// positions of each call, which costs `batch * seq * head_dim / 2` values instead of a
/// table as long as the context (131,072 positions for Llama 3.1).
#[derive(Debug, Clone)]
pub struct Rotary {
    /// `[head_dim / 2]`, f32.
    inverse_frequencies: Tensor,
}

impl Rotary {
    pub fn new(head_dim: usize, theta: f64, scaling: &RopeScaling, device: &Device) -> Result<Rotary> {
        if !head_dim.is_multiple_of(2) {
            return Err(ModelError::Config(format!("rotary head dimension {head_dim} is odd")));
        }
        if let RopeScaling::Factors(factors) = scaling
            && factors.len() != head_dim / 2
        {
            return Err(ModelError::Config(format!(
                "{} rope frequency factors for a head dimension of {head_dim}",
                factors.len()
            )));
        }
        let inverse_frequencies: Vec<f32> = (0..head_dim / 2)
            .map(|index| {
                // Computed in f32 like transformers, so the tables match to the last bit.
                let exponent = (2 * index) as f32 / head_dim as f32;
                let frequency = 1.0 / (theta as f32).powf(exponent);
                scaled_frequency(f64::from(frequency), index, scaling) as f32
            })
            .collect();
        Ok(Rotary { inverse_frequencies: Tensor::new(inverse_frequencies, device)? })
    }

    /// Cosines and sines at `positions` (`[batch, seq]`, u32):
    /// `[batch, 1, seq, head_dim / 2]` each, ready to broadcast over heads.
    pub fn tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (batch, seq) = positions.dims2()?;
        let half = self.inverse_frequencies.dim(0)?;
        let angles = positions
            .to_dtype(DType::F32)?
            .reshape((batch, 1, seq, 1))?
            .broadcast_mul(&self.inverse_frequencies.reshape((1, 1, 1, half))?)?;
        Ok((angles.cos()?, angles.sin()?))
    }
}

fn scaled_frequency(frequency: f64, index: usize, scaling: &RopeScaling) -> f64 {
    match *scaling {
        RopeScaling::Factors(ref factors) => frequency / factors.get(index).copied().unwrap_or(1.0),
        RopeScaling::None => frequency,
        RopeScaling::Linear { factor } => frequency / factor,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let original = original_max_position_embeddings as f64;
            let low_freq_wavelength = original / low_freq_factor;
            let high_freq_wavelength = original / high_freq_factor;
            let wavelength = 2.0 * std::f64::consts::PI / frequency;
            if wavelength < high_freq_wavelength {
                frequency
            } else if wavelength > low_freq_wavelength {
                frequency / factor
            } else {
                let smooth = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * frequency / factor + smooth * frequency
            }
        }
    }
}

/// Rotates `xs` (`[batch, heads, seq, head_dim]`) by the tables from
/// [`Rotary::tables`]: `x * cos + rotate_half(x) * sin`, written per half.
pub fn apply_rotary(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !xs.track_op() {
        // candle's kernel takes the tables as `[batch, seq, head_dim / 2]`.
        let (cos, sin) = (cos.squeeze(1)?.contiguous()?, sin.squeeze(1)?.contiguous()?);
        return Ok(candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos, &sin)?);
    }
    let head_dim = xs.dim(D::Minus1)?;
    let half = head_dim / 2;
    let first = xs.narrow(D::Minus1, 0, half)?;
    let second = xs.narrow(D::Minus1, half, half)?;
    let rotated_first = (first.broadcast_mul(cos)? - second.broadcast_mul(sin)?)?;
    let rotated_second = (second.broadcast_mul(cos)? + first.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[rotated_first, rotated_second], D::Minus1)?)
}

/// Positions of new tokens: `past..past + seq` for every row without padding, or,
/// with a padding `mask` (`[batch, past + seq]`, 1 = real token), the number of real
/// tokens before each one (`cumsum(mask) - 1`, 0 for padding), as Hugging Face's
/// `generate` does, so left padding does not shift positions. `[batch, seq]`, u32.
pub fn positions(
    batch: usize,
    seq: usize,
    past: usize,
    mask: Option<&Tensor>,
    device: &Device,
) -> Result<Tensor> {
    match mask {
        None => {
            let row = Tensor::arange(past as u32, (past + seq) as u32, device)?;
            Ok(row.unsqueeze(0)?.broadcast_as((batch, seq))?.contiguous()?)
        }
        Some(mask) => {
            let rows = mask_rows(mask, batch, past + seq)?;
            let mut positions = Vec::with_capacity(batch * seq);
            for row in rows {
                // A token's position: real tokens up to and including it, minus one.
                let mut seen = 0u32;
                for (index, real) in row.into_iter().enumerate() {
                    seen += u32::from(real != 0);
                    if index >= past {
                        positions.push(seen.saturating_sub(1));
                    }
                }
            }
            Ok(Tensor::from_vec(positions, (batch, seq), device)?)
        }
    }
}

fn mask_rows(mask: &Tensor, batch: usize, keys: usize) -> Result<Vec<Vec<u32>>> {
    let dims = mask.dims();
    if dims != [batch, keys] {
        return Err(ModelError::Config(format!(
            "padding mask has shape {dims:?}, expected [{batch}, {keys}] (batch, cached + new tokens)"
        )));
    }
    Ok(mask.to_dtype(DType::U32)?.to_vec2::<u32>()?)
}

/// The additive attention mask for `seq` new queries over `past + seq` keys:
/// `[batch or 1, 1, seq, past + seq]`, 0 where a query may look and [`MASKED`] where it
/// may not (a later position, or a padding key). `None` when nothing is hidden (one
/// new token and no padding), so decoding costs no mask at all.
pub fn attention_mask(
    batch: usize,
    seq: usize,
    past: usize,
    padding: Option<&Tensor>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let keys = past + seq;
    let padding_rows = match padding {
        Some(mask) => Some(mask_rows(mask, batch, keys)?),
        None => None,
    };
    if seq == 1 && padding_rows.as_ref().is_none_or(|rows| rows.iter().flatten().all(|&v| v != 0)) {
        return Ok(None);
    }
    let rows = padding_rows.as_ref().map_or(1, |_| batch);
    let mut values = Vec::with_capacity(rows * seq * keys);
    for row in 0..rows {
        for query in 0..seq {
            for key in 0..keys {
                let causal = key <= past + query;
                let real = padding_rows.as_ref().is_none_or(|padding| padding[row][key] != 0);
                values.push(if causal && real { 0.0 } else { MASKED });
            }
        }
    }
    Ok(Some(Tensor::from_vec(values, (rows, 1, seq, keys), device)?))
}

/// Scaled dot-product attention with an additive mask; returns the output
/// `[batch, heads, seq, head_dim]` and the probabilities `[batch, heads, seq, keys]`.
///
/// `keys` and `values` may have fewer heads than `queries` (grouped-query attention:
/// `heads` a multiple of `kv_heads`, each key/value head serving the query heads that
/// follow it, as Hugging Face's `repeat_kv` pairs them). The query heads of a group are
/// stacked along the sequence so that one matrix product serves the whole group, instead
/// of copying every key and value `heads / kv_heads` times.
pub fn attention(
    queries: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (batch, heads, seq, head_dim) = queries.dims4()?;
    let kv_heads = keys.dim(1)?;
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(ModelError::Config(format!(
            "{heads} query heads are not a multiple of {kv_heads} key/value heads"
        )));
    }
    let key_count = keys.dim(2)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    if let Some(fused) = attention_fused(queries, keys, values, mask, scale as f32)? {
        return Ok(fused);
    }
    let grouped_queries =
        queries.contiguous()?.reshape((batch, kv_heads, heads / kv_heads * seq, head_dim))?;
    let on_cpu = fused::applies(&[&grouped_queries, keys, values]);
    let product = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
        if on_cpu { fused::batched_matmul(a, b) } else { Ok(a.matmul(b)?) }
    };
    let raw_scores = product(&grouped_queries, &keys.t()?)?;
    let probabilities = if fused::applies(&[&raw_scores]) && mask.is_none_or(|mask| mask.device().is_cpu()) {
        let raw_scores = raw_scores.reshape((batch, heads, seq, key_count))?;
        fused::scaled_masked_softmax_op(&raw_scores, mask, scale)?
    } else {
        let scores = (raw_scores * scale)?.reshape((batch, heads, seq, key_count))?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        softmax_last_dim(&scores)?
    };
    let grouped_probabilities =
        probabilities.reshape((batch, kv_heads, heads / kv_heads * seq, key_count))?;
    let output = product(&grouped_probabilities, values)?.reshape((batch, heads, seq, head_dim))?;
    Ok((output, probabilities))
}

/// A tensor's values when it holds f32 in CPU memory with its last dimension
/// contiguous: the storage (read-locked) and the layout to index it with.
fn cpu_f32_rows(tensor: &Tensor) -> Option<(candle_core::StorageRef<'_>, &candle_core::Layout)> {
    let (storage, layout) = tensor.storage_and_layout();
    let is_f32 = matches!(&*storage, candle_core::Storage::Cpu(candle_core::CpuStorage::F32(_)));
    let last_contiguous = layout.stride().last().is_none_or(|&stride| stride == 1);
    (is_f32 && last_contiguous).then_some((storage, layout))
}

fn f32_values(storage: &candle_core::Storage) -> &[f32] {
    match storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(values)) => values,
        _ => &[],
    }
}

/// Whether every index `offset + Σ (dims[i] - 1) * strides[i] + last` is inside `len`.
fn fits(len: usize, offset: usize, dims: &[usize], strides: &[usize]) -> bool {
    if dims.contains(&0) {
        return true;
    }
    let furthest: usize = dims.iter().zip(strides).map(|(&dim, &stride)| (dim - 1) * stride).sum();
    offset + furthest < len
}

/// [`attention`] without a backward pass, in one loop per query head reading the keys
/// and values where they lie (the cache's reserved room is strided): no transposed
/// copies, no matrix-product set-up, which dominate for the single query row of a
/// decode step. `None` for prompts (more than one query row), and when some input records
/// a gradient or is not f32 in CPU memory (the composed path handles those).
fn attention_fused(
    queries: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
    scale: f32,
) -> Result<Option<(Tensor, Tensor)>> {
    use rayon::prelude::*;
    let tracked =
        queries.track_op() || keys.track_op() || values.track_op() || mask.is_some_and(Tensor::track_op);
    if tracked || !queries.device().is_cpu() || queries.dtype() != DType::F32 {
        return Ok(None);
    }
    let (batch, heads, seq, head_dim) = queries.dims4()?;
    // Prompts (several query rows) go to candle's matrix products, which batch the rows;
    // the loop wins for the single row of a decode step.
    if seq > 1 {
        return Ok(None);
    }
    let (key_batch, kv_heads, key_count, key_dim) = keys.dims4()?;
    if keys.dims() != values.dims() || key_batch != batch || key_dim != head_dim {
        return Err(ModelError::Config(format!(
            "attention: queries {:?}, keys {:?}, values {:?} do not fit together",
            queries.dims(),
            keys.dims(),
            values.dims()
        )));
    }
    let group = heads / kv_heads;
    let queries = queries.contiguous()?;
    let mask = match mask {
        Some(mask) => {
            let rows = mask.dim(0)?;
            if mask.dims() != [rows, 1, seq, key_count] || (rows != 1 && rows != batch) {
                return Err(ModelError::Config(format!(
                    "attention mask has shape {:?}, expected [1 or {batch}, 1, {seq}, {key_count}]",
                    mask.dims()
                )));
            }
            Some(mask.to_dtype(DType::F32)?.contiguous()?)
        }
        None => None,
    };
    let (
        Some((query_storage, query_layout)),
        Some((key_storage, key_layout)),
        Some((value_storage, value_layout)),
    ) = (cpu_f32_rows(&queries), cpu_f32_rows(keys), cpu_f32_rows(values))
    else {
        return Ok(None);
    };
    let mask_parts = match &mask {
        Some(mask) => match cpu_f32_rows(mask) {
            Some(parts) => Some(parts),
            None => return Ok(None),
        },
        None => None,
    };
    let query_values = f32_values(&query_storage).get(query_layout.start_offset()..).unwrap_or(&[]);
    let key_values = f32_values(&key_storage);
    let value_values = f32_values(&value_storage);
    let (key_offset, key_strides) = (key_layout.start_offset(), key_layout.stride());
    let (value_offset, value_strides) = (value_layout.start_offset(), value_layout.stride());
    let mask_values = mask_parts
        .as_ref()
        .map(|(storage, layout)| f32_values(storage).get(layout.start_offset()..).unwrap_or(&[]));
    let mask_rows = mask.as_ref().map_or(1, |mask| mask.dim(0).unwrap_or(1));
    let in_bounds = query_values.len() >= batch * heads * seq * head_dim
        && fits(key_values.len(), key_offset, keys.dims(), key_strides)
        && fits(value_values.len(), value_offset, values.dims(), value_strides)
        && mask_values.is_none_or(|values| values.len() >= mask_rows * seq * key_count);
    if !in_bounds {
        return Ok(None);
    }
    let (key_batch_stride, key_head_stride, key_row_stride) =
        (key_strides[0], key_strides[1], key_strides[2]);
    let (value_batch_stride, value_head_stride, value_row_stride) =
        (value_strides[0], value_strides[1], value_strides[2]);
    let mut output = vec![0f32; batch * heads * seq * head_dim];
    let mut probabilities = vec![0f32; batch * heads * seq * key_count];
    let work_per_head = seq * key_count * head_dim;
    // Small heads (a decode step over a short cache) in one task: a rayon split costs
    // more than it saves below a few tens of thousands of multiply-adds.
    let heads_per_task = (32_768 / work_per_head.max(1)).clamp(1, batch * heads);
    output
        .par_chunks_mut(heads_per_task * seq * head_dim)
        .zip(probabilities.par_chunks_mut(heads_per_task * seq * key_count))
        .enumerate()
        .for_each(|(task, (outputs, probabilities))| {
            let head_outputs = outputs.chunks_exact_mut(seq * head_dim);
            let head_probabilities = probabilities.chunks_exact_mut(seq * key_count);
            for (offset, (outputs, probabilities)) in head_outputs.zip(head_probabilities).enumerate() {
                let index = task * heads_per_task + offset;
                let (row, head) = (index / heads, index % heads);
                let kv_head = head / group;
                let key_base = key_offset + row * key_batch_stride + kv_head * key_head_stride;
                let value_base = value_offset + row * value_batch_stride + kv_head * value_head_stride;
                let mask_row = if mask_rows == 1 { 0 } else { row };
                for query in 0..seq {
                    let query_start = (index * seq + query) * head_dim;
                    let query_row = query_values.get(query_start..query_start + head_dim).unwrap_or(&[]);
                    let mask_start = (mask_row * seq + query) * key_count;
                    let mask_values =
                        mask_values.and_then(|values| values.get(mask_start..mask_start + key_count));
                    crate::quant_kernels::attend_row(
                        query_row,
                        key_values.get(key_base..).unwrap_or(&[]),
                        key_row_stride,
                        value_values.get(value_base..).unwrap_or(&[]),
                        value_row_stride,
                        mask_values,
                        scale,
                        &mut probabilities[query * key_count..(query + 1) * key_count],
                        &mut outputs[query * head_dim..(query + 1) * head_dim],
                    );
                }
            }
        });
    drop((query_storage, key_storage, value_storage, mask_parts));
    let device = queries.device();
    Ok(Some((
        Tensor::from_vec(output, (batch, heads, seq, head_dim), device)?,
        Tensor::from_vec(probabilities, (batch, heads, seq, key_count), device)?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: &[f32], expected: &[f32]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-5, "{actual:?} != {expected:?}");
        }
    }

    #[test]
    fn softmax_and_log_softmax_are_stable() {
        let xs = Tensor::new(&[[1000f32, 1001.0, 1002.0]], &Device::Cpu).unwrap();
        let probabilities = softmax_last_dim(&xs).unwrap().to_vec2::<f32>().unwrap();
        close(&probabilities[0], &[0.09003057, 0.24472848, 0.66524094]);
        let logs = log_softmax_last_dim(&xs).unwrap().to_vec2::<f32>().unwrap();
        close(&logs[0], &[-2.407606, -1.407606, -0.407606]);
    }

    #[test]
    fn positions_follow_the_padding_mask() {
        let device = Device::Cpu;
        let mask = Tensor::new(&[[0u32, 0, 1, 1, 1], [1, 1, 1, 1, 1]], &device).unwrap();
        let got = positions(2, 5, 0, Some(&mask), &device).unwrap().to_vec2::<u32>().unwrap();
        assert_eq!(got, vec![vec![0, 0, 0, 1, 2], vec![0, 1, 2, 3, 4]]);
        let got = positions(2, 2, 3, Some(&mask), &device).unwrap().to_vec2::<u32>().unwrap();
        assert_eq!(got, vec![vec![1, 2], vec![3, 4]]);
        let got = positions(1, 2, 3, None, &device).unwrap().to_vec2::<u32>().unwrap();
        assert_eq!(got, vec![vec![3, 4]]);
    }

    #[test]
    fn decoding_one_unpadded_token_needs_no_mask() {
        let device = Device::Cpu;
        assert!(attention_mask(2, 1, 4, None, &device).unwrap().is_none());
        let mask = attention_mask(1, 2, 1, None, &device).unwrap().unwrap();
        let rows = mask.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows, vec![vec![0.0, 0.0, MASKED], vec![0.0, 0.0, 0.0]]);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        assert_eq!(scaled_frequency(1.0, 0, &scaling), 1.0);
        assert!((scaled_frequency(1e-5, 0, &scaling) - 1.25e-6).abs() < 1e-12);
    }
}
