//! Self-attention over a packed q|k|v projection as one op of the graph, for training.
//!
//! Composed, GPT-2's attention is some twenty nodes per layer: the three slices of the
//! projection, each reshaped, transposed and copied; the scores, their softmax, the
//! output; the merge of the heads. In backward candle gives every node a zeroed gradient
//! and adds into it (a slice's gradient is also padded with zeros and concatenated), so
//! a layer allocated, zeroed and added some 80 MB for 4 x 256 tokens. Here the graph has
//! one node; each (sequence, head) pair is one task on rayon's pool that reads its
//! queries, keys and values where they lie in the projection, and keeps its 256 x 256
//! scores in the core's cache from product to softmax to product.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_values, dispatch, lanes_dot, mask_values, op_error, scaled_masked_softmax_row, with_values};
use crate::Result;
use crate::sgemm::{MatRef, matmul_into_here};

/// `softmax(scale · q kᵀ + mask) v` per head for `qkv` `[batch, seq, 3 · width]` (queries,
/// keys, values side by side, each `heads` heads of `width / heads`), with its backward.
/// Returns `[batch, seq, width]`, the heads merged. `mask`: additive,
/// `[batch or 1, 1, seq, seq]`. f32 in CPU memory (see [`super::applies`]).
pub(crate) fn packed_attention(
    qkv: &Tensor,
    heads: usize,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (_, seq, packed) = qkv.dims3()?;
    if heads == 0 || packed % (3 * heads) != 0 {
        return Err(crate::ModelError::Config(format!(
            "a q|k|v projection of {packed} features does not split into 3 x {heads} heads"
        )));
    }
    let mask = mask_values(mask, seq, seq)?;
    let op = PackedAttention { heads, scale: scale as f32, mask, kept: Mutex::new(None) };
    Ok(qkv.contiguous()?.apply_op1(op)?)
}

struct PackedAttention {
    heads: usize,
    scale: f32,
    /// The mask's values and how many batch rows it has (1: shared by every row).
    mask: Option<(Vec<f32>, usize)>,
    /// The probabilities `[batch, heads, seq, seq]` of the forward pass, for the backward.
    kept: Mutex<Option<Vec<f32>>>,
}

/// The sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
}

impl Dims {
    fn width(self) -> usize {
        self.heads * self.head_dim
    }

    /// Part `part` (0 queries, 1 keys, 2 values) of head `head` of sequence `row` in the
    /// packed projection: `seq x head_dim`, rows `3 · width` apart.
    fn part<'a>(self, qkv: &'a [f32], row: usize, head: usize, part: usize) -> MatRef<'a> {
        let start = row * self.seq * 3 * self.width() + part * self.width() + head * self.head_dim;
        MatRef::strided(&qkv[start.min(qkv.len())..], self.seq, self.head_dim, 3 * self.width(), 1)
    }

    /// The queries, keys and values of head `head` of sequence `row`.
    fn head<'a>(self, qkv: &'a [f32], row: usize, head: usize) -> [MatRef<'a>; 3] {
        [0, 1, 2].map(|part| self.part(qkv, row, head, part))
    }
}

impl PackedAttention {
    fn dims(&self, shape: &Shape) -> candle_core::Result<Dims> {
        let (batch, seq, packed) = shape.dims3()?;
        let head_dim = packed / (3 * self.heads).max(1);
        if let Some((mask, mask_batch)) = &self.mask
            && (mask.len() != mask_batch * seq * seq || !(*mask_batch == 1 || *mask_batch == batch))
        {
            return Err(op_error(
                self.name(),
                format!("mask of {} values for {batch} x {seq} tokens", mask.len()),
            ));
        }
        Ok(Dims { batch, seq, heads: self.heads, head_dim })
    }

    /// The mask's row for query `query` of sequence `row`.
    fn mask_row(&self, row: usize, query: usize, seq: usize) -> Option<&[f32]> {
        self.mask.as_ref().map(|(mask, mask_batch)| {
            let start = ((if *mask_batch == 1 { 0 } else { row }) * seq + query) * seq;
            &mask[start..start + seq]
        })
    }

    /// Probabilities `[batch · heads][seq, seq]` and each head's output `[batch · heads]
    /// [seq, head_dim]`.
    fn probabilities_and_outputs(
        &self,
        qkv: &[f32],
        dims: Dims,
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let Dims { batch, seq, heads, head_dim } = dims;
        let mut probabilities = vec![0.0f32; batch * heads * seq * seq];
        let mut outputs = vec![0.0f32; batch * heads * seq * head_dim];
        probabilities
            .par_chunks_mut((seq * seq).max(1))
            .zip(outputs.par_chunks_mut((seq * head_dim).max(1)))
            .enumerate()
            .try_for_each(|(task, (scores, output))| {
                let (row, head) = (task / heads, task % heads);
                let [queries, keys, values] = dims.head(qkv, row, head);
                matmul_into_here(scores, queries, keys.t()).map_err(|e| op_error(self.name(), e))?;
                for (query, scores) in scores.chunks_exact_mut(seq).enumerate() {
                    let mask = self.mask_row(row, query, seq);
                    dispatch(
                        #[inline(always)]
                        || scaled_masked_softmax_row(scores, mask, self.scale),
                    );
                }
                matmul_into_here(output, MatRef::row_major(scores, seq, seq), values)
                    .map_err(|e| op_error(self.name(), e))
            })?;
        Ok((probabilities, outputs))
    }
}

/// Writes per-task blocks `[batch · heads][parts][seq, head_dim]` into rows of `parts ·
/// width` (`[batch, seq, parts, heads, head_dim]`): the heads merged.
fn merge_heads(blocks: &[f32], dims: Dims, parts: usize) -> Vec<f32> {
    let Dims { batch, seq, heads, head_dim } = dims;
    let width = dims.width();
    let mut merged = vec![0.0f32; batch * seq * parts * width];
    merged.par_chunks_mut((parts * width).max(1)).enumerate().for_each(|(index, out)| {
        let (row, position) = (index / seq, index % seq);
        for part in 0..parts {
            for head in 0..heads {
                let block = ((row * heads + head) * parts + part) * seq * head_dim;
                let source = &blocks[block + position * head_dim..block + (position + 1) * head_dim];
                out[part * width + head * head_dim..][..head_dim].copy_from_slice(source);
            }
        }
    });
    merged
}

impl CustomOp1 for PackedAttention {
    fn name(&self) -> &'static str {
        "fused-packed-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = cpu_values(self.name(), storage, layout)?;
        let dims = self.dims(layout.shape())?;
        let (probabilities, outputs) = self.probabilities_and_outputs(qkv, dims)?;
        *self.kept.lock().map_err(|_| op_error(self.name(), "lock poisoned"))? = Some(probabilities);
        let merged = merge_heads(&outputs, dims, 1);
        Ok((CpuStorage::F32(merged), Shape::from((dims.batch, dims.seq, dims.width()))))
    }

    /// Per head, with `P` the probabilities and `g` the output's gradient:
    /// `dV = Pᵀ g`, `dS = scale · P ⊙ (g Vᵀ - rowsum(P ⊙ g Vᵀ))`, `dQ = dS K`, `dK = dSᵀ Q`.
    fn bwd(&self, qkv: &Tensor, _result: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let name = self.name();
        let dims = self.dims(qkv.shape())?;
        let Dims { batch, seq, heads, head_dim } = dims;
        let kept = self.kept.lock().map_err(|_| op_error(name, "lock poisoned"))?.take();
        let gradient = with_values(name, qkv, |qkv| {
            // Another backward pass through the same forward recomputes them.
            let probabilities = match kept {
                Some(probabilities) => probabilities,
                None => self.probabilities_and_outputs(qkv, dims)?.0,
            };
            with_values(name, grad, |grad| -> candle_core::Result<Vec<f32>> {
                let width = dims.width();
                let mut blocks = vec![0.0f32; batch * heads * 3 * seq * head_dim];
                blocks
                    .par_chunks_mut((3 * seq * head_dim).max(1))
                    .zip(probabilities.par_chunks(seq * seq))
                    .enumerate()
                    .try_for_each(|(task, (block, probabilities))| {
                        let (row, head) = (task / heads, task % heads);
                        let start = row * seq * width + head * head_dim;
                        let output_grad =
                            MatRef::strided(&grad[start.min(grad.len())..], seq, head_dim, width, 1);
                        let [queries, keys, values] = dims.head(qkv, row, head);
                        let p = MatRef::row_major(probabilities, seq, seq);
                        let (dq, rest) = block.split_at_mut(seq * head_dim);
                        let (dk, dv) = rest.split_at_mut(seq * head_dim);
                        matmul_into_here(dv, p.t(), output_grad).map_err(|e| op_error(name, e))?;
                        let mut scores = vec![0.0f32; seq * seq];
                        matmul_into_here(&mut scores, output_grad, values.t())
                            .map_err(|e| op_error(name, e))?;
                        for (d, p) in scores.chunks_exact_mut(seq).zip(probabilities.chunks_exact(seq)) {
                            dispatch(
                                #[inline(always)]
                                || {
                                    let dot = lanes_dot(d, p);
                                    d.iter_mut().zip(p).for_each(|(d, &p)| *d = self.scale * p * (*d - dot));
                                },
                            );
                        }
                        let scores = MatRef::row_major(&scores, seq, seq);
                        matmul_into_here(dq, scores, keys).map_err(|e| op_error(name, e))?;
                        matmul_into_here(dk, scores.t(), queries).map_err(|e| op_error(name, e))
                    })?;
                Ok(merge_heads(&blocks, dims, 3))
            })?
        })??;
        Ok(Some(Tensor::from_vec(gradient, qkv.shape(), qkv.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::super::tests::{assert_close, seeded};
    use super::*;

    /// The path this op replaces in training: the projection sliced into heads, then
    /// [`crate::ops::attention`] (which scales by `1 / sqrt(head_dim)`).
    fn composed(qkv: &Tensor, heads: usize, mask: Option<&Tensor>) -> Tensor {
        let (batch, seq, packed) = qkv.dims3().unwrap();
        let width = packed / 3;
        let part = |index: usize| {
            qkv.narrow(D::Minus1, index * width, width)
                .unwrap()
                .reshape((batch, seq, heads, width / heads))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (output, _) = crate::ops::attention(&part(0), &part(1), &part(2), mask).unwrap();
        output.transpose(1, 2).unwrap().reshape((batch, seq, width)).unwrap()
    }

    #[test]
    fn packed_attention_and_its_gradient_match_the_composed_ops() {
        let (batch, seq, heads, head_dim) = (2, 5, 3, 4);
        let width = heads * head_dim;
        // A causal mask with the first key of the second row padded.
        let mut mask = Vec::new();
        for row in 0..batch {
            for query in 0..seq {
                for key in 0..seq {
                    let hidden = key > query || (row == 1 && key == 0 && query > 0);
                    mask.push(if hidden { -1e9f32 } else { 0.0 });
                }
            }
        }
        let mask = Tensor::from_vec(mask, (batch, 1, seq, seq), &Device::Cpu).unwrap();
        for mask in [None, Some(&mask)] {
            let qkv = Var::from_tensor(&seeded(&[batch, seq, 3 * width], 3, 1.0)).unwrap();
            let weights = seeded(&[batch, seq, width], 11, 1.0);
            let scale = 1.0 / (head_dim as f64).sqrt();
            let ours = packed_attention(qkv.as_tensor(), heads, scale, mask).unwrap();
            let expected = composed(qkv.as_tensor(), heads, mask);
            assert_close(&ours, &expected, 1e-5, "output");
            let ours_grad = (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let expected_grad = (expected * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            assert_close(
                ours_grad.get(qkv.as_tensor()).unwrap(),
                expected_grad.get(qkv.as_tensor()).unwrap(),
                1e-5,
                "gradient",
            );
        }
    }

    #[test]
    fn a_projection_that_does_not_split_into_heads_is_an_error() {
        let qkv = seeded(&[1, 2, 10], 1, 1.0);
        assert!(packed_attention(&qkv, 3, 1.0, None).is_err());
        let mask = Tensor::zeros((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(packed_attention(&seeded(&[1, 2, 12], 1, 1.0), 2, 1.0, Some(&mask)).is_err());
    }
}
