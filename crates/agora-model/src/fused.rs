//! Fused CPU ops with their own backward pass: GELU (tanh), SiLU, softmax, layer norm,
//! RMS norm, and the output layer's log-probabilities of target tokens.
//!
//! Composed from candle's basic ops, each of these builds several full-size temporaries
//! in the forward pass and more in the backward pass (GELU alone: eight), and candle's
//! unary kernels call libm one value at a time. Here each is one pass over its rows,
//! vectorised for the CPU it runs on (pulp picks AVX-512, AVX2 or scalar at run time),
//! parallel over rayon's pool, with the gradient written out by hand, as PyTorch's fused
//! kernels do. [`crate::ops`] calls them for f32 tensors in CPU memory, tracked for a
//! gradient or not, and keeps the composed forms for everything else.
//!
//! [`linear_target_logprobs`] goes further: the log-probability of each target token
//! under `softmax(hidden · Wᵀ)` without a `[rows, vocab]` logits tensor in the graph.
//! Its forward keeps the softmax (or recomputes it in row blocks when that would exceed
//! [`KEEP_PROBABILITIES`]) and its backward is two matrix products, so SFT and DPO on a
//! 50,257-token vocabulary no longer allocate and fault in a dozen logits-sized tensors
//! per step.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::sgemm::{MatRef, matmul, matmul_into, matmul_into_here, matmul_transposing};
use crate::{ModelError, Result};

mod attention;
pub(crate) use attention::packed_attention;

/// Values per parallel task of an elementwise op.
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// The most softmax values (rows x vocabulary) [`linear_target_logprobs`] keeps from its
/// forward pass for the backward pass: 128 Mi floats, 512 MiB. Beyond it the backward
/// pass recomputes the logits block by block (one extra matrix product).
pub const KEEP_PROBABILITIES: usize = 128 << 20;

/// Rows per block when the logits are recomputed.
const RECOMPUTE_ROWS: usize = 256;

// ---------------------------------------------------------------------------------------
// Vector math. Written as plain loops over fixed-width lanes so that LLVM vectorises them
// inside `pulp::Arch::dispatch`, which compiles the closure for the CPU's instruction set.

const LANES: usize = 16;

/// `e^x`, Cephes' single-precision polynomial after range reduction (within 2 ulp);
/// 0 below -87.3 (where f32 would go subnormal), NaN for NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.336_55, 88.376_26);
    // Round to nearest by the 1.5 * 2^23 trick (no libm call where SSE4.1 is missing).
    const ROUND: f32 = 12_582_912.0;
    let k = (clamped * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = clamped - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    if x.is_nan() {
        x
    } else if x < -87.336_55 {
        0.0
    } else {
        y * scale
    }
}

/// `tanh(x) = 1 - 2 / (e^{2x} + 1)`, saturated beyond |x| = 10.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let clamped = x.clamp(-10.0, 10.0);
    1.0 - 2.0 / (exp(2.0 * clamped) + 1.0)
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)))
}

#[inline(always)]
fn gelu_tanh_derivative(x: f32) -> f32 {
    let t = tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn lanes_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x);
        }
    }
    rest.iter().chain(&lanes).fold(f32::NEG_INFINITY, |max, &x| max.max(x))
}

#[inline(always)]
fn lanes_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f(x);
        }
    }
    rest.iter().map(|&x| f(x)).sum::<f32>() + lanes.iter().sum::<f32>()
}

#[inline(always)]
fn lanes_dot(xs: &[f32], ys: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES).zip(ys.chunks_exact(LANES));
    let done = xs.len() / LANES * LANES;
    for (x, y) in chunks {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    xs[done..].iter().zip(&ys[done..]).map(|(x, y)| x * y).sum::<f32>() + lanes.iter().sum::<f32>()
}

/// `row ← exp(row - max)`; returns the sum of the new values.
#[inline(always)]
fn exp_shifted_in_place(row: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *x = exp(*x - max);
            *lane += *x;
        }
    }
    let mut rest = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        rest += *x;
    }
    rest + lanes.iter().sum::<f32>()
}

/// Runs `f` compiled for the best instruction set the CPU has. `f` must be an
/// `#[inline(always)]` closure (and everything it calls inlined), or it keeps the
/// baseline instruction set.
#[inline(always)]
fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

// ---------------------------------------------------------------------------------------
// Plumbing between candle's storage and slices.

fn op_error(op: &str, message: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: {message}"))
}

/// The f32 values of a contiguous layout of `storage`.
pub(crate) fn cpu_values<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        return Err(op_error(op, format!("expects f32, got {:?}", storage.dtype())));
    };
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| op_error(op, "input is not contiguous"))?;
    values.get(start..end).ok_or_else(|| op_error(op, "layout reaches past the storage"))
}

/// [`cpu_values`], writable: what in-place ops update.
pub(crate) fn cpu_values_mut<'a>(
    op: &str,
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a mut [f32]> {
    let dtype = storage.dtype();
    let CpuStorage::F32(values) = storage else {
        return Err(op_error(op, format!("expects f32, got {dtype:?}")));
    };
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| op_error(op, "input is not contiguous"))?;
    values.get_mut(start..end).ok_or_else(|| op_error(op, "layout reaches past the storage"))
}

/// Runs `f` on the values of `tensor` (f32 on the CPU), copied only if not contiguous.
fn with_values<R>(op: &str, tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => Ok(f(cpu_values(op, cpu, layout)?)),
        _ => Err(op_error(op, "expects a tensor in CPU memory")),
    }
}

fn tensor_like(values: Vec<f32>, like: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values, like.shape(), like.device())
}

/// Whether the fused ops can take these tensors (f32 in CPU memory).
pub(crate) fn applies(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|tensor| tensor.dtype() == DType::F32 && tensor.device().is_cpu())
}

fn last_dim(op: &str, shape: &Shape) -> candle_core::Result<usize> {
    match shape.dims().last() {
        Some(&width) if width > 0 => Ok(width),
        _ => Err(op_error(op, format!("needs a non-empty last dimension, got {shape:?}"))),
    }
}

// ---------------------------------------------------------------------------------------
// Elementwise activations.

/// Applies `f` to every value, in parallel blocks, vectorised.
fn map_values(values: &[f32], f: impl Fn(f32) -> f32 + Sync + Copy) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    out.par_chunks_mut(ELEMENTWISE_CHUNK).zip(values.par_chunks(ELEMENTWISE_CHUNK)).for_each(|(out, xs)| {
        dispatch(
            #[inline(always)]
            || {
                for (o, &x) in out.iter_mut().zip(xs) {
                    *o = f(x);
                }
            },
        )
    });
    out
}

/// `grad · f'(x)` for every value.
fn map_grad(values: &[f32], grad: &[f32], derivative: impl Fn(f32) -> f32 + Sync + Copy) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(values.par_chunks(ELEMENTWISE_CHUNK).zip(grad.par_chunks(ELEMENTWISE_CHUNK)))
        .for_each(|(out, (xs, gs))| {
            dispatch(
                #[inline(always)]
                || {
                    for ((o, &x), &g) in out.iter_mut().zip(xs).zip(gs) {
                        *o = g * derivative(x);
                    }
                },
            )
        });
    out
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluTanh,
    Silu,
}

impl Activation {
    fn name(self) -> &'static str {
        match self {
            Activation::GeluTanh => "fused-gelu-tanh",
            Activation::Silu => "fused-silu",
        }
    }
}

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        Activation::name(*self)
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = cpu_values(self.name(), storage, layout)?;
        let out = match self {
            Activation::GeluTanh => map_values(values, gelu_tanh),
            Activation::Silu => map_values(
                values,
                #[inline(always)]
                |x| x * sigmoid(x),
            ),
        };
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, xs: &Tensor, _result: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let name = self.name();
        let grad_values = with_values(name, grad, |g| g.to_vec())?;
        let out = with_values(name, xs, |x| match self {
            Activation::GeluTanh => map_grad(x, &grad_values, gelu_tanh_derivative),
            Activation::Silu => map_grad(
                x,
                &grad_values,
                #[inline(always)]
                |x| {
                    let s = sigmoid(x);
                    s * (1.0 + x * (1.0 - s))
                },
            ),
        })?;
        Ok(Some(tensor_like(out, xs)?))
    }
}

/// GPT-2's `gelu_new`, `0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`, with its backward.
pub(crate) fn gelu_tanh_op(xs: &Tensor) -> Result<Tensor> {
    Ok(xs.contiguous()?.apply_op1(Activation::GeluTanh)?)
}

/// `x · sigmoid(x)`, with its backward.
pub(crate) fn silu_op(xs: &Tensor) -> Result<Tensor> {
    Ok(xs.contiguous()?.apply_op1(Activation::Silu)?)
}

// ---------------------------------------------------------------------------------------
// Softmax over the last dimension.

/// `row ← softmax(row)` (max subtracted first); returns the max and the sum of
/// `exp(x - max)`, so that `log softmax(x)_i = x_i - max - ln(sum)`.
#[inline(always)]
fn softmax_in_place(row: &mut [f32]) -> (f32, f32) {
    let max = lanes_max(row);
    let sum = exp_shifted_in_place(row, max);
    let inverse = 1.0 / sum;
    row.iter_mut().for_each(|p| *p *= inverse);
    (max, sum)
}

/// The backward pass of a row-wise softmax scaled by `scale` on its input:
/// `dx = scale · y · (g - Σ g·y)` per row of `result` (`y`).
fn softmax_backward(op: &str, result: &Tensor, grad: &Tensor, scale: f32) -> candle_core::Result<Tensor> {
    let width = last_dim(op, result.shape())?;
    let mut out = with_values(op, grad, |g| g.to_vec())?;
    with_values(op, result, |y| {
        out.par_chunks_mut(width).zip(y.par_chunks(width)).for_each(|(g, y)| {
            dispatch(
                #[inline(always)]
                || {
                    let dot = lanes_dot(g, y);
                    g.iter_mut().zip(y).for_each(|(g, &y)| *g = scale * y * (*g - dot));
                },
            )
        })
    })?;
    tensor_like(out, result)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = cpu_values(self.name(), storage, layout)?;
        let width = last_dim(self.name(), layout.shape())?;
        let mut out = values.to_vec();
        out.par_chunks_mut(width).for_each(|row| {
            dispatch(
                #[inline(always)]
                || {
                    softmax_in_place(row);
                },
            )
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// `dx = y · (g - Σ g·y)` per row.
    fn bwd(&self, _xs: &Tensor, result: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(softmax_backward(self.name(), result, grad, 1.0)?))
    }
}

/// Softmax over the last dimension (max subtracted first), with its backward.
pub(crate) fn softmax_op(xs: &Tensor) -> Result<Tensor> {
    Ok(xs.contiguous()?.apply_op1(Softmax)?)
}

/// `softmax(scale · scores + mask)` over the last dimension of attention scores
/// `[batch, heads, queries, keys]`, the additive mask `[batch or 1, 1, queries, keys]`
/// broadcast over heads. One pass instead of candle's scale, broadcast add and softmax
/// (and their three backward passes); the backward is the softmax's times `scale`.
struct ScaledMaskedSoftmax {
    scale: f32,
    /// The mask's values and how many batch rows it has (1: shared by every row).
    mask: Option<(Vec<f32>, usize)>,
}

impl CustomOp1 for ScaledMaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-scaled-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = cpu_values(self.name(), storage, layout)?;
        let (batch, heads, queries, keys) = layout.shape().dims4()?;
        let mut out = values.to_vec();
        if let Some((mask, mask_batch)) = &self.mask
            && (mask.len() != mask_batch * queries * keys || !(*mask_batch == 1 || *mask_batch == batch))
        {
            return Err(op_error(
                self.name(),
                format!("mask of {} values for scores {:?}", mask.len(), layout.shape()),
            ));
        }
        let scale = self.scale;
        out.par_chunks_mut(keys.max(1)).enumerate().for_each(|(index, row)| {
            let query = index % queries;
            let row_batch = index / (heads * queries);
            let mask_row = self.mask.as_ref().map(|(mask, mask_batch)| {
                let start = ((if *mask_batch == 1 { 0 } else { row_batch }) * queries + query) * keys;
                &mask[start..start + keys]
            });
            dispatch(
                #[inline(always)]
                || scaled_masked_softmax_row(row, mask_row, scale),
            )
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// `dx = scale · y · (g - Σ g·y)` per row.
    fn bwd(&self, _xs: &Tensor, result: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(softmax_backward(self.name(), result, grad, self.scale)?))
    }
}

/// `row ← softmax(scale · row + mask)`, one row of attention scores.
#[inline(always)]
fn scaled_masked_softmax_row(row: &mut [f32], mask: Option<&[f32]>, scale: f32) {
    match mask {
        Some(mask) => row.iter_mut().zip(mask).for_each(|(x, &m)| *x = *x * scale + m),
        None => row.iter_mut().for_each(|x| *x *= scale),
    }
    softmax_in_place(row);
}

/// An additive attention mask `[batch or 1, 1, queries, keys]` as values and its batch
/// rows, checked against the scores' queries and keys.
fn mask_values(mask: Option<&Tensor>, queries: usize, keys: usize) -> Result<Option<(Vec<f32>, usize)>> {
    let Some(mask) = mask else {
        return Ok(None);
    };
    let (mask_batch, one, mask_queries, mask_keys) = mask.dims4()?;
    if one != 1 || (mask_queries, mask_keys) != (queries, keys) {
        return Err(ModelError::Config(format!(
            "attention mask {:?} for {queries} queries over {keys} keys",
            mask.dims()
        )));
    }
    Ok(Some((mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, mask_batch)))
}

/// Attention probabilities `softmax(scale · scores + mask)`; see [`ScaledMaskedSoftmax`].
pub(crate) fn scaled_masked_softmax_op(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (_, _, queries, keys) = scores.dims4()?;
    let mask = mask_values(mask, queries, keys)?;
    Ok(scores.contiguous()?.apply_op1(ScaledMaskedSoftmax { scale: scale as f32, mask })?)
}

// ---------------------------------------------------------------------------------------
// Layer norm and RMS norm over the last dimension.

/// Per row: the mean (0 for RMS norm) and `1 / sqrt(variance + eps)` (of the mean
/// square for RMS norm).
#[inline(always)]
fn row_statistics(row: &[f32], eps: f32, centred: bool) -> (f32, f32) {
    let width = row.len() as f32;
    let mean = if centred {
        lanes_sum(
            row,
            #[inline(always)]
            |x| x,
        ) / width
    } else {
        0.0
    };
    let variance = lanes_sum(
        row,
        #[inline(always)]
        |x| (x - mean) * (x - mean),
    ) / width;
    (mean, 1.0 / (variance + eps).sqrt())
}

/// `(x - mean) · rstd · w + b` (layer norm) or `x · rstd · w` (RMS norm, `bias` None).
fn norm_forward(values: &[f32], weight: &[f32], bias: Option<&[f32]>, eps: f32) -> Vec<f32> {
    let width = weight.len();
    let mut out = vec![0.0f32; values.len()];
    out.par_chunks_mut(width).zip(values.par_chunks(width)).for_each(|(out, row)| {
        dispatch(
            #[inline(always)]
            || {
                let (mean, rstd) = row_statistics(row, eps, bias.is_some());
                match bias {
                    Some(bias) => {
                        for (((o, &x), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
                            *o = (x - mean) * rstd * w + b;
                        }
                    }
                    None => {
                        for ((o, &x), &w) in out.iter_mut().zip(row).zip(weight) {
                            *o = x * rstd * w;
                        }
                    }
                }
            },
        )
    });
    out
}

/// The input gradient, and the weight's and bias's gradients summed over rows:
/// with `x̂ = (x - mean) · rstd` and `ĝ = g · w`,
/// `dx = rstd · (ĝ - mean(ĝ) - x̂ · mean(ĝ · x̂))` (RMS norm: without `mean(ĝ)`),
/// `dw = Σ g · x̂`, `db = Σ g`.
fn norm_backward(
    values: &[f32],
    weight: &[f32],
    grad: &[f32],
    eps: f32,
    centred: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let width = weight.len();
    let rows = values.len() / width;
    let threads = rayon::current_num_threads().max(1);
    let rows_per_task = rows.div_ceil(threads * 4).max(1);
    let mut dx = vec![0.0f32; values.len()];
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(width * rows_per_task)
        .zip(values.par_chunks(width * rows_per_task).zip(grad.par_chunks(width * rows_per_task)))
        .map(|(dx, (xs, gs))| {
            dispatch(
                #[inline(always)]
                || {
                    let mut dw = vec![0.0f32; width];
                    let mut db = vec![0.0f32; width];
                    let mut scaled = vec![0.0f32; width];
                    for ((dx, row), g) in dx.chunks_mut(width).zip(xs.chunks(width)).zip(gs.chunks(width)) {
                        let (mean, rstd) = row_statistics(row, eps, centred);
                        let mut sum_scaled = 0.0f32;
                        let mut sum_scaled_normed = 0.0f32;
                        for ((((s, &x), &g), &w), (dw, db)) in scaled
                            .iter_mut()
                            .zip(row)
                            .zip(g)
                            .zip(weight)
                            .zip(dw.iter_mut().zip(db.iter_mut()))
                        {
                            let normed = (x - mean) * rstd;
                            *s = g * w;
                            sum_scaled += *s;
                            sum_scaled_normed += *s * normed;
                            *dw += g * normed;
                            *db += g;
                        }
                        let mean_scaled = if centred { sum_scaled / width as f32 } else { 0.0 };
                        let mean_scaled_normed = sum_scaled_normed / width as f32;
                        for ((dx, &s), &x) in dx.iter_mut().zip(&scaled).zip(row) {
                            let normed = (x - mean) * rstd;
                            *dx = rstd * (s - mean_scaled - normed * mean_scaled_normed);
                        }
                    }
                    (dw, db)
                },
            )
        })
        .collect();
    let mut dw = vec![0.0f32; width];
    let mut db = vec![0.0f32; width];
    for (part_w, part_b) in partials {
        dw.iter_mut().zip(part_w).for_each(|(total, value)| *total += value);
        db.iter_mut().zip(part_b).for_each(|(total, value)| *total += value);
    }
    (dx, dw, db)
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = cpu_values(self.name(), xs, xs_layout)?;
        let weight = cpu_values(self.name(), weight, weight_layout)?;
        let bias = cpu_values(self.name(), bias, bias_layout)?;
        check_norm_widths(self.name(), xs_layout.shape(), weight.len(), Some(bias.len()))?;
        Ok((CpuStorage::F32(norm_forward(values, weight, Some(bias), self.eps)), xs_layout.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let weight_values = with_values(name, weight, |w| w.to_vec())?;
        let grad_values = with_values(name, grad, |g| g.to_vec())?;
        let (dx, dw, db) =
            with_values(name, xs, |x| norm_backward(x, &weight_values, &grad_values, self.eps, true))?;
        Ok((Some(tensor_like(dx, xs)?), Some(tensor_like(dw, weight)?), Some(tensor_like(db, bias)?)))
    }
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let values = cpu_values(self.name(), xs, xs_layout)?;
        let weight = cpu_values(self.name(), weight, weight_layout)?;
        check_norm_widths(self.name(), xs_layout.shape(), weight.len(), None)?;
        Ok((CpuStorage::F32(norm_forward(values, weight, None, self.eps)), xs_layout.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let weight_values = with_values(name, weight, |w| w.to_vec())?;
        let grad_values = with_values(name, grad, |g| g.to_vec())?;
        let (dx, dw, _) =
            with_values(name, xs, |x| norm_backward(x, &weight_values, &grad_values, self.eps, false))?;
        Ok((Some(tensor_like(dx, xs)?), Some(tensor_like(dw, weight)?)))
    }
}

fn check_norm_widths(op: &str, shape: &Shape, weight: usize, bias: Option<usize>) -> candle_core::Result<()> {
    let width = last_dim(op, shape)?;
    if weight != width || bias.is_some_and(|bias| bias != width) {
        return Err(op_error(op, format!("input width {width}, weight {weight}, bias {bias:?}")));
    }
    Ok(())
}

/// Layer normalisation over the last dimension (biased variance, as PyTorch), with its
/// backward for the input, the weight and the bias.
pub(crate) fn layer_norm_op(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let op = LayerNorm { eps: eps as f32 };
    Ok(xs.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?)
}

/// RMS normalisation over the last dimension, with its backward.
pub(crate) fn rms_norm_op(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(xs.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })?)
}

// ---------------------------------------------------------------------------------------
// Linear layers: `xs · matrix + bias`.

/// `[rows, cols]` view of a 2-D tensor's storage, wherever its strides put it.
fn matrix_view<'a>(op: &str, values: &'a [f32], layout: &Layout) -> candle_core::Result<MatRef<'a>> {
    let (rows, cols) = layout.shape().dims2()?;
    let stride = layout.stride();
    let data = values.get(layout.start_offset()..).ok_or_else(|| op_error(op, "offset past its storage"))?;
    Ok(MatRef::strided(data, rows, cols, stride[0], stride[1]))
}

// ---------------------------------------------------------------------------------------
// Batched matrix products.

/// `a · b` for every matrix of the leading dimensions: `a` `[.., m, k]`, `b` `[.., k, n]`
/// with the same leading dimensions, any strides; f32 in CPU memory. Each product runs
/// whole on one thread and the products are shared out over rayon's pool. candle runs
/// the products of a batch one after another, each split over the threads, and gemm
/// splits the small ones of attention (256 x 256 x 64) poorly: the second thread idled.
/// The backward pass is two more batched products.
pub fn batched_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(a.apply_op2(b, BatchedMatMul)?)
}

struct BatchedMatMul;

/// The start offset of every matrix of a `[.., rows, cols]` layout, in row-major order of
/// the leading dimensions.
fn matrix_offsets(layout: &Layout) -> Vec<usize> {
    let dims = layout.dims();
    let leading = dims.len().saturating_sub(2);
    let mut offsets = vec![layout.start_offset()];
    for (&dim, &stride) in dims[..leading].iter().zip(layout.stride()) {
        offsets =
            offsets.iter().flat_map(|&offset| (0..dim).map(move |index| offset + index * stride)).collect();
    }
    offsets
}

impl CustomOp2 for BatchedMatMul {
    fn name(&self) -> &'static str {
        "agora-batched-matmul"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (CpuStorage::F32(a_values), CpuStorage::F32(b_values)) = (a, b) else {
            return Err(op_error(name, "expects f32 operands"));
        };
        let (a_dims, b_dims) = (a_layout.dims(), b_layout.dims());
        let rank = a_dims.len();
        if rank < 2
            || b_dims.len() != rank
            || a_dims[..rank - 2] != b_dims[..rank - 2]
            || a_dims[rank - 1] != b_dims[rank - 2]
        {
            return Err(op_error(name, format!("cannot multiply {a_dims:?} by {b_dims:?}")));
        }
        let (m, k, n) = (a_dims[rank - 2], a_dims[rank - 1], b_dims[rank - 1]);
        let (a_strides, b_strides) = (a_layout.stride(), b_layout.stride());
        let (a_offsets, b_offsets) = (matrix_offsets(a_layout), matrix_offsets(b_layout));
        let mut output = Vec::with_capacity(a_offsets.len() * m * n);
        output.par_extend(rayon::iter::repeat_n(0f32, a_offsets.len() * m * n));
        output.par_chunks_mut((m * n).max(1)).zip(a_offsets.par_iter().zip(&b_offsets)).try_for_each(
            |(product, (&a_offset, &b_offset))| {
                let (Some(a_data), Some(b_data)) = (a_values.get(a_offset..), b_values.get(b_offset..))
                else {
                    return Err(op_error(name, "layout reaches past the storage"));
                };
                let lhs = MatRef::strided(a_data, m, k, a_strides[rank - 2], a_strides[rank - 1]);
                let rhs = MatRef::strided(b_data, k, n, b_strides[rank - 2], b_strides[rank - 1]);
                matmul_into_here(product, lhs, rhs).map_err(|error| op_error(name, error))
            },
        )?;
        let mut dims = a_dims.to_vec();
        dims[rank - 1] = n;
        Ok((CpuStorage::F32(output), Shape::from(dims)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let rank = a.rank();
        let grad_a = if a.track_op() {
            Some(grad.apply_op2_no_bwd(&b.transpose(rank - 2, rank - 1)?, &BatchedMatMul)?)
        } else {
            None
        };
        let grad_b = if b.track_op() {
            Some(a.transpose(rank - 2, rank - 1)?.apply_op2_no_bwd(grad, &BatchedMatMul)?)
        } else {
            None
        };
        Ok((grad_a, grad_b))
    }
}

/// Runs `f` on a view of a 2-D f32 tensor in CPU memory, strides as they are.
fn with_matrix<R>(op: &str, tensor: &Tensor, f: impl FnOnce(MatRef) -> R) -> candle_core::Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(CpuStorage::F32(values)) => Ok(f(matrix_view(op, values, layout)?)),
        _ => Err(op_error(op, "expects an f32 matrix in CPU memory")),
    }
}

/// Column sums of a row-major `[rows, width]` matrix (a bias gradient), in parallel
/// row blocks.
fn column_sums(values: &[f32], width: usize) -> Vec<f32> {
    let rows = values.len() / width.max(1);
    let rows_per_task = rows.div_ceil(rayon::current_num_threads().max(1) * 4).max(1);
    values
        .par_chunks(width * rows_per_task)
        .map(|block| {
            dispatch(
                #[inline(always)]
                || {
                    let mut sums = vec![0.0f32; width];
                    for row in block.chunks_exact(width) {
                        sums.iter_mut().zip(row).for_each(|(sum, &x)| *sum += x);
                    }
                    sums
                },
            )
        })
        .reduce(
            || vec![0.0f32; width],
            |mut total, part| {
                total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
                total
            },
        )
}

/// `xs · matrix (+ bias)` for `xs` `[rows, inner]` and `matrix` `[inner, out]` (any
/// strides). The backward pass computes only the gradients that are wanted: the
/// matrix's only when it is tracked (never for a frozen weight under LoRA), the bias's
/// as column sums.
struct LinearOp;

impl LinearOp {
    fn forward(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        matrix: &CpuStorage,
        matrix_layout: &Layout,
        bias: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = "fused-linear";
        let (rows, inner) = rows_and_width(name, xs_layout.shape())?;
        let xs = MatRef::row_major(cpu_values(name, xs, xs_layout)?, rows, inner);
        let CpuStorage::F32(matrix_values) = matrix else {
            return Err(op_error(name, "expects an f32 matrix"));
        };
        let matrix = matrix_view(name, matrix_values, matrix_layout)?;
        let out = matrix_layout.shape().dims2()?.1;
        if let Some(bias) = bias
            && bias.len() != out
        {
            return Err(op_error(name, format!("bias of {} values for {out} outputs", bias.len())));
        }
        let mut output = matmul(xs, matrix).map_err(|e| op_error(name, e))?;
        if let Some(bias) = bias {
            // The same single rounding as the kernel adding its product to a bias-filled
            // output: product + bias.
            output.par_chunks_mut(out.max(1)).for_each(|row| {
                row.iter_mut().zip(bias).for_each(|(value, &bias)| *value += bias);
            });
        }
        let mut dims = xs_layout.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out;
        }
        Ok((CpuStorage::F32(output), Shape::from(dims)))
    }

    fn backward(
        &self,
        xs: &Tensor,
        matrix: &Tensor,
        grad: &Tensor,
        want_bias: bool,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = "fused-linear";
        let (rows, inner) = rows_and_width(name, xs.shape())?;
        let out = matrix.dim(1)?;
        let grad = grad.contiguous()?;
        let grad_xs = if xs.track_op() {
            let dx = with_values(name, &grad, |g| {
                with_matrix(name, matrix, |m| matmul(MatRef::row_major(g, rows, out), m.t()))
            })??
            .map_err(|e| op_error(name, e))?;
            Some(Tensor::from_vec(dx, xs.shape(), xs.device())?)
        } else {
            None
        };
        let grad_matrix = if matrix.track_op() {
            let xs = xs.contiguous()?;
            let dm = with_values(name, &grad, |g| {
                with_values(name, &xs, |x| {
                    matmul(MatRef::row_major(x, rows, inner).t(), MatRef::row_major(g, rows, out))
                })
            })??
            .map_err(|e| op_error(name, e))?;
            Some(Tensor::from_vec(dm, (inner, out), xs.device())?)
        } else {
            None
        };
        let grad_bias = if want_bias {
            let sums = with_values(name, &grad, |g| column_sums(g, out))?;
            Some(Tensor::from_vec(sums, out, xs.device())?)
        } else {
            None
        };
        Ok((grad_xs, grad_matrix, grad_bias))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        matrix: &CpuStorage,
        matrix_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(xs, xs_layout, matrix, matrix_layout, None)
    }

    fn bwd(
        &self,
        xs: &Tensor,
        matrix: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dm, _) = self.backward(xs, matrix, grad, false)?;
        Ok((dx, dm))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        matrix: &CpuStorage,
        matrix_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let bias = cpu_values("fused-linear", bias, bias_layout)?;
        self.forward(xs, xs_layout, matrix, matrix_layout, Some(bias))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        matrix: &Tensor,
        bias: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward(xs, matrix, grad, bias.track_op())
    }
}

/// `xs · matrix + bias` over the last dimension of `xs` (`[..., inner]`), `matrix`
/// `[inner, out]` in any strides (a transposed `[out, inner]` weight is read where it
/// lies), with a backward pass that skips the gradients nobody wants.
pub(crate) fn linear_op(xs: &Tensor, matrix: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let inner = xs.dims().last().copied().unwrap_or(1);
    let (matrix_inner, _) = matrix.dims2()?;
    if matrix_inner != inner {
        return Err(ModelError::Config(format!(
            "linear layer of {matrix_inner} inputs applied to {inner} features"
        )));
    }
    // The op keeps the leading dimensions itself: reshapes around it would be two more
    // nodes of the graph, each costing a zeroed gradient and an addition in backward.
    let xs = xs.contiguous()?;
    let output = match bias {
        Some(bias) => xs.apply_op3(matrix, &bias.contiguous()?, LinearOp)?,
        None => xs.apply_op2(matrix, LinearOp)?,
    };
    Ok(output)
}

/// A `[.., width]` shape as `rows x width` (rows: the product of the leading dimensions).
fn rows_and_width(op: &str, shape: &Shape) -> candle_core::Result<(usize, usize)> {
    match shape.dims().split_last() {
        Some((&width, leading)) => Ok((leading.iter().product(), width)),
        None => Err(op_error(op, "expects at least one dimension")),
    }
}

// ---------------------------------------------------------------------------------------
// The output layer's log-probabilities of target tokens.

/// `log softmax(hidden · weightᵀ)[row, target[row]]` for every row: `[rows]`,
/// differentiable with respect to `hidden` (`[rows, width]`) and, when it is tracked,
/// `weight` (`[vocab, width]`, any strides: a transposed view costs nothing).
///
/// The same values as [`crate::scoring::ScoringBatch::token_logprobs`] of the full
/// logits, without the logits in the graph. Tensors that are not f32 in CPU memory take
/// the composed path.
pub fn linear_target_logprobs(hidden: &Tensor, weight: &Tensor, targets: &[u32]) -> Result<Tensor> {
    target_logprobs_keeping(hidden, weight, targets, KEEP_PROBABILITIES)
}

/// [`linear_target_logprobs`], keeping at most `keep_limit` softmax values.
fn target_logprobs_keeping(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &[u32],
    keep_limit: usize,
) -> Result<Tensor> {
    let (rows, width) = hidden.dims2()?;
    let (vocab, weight_width) = weight.dims2()?;
    if weight_width != width || targets.len() != rows {
        return Err(ModelError::Config(format!(
            "target log-probs of [{rows}, {width}] hidden states, a [{vocab}, {weight_width}] output layer and {} targets",
            targets.len()
        )));
    }
    if let Some(&target) = targets.iter().find(|&&target| target as usize >= vocab) {
        return Err(ModelError::Config(format!("target token {target} is outside the vocabulary ({vocab})")));
    }
    if !applies(&[hidden, weight]) {
        return crate::ops::target_logprobs(&hidden.matmul(&weight.t()?)?, targets);
    }
    let op = TargetLogprobs { targets: targets.to_vec(), keep_limit, kept: Mutex::new(None) };
    Ok(hidden.contiguous()?.apply_op2(weight, op)?)
}

struct TargetLogprobs {
    targets: Vec<u32>,
    keep_limit: usize,
    /// The softmax of every row (`rows x vocab`), kept by the forward pass for the
    /// backward pass when it fits [`KEEP_PROBABILITIES`].
    kept: Mutex<Option<Vec<f32>>>,
}

impl TargetLogprobs {
    /// Softmax of `block`'s logits into `probabilities` (`block.rows() x vocab`), and each
    /// row's target log-probability into `logprobs`.
    fn block(
        &self,
        block: MatRef,
        weight: MatRef,
        first_row: usize,
        probabilities: &mut [f32],
        logprobs: &mut [f32],
    ) -> candle_core::Result<()> {
        matmul_into(probabilities, block, weight.t(), false)
            .map_err(|e| op_error("fused-target-logprobs", e))?;
        self.softmax_rows(weight.rows(), first_row, probabilities, logprobs);
        Ok(())
    }

    /// The rows of `probabilities` (logits of rows `first_row..`) turned into their
    /// softmax, and each row's target log-probability into `logprobs`.
    fn softmax_rows(&self, vocab: usize, first_row: usize, probabilities: &mut [f32], logprobs: &mut [f32]) {
        let rows = probabilities.len() / vocab.max(1);
        let targets = &self.targets[first_row..first_row + rows];
        probabilities.par_chunks_mut(vocab).zip(logprobs.par_iter_mut().zip(targets)).for_each(
            |(row, (logprob, &target))| {
                dispatch(
                    #[inline(always)]
                    || {
                        let target_logit = row[target as usize];
                        let (max, sum) = softmax_in_place(row);
                        *logprob = target_logit - max - sum.ln();
                    },
                )
            },
        );
    }
}

impl CustomOp2 for TargetLogprobs {
    fn name(&self) -> &'static str {
        "fused-target-logprobs"
    }

    fn cpu_fwd(
        &self,
        hidden: &CpuStorage,
        hidden_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, width) = hidden_layout.shape().dims2()?;
        let hidden = MatRef::row_major(cpu_values(self.name(), hidden, hidden_layout)?, rows, width);
        let CpuStorage::F32(weight_values) = weight else {
            return Err(op_error(self.name(), "expects an f32 weight"));
        };
        let weight = matrix_view(self.name(), weight_values, weight_layout)?;
        let vocab = weight.rows();
        let mut logprobs = vec![0.0f32; rows];
        if rows * vocab <= self.keep_limit {
            // Written whole by the product: not zeroed first (see `sgemm::matmul`).
            let mut probabilities = matmul(hidden, weight.t()).map_err(|e| op_error(self.name(), e))?;
            self.softmax_rows(vocab, 0, &mut probabilities, &mut logprobs);
            *self.kept.lock().map_err(|_| op_error(self.name(), "lock poisoned"))? = Some(probabilities);
        } else {
            let mut scratch = vec![0.0f32; RECOMPUTE_ROWS * vocab];
            for start in (0..rows).step_by(RECOMPUTE_ROWS) {
                let count = RECOMPUTE_ROWS.min(rows - start);
                let block = hidden.rows_range(start, count);
                let logprobs = &mut logprobs[start..start + count];
                self.block(block, weight, start, &mut scratch[..count * vocab], logprobs)?;
            }
        }
        Ok((CpuStorage::F32(logprobs), Shape::from(rows)))
    }

    /// With `d = g · (onehot(target) - softmax)` per row: `dhidden = d · W`,
    /// `dW = dᵀ · hidden` (only when the weight is tracked).
    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let (rows, width) = hidden.dims2()?;
        let grad = grad.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let kept = self.kept.lock().map_err(|_| op_error(name, "lock poisoned"))?.take();
        let hidden = hidden.contiguous()?;
        let (hidden_storage, hidden_layout) = hidden.storage_and_layout();
        let candle_core::Storage::Cpu(hidden_cpu) = &*hidden_storage else {
            return Err(op_error(name, "expects tensors in CPU memory"));
        };
        let hidden_view = MatRef::row_major(cpu_values(name, hidden_cpu, hidden_layout)?, rows, width);
        let (weight_storage, weight_layout) = weight.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F32(weight_values)) = &*weight_storage else {
            return Err(op_error(name, "expects an f32 weight in CPU memory"));
        };
        let weight_view = matrix_view(name, weight_values, weight_layout)?;
        let vocab = weight_view.rows();
        let want_weight = weight.track_op();
        // The kept softmax serves one backward pass; another (a second loss on the same
        // forward) recomputes it.
        let recompute = kept.is_none();
        // Rows go in blocks only when recomputing; in one block, the products allocate
        // their outputs unzeroed.
        let single_block = !recompute && rows > 0;
        let (mut dhidden, mut dweight) = if !single_block {
            (vec![0.0f32; rows * width], if want_weight { vec![0.0f32; vocab * width] } else { Vec::new() })
        } else {
            (Vec::new(), Vec::new())
        };
        let block_rows = if recompute { RECOMPUTE_ROWS } else { rows.max(1) };
        let mut scratch = match kept {
            Some(probabilities) => probabilities,
            None => vec![0.0f32; RECOMPUTE_ROWS.min(rows) * vocab],
        };
        let mut unused = vec![0.0f32; block_rows.min(rows)];
        for start in (0..rows).step_by(block_rows) {
            let count = block_rows.min(rows - start);
            let block = hidden_view.rows_range(start, count);
            let d = &mut scratch[..count * vocab];
            if recompute {
                self.block(block, weight_view, start, d, &mut unused[..count])?;
            }
            let targets = &self.targets[start..start + count];
            d.par_chunks_mut(vocab).zip(grad[start..start + count].par_iter().zip(targets)).for_each(
                |(row, (&g, &target))| {
                    dispatch(
                        #[inline(always)]
                        || row.iter_mut().for_each(|p| *p *= -g),
                    );
                    row[target as usize] += g;
                },
            );
            let d_view = MatRef::row_major(d, count, vocab);
            if single_block {
                dhidden = matmul(d_view, weight_view).map_err(|e| op_error(name, e))?;
                if want_weight {
                    dweight = matmul_transposing(d_view.t(), block).map_err(|e| op_error(name, e))?;
                }
                continue;
            }
            matmul_into(&mut dhidden[start * width..(start + count) * width], d_view, weight_view, false)
                .map_err(|e| op_error(name, e))?;
            if want_weight {
                matmul_into(&mut dweight, d_view.t(), block, start > 0).map_err(|e| op_error(name, e))?;
            }
        }
        drop(hidden_storage);
        drop(weight_storage);
        let dhidden = Tensor::from_vec(dhidden, (rows, width), hidden.device())?;
        let dweight = if want_weight {
            Some(Tensor::from_vec(dweight, (vocab, width), hidden.device())?)
        } else {
            None
        };
        Ok((Some(dhidden), dweight))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::*;

    pub(super) fn seeded(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        let count: usize = shape.iter().product();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let values: Vec<f32> = (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    pub(super) fn assert_close(actual: &Tensor, expected: &Tensor, tolerance: f32, what: &str) {
        let actual = actual.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(actual.len(), expected.len(), "{what}");
        let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (index, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert!((a - e).abs() <= tolerance * scale, "{what}[{index}]: {a} vs {e} (scale {scale})");
        }
    }

    #[test]
    fn exp_and_tanh_match_the_standard_library() {
        let mut worst = 0f32;
        for i in -1990..=2000 {
            let x = i as f32 * 0.0437;
            let relative = (exp(x) - x.exp()).abs() / x.exp().max(f32::MIN_POSITIVE);
            worst = worst.max(relative);
            assert!((tanh(x) - x.tanh()).abs() < 2e-7, "tanh({x})");
        }
        assert!(worst < 3e-7, "exp relative error {worst}");
        assert_eq!(exp(f32::MIN), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    /// Each fused op's value and gradients against the composed candle ops in crate::ops.
    fn check_unary(fused: fn(&Tensor) -> Result<Tensor>, composed: impl Fn(&Tensor) -> Tensor, what: &str) {
        let input = Var::from_tensor(&seeded(&[3, 5, 37], 1, 4.0)).unwrap();
        let weights = seeded(&[3, 5, 37], 2, 1.0);
        let ours = fused(input.as_tensor()).unwrap();
        let theirs = composed(input.as_tensor());
        assert_close(&ours, &theirs, 1e-6, what);
        let grad_ours = (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let grad_theirs = (theirs * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let get = |grads: &candle_core::backprop::GradStore| grads.get(input.as_tensor()).unwrap().clone();
        assert_close(&get(&grad_ours), &get(&grad_theirs), 2e-6, what);
    }

    #[test]
    fn batched_products_match_candles_matmul_and_its_gradients() {
        // Keys transposed (a strided right operand), as attention multiplies them.
        let a = Var::from_tensor(&seeded(&[2, 3, 5, 4], 1, 1.0)).unwrap();
        let b_stored = Var::from_tensor(&seeded(&[2, 3, 6, 4], 2, 1.0)).unwrap();
        let b = b_stored.t().unwrap();
        let ours = batched_matmul(&a, &b).unwrap();
        let theirs = a.matmul(&b).unwrap();
        assert_close(&ours, &theirs, 1e-6, "product");
        let weights = seeded(&[2, 3, 5, 6], 3, 1.0);
        let ours = (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let theirs = (theirs * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (var, what) in [(&a, "grad a"), (&b_stored, "grad b")] {
            assert_close(ours.get(var).unwrap(), theirs.get(var).unwrap(), 1e-6, what);
        }
        let c = seeded(&[3, 4], 4, 1.0);
        let d = seeded(&[4, 2], 5, 1.0);
        assert_close(&batched_matmul(&c, &d).unwrap(), &c.matmul(&d).unwrap(), 1e-6, "one matrix");
        assert!(batched_matmul(&c, &c).is_err(), "[3, 4] x [3, 4]");
    }

    #[test]
    fn gelu_silu_and_softmax_match_the_composed_ops_and_their_gradients() {
        check_unary(
            gelu_tanh_op,
            |xs| {
                let inner = ((xs + (xs.powf(3.0).unwrap() * 0.044715).unwrap()).unwrap()
                    * (2.0 / std::f64::consts::PI).sqrt())
                .unwrap();
                ((xs * 0.5).unwrap() * (inner.tanh().unwrap() + 1.0).unwrap()).unwrap()
            },
            "gelu",
        );
        check_unary(silu_op, |xs| (xs / (xs.neg().unwrap().exp().unwrap() + 1.0).unwrap()).unwrap(), "silu");
        check_unary(
            softmax_op,
            |xs| {
                let max = xs.max_keepdim(D::Minus1).unwrap();
                let exp = xs.broadcast_sub(&max).unwrap().exp().unwrap();
                exp.broadcast_div(&exp.sum_keepdim(D::Minus1).unwrap()).unwrap()
            },
            "softmax",
        );
    }

    #[test]
    fn scaled_masked_softmax_matches_scale_add_softmax_with_its_gradient() {
        let scores = Var::from_tensor(&seeded(&[2, 3, 4, 5], 21, 3.0)).unwrap();
        let upstream = seeded(&[2, 3, 4, 5], 22, 1.0);
        let mut mask = vec![0f32; 2 * 4 * 5];
        for (index, value) in mask.iter_mut().enumerate() {
            if index % 7 == 3 {
                *value = crate::ops::MASKED;
            }
        }
        let mask = Tensor::from_vec(mask, (2, 1, 4, 5), &Device::Cpu).unwrap();
        for mask in [Some(&mask), Some(&mask.narrow(0, 1, 1).unwrap()), None] {
            let ours = scaled_masked_softmax_op(scores.as_tensor(), mask, 0.37).unwrap();
            let scaled = (scores.as_tensor() * 0.37).unwrap();
            let shifted = match mask {
                Some(mask) => scaled.broadcast_add(mask).unwrap(),
                None => scaled,
            };
            let max = shifted.max_keepdim(D::Minus1).unwrap();
            let exp = shifted.broadcast_sub(&max).unwrap().exp().unwrap();
            let theirs = exp.broadcast_div(&exp.sum_keepdim(D::Minus1).unwrap()).unwrap();
            assert_close(&ours, &theirs, 1e-6, "probabilities");
            let grad_ours = (ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let grad_theirs = (theirs * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let get =
                |grads: &candle_core::backprop::GradStore| grads.get(scores.as_tensor()).unwrap().clone();
            assert_close(&get(&grad_ours), &get(&grad_theirs), 1e-5, "gradient");
        }
    }

    #[test]
    fn layer_and_rms_norm_match_the_composed_ops_and_their_gradients() {
        let input = Var::from_tensor(&(seeded(&[4, 6, 48], 3, 2.0) + 0.7).unwrap()).unwrap();
        let weight = Var::from_tensor(&(seeded(&[48], 4, 0.5) + 1.0).unwrap()).unwrap();
        let bias = Var::from_tensor(&seeded(&[48], 5, 0.3)).unwrap();
        let upstream = seeded(&[4, 6, 48], 6, 1.0);
        let eps = 1e-5;
        let composed_layer = |xs: &Tensor| {
            let mean = xs.mean_keepdim(D::Minus1).unwrap();
            let centred = xs.broadcast_sub(&mean).unwrap();
            let variance = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let normed = centred.broadcast_div(&(variance + eps).unwrap().sqrt().unwrap()).unwrap();
            normed.broadcast_mul(weight.as_tensor()).unwrap().broadcast_add(bias.as_tensor()).unwrap()
        };
        let composed_rms = |xs: &Tensor| {
            let mean_square = xs.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let normed = xs.broadcast_div(&(mean_square + eps).unwrap().sqrt().unwrap()).unwrap();
            normed.broadcast_mul(weight.as_tensor()).unwrap()
        };
        let cases: [(&str, Tensor, Tensor); 2] = [
            (
                "layer norm",
                layer_norm_op(input.as_tensor(), weight.as_tensor(), bias.as_tensor(), eps).unwrap(),
                composed_layer(input.as_tensor()),
            ),
            (
                "rms norm",
                rms_norm_op(input.as_tensor(), weight.as_tensor(), eps).unwrap(),
                composed_rms(input.as_tensor()),
            ),
        ];
        for (what, ours, theirs) in cases {
            assert_close(&ours, &theirs, 1e-5, what);
            let grad_ours = (ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            let grad_theirs = (theirs * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, tensor) in
                [("input", input.as_tensor()), ("weight", weight.as_tensor()), ("bias", bias.as_tensor())]
            {
                match (grad_ours.get(tensor), grad_theirs.get(tensor)) {
                    (Some(a), Some(b)) => assert_close(a, b, 1e-5, &format!("{what} d{name}")),
                    (None, None) => {}
                    (a, b) => panic!("{what} d{name}: fused {:?} composed {:?}", a.is_some(), b.is_some()),
                }
            }
        }
    }

    /// The fused linear layer against candle's matmul and broadcast add: values and the
    /// gradients of input, matrix (transposed view) and bias; a frozen matrix gets none.
    #[test]
    fn linear_matches_matmul_plus_bias_with_every_gradient() {
        let xs = Var::from_tensor(&seeded(&[2, 5, 12], 16, 1.0)).unwrap();
        let stored = Var::from_tensor(&seeded(&[7, 12], 17, 1.0)).unwrap();
        let bias = Var::from_tensor(&seeded(&[7], 18, 1.0)).unwrap();
        let upstream = seeded(&[2, 5, 7], 19, 1.0);
        let matrix = stored.as_tensor().t().unwrap();
        let ours = linear_op(xs.as_tensor(), &matrix, Some(bias.as_tensor())).unwrap();
        let theirs = xs
            .as_tensor()
            .reshape((10, 12))
            .unwrap()
            .matmul(&matrix)
            .unwrap()
            .broadcast_add(bias.as_tensor())
            .unwrap()
            .reshape((2, 5, 7))
            .unwrap();
        assert_close(&ours, &theirs, 1e-6, "linear");
        let grad_ours = (ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let grad_theirs = (theirs * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        for tensor in [xs.as_tensor(), stored.as_tensor(), bias.as_tensor()] {
            assert_close(grad_ours.get(tensor).unwrap(), grad_theirs.get(tensor).unwrap(), 1e-5, "gradient");
        }
        let frozen = seeded(&[12, 7], 20, 1.0);
        let output = linear_op(xs.as_tensor(), &frozen, None).unwrap();
        let grads = output.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&frozen).is_none());
        assert!(grads.get(xs.as_tensor()).is_some());
    }

    fn composed_target_logprobs(hidden: &Tensor, weight: &Tensor, targets: &[u32]) -> Tensor {
        crate::ops::target_logprobs(&hidden.matmul(&weight.t().unwrap()).unwrap(), targets).unwrap()
    }

    #[test]
    fn target_logprobs_match_the_composed_log_softmax_with_both_gradients() {
        let hidden = Var::from_tensor(&seeded(&[9, 24], 7, 1.5)).unwrap();
        let weight = Var::from_tensor(&seeded(&[301, 24], 8, 1.0)).unwrap();
        let targets: Vec<u32> = (0..9).map(|i| (i * 37 + 5) % 301).collect();
        let upstream = seeded(&[9], 9, 1.0);
        let ours = linear_target_logprobs(hidden.as_tensor(), weight.as_tensor(), &targets).unwrap();
        let theirs = composed_target_logprobs(hidden.as_tensor(), weight.as_tensor(), &targets);
        assert_close(&ours, &theirs, 1e-6, "log-probs");
        let grad_ours = (ours * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        let grad_theirs = (theirs * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
        for tensor in [hidden.as_tensor(), weight.as_tensor()] {
            assert_close(grad_ours.get(tensor).unwrap(), grad_theirs.get(tensor).unwrap(), 1e-5, "gradient");
        }
    }

    /// A frozen output layer gets no gradient (and costs no weight-sized product); a
    /// transposed view of a weight is read where it lies.
    #[test]
    fn a_frozen_or_transposed_weight_takes_the_same_path() {
        let hidden = Var::from_tensor(&seeded(&[5, 16], 10, 1.0)).unwrap();
        let stored = seeded(&[16, 77], 11, 1.0);
        let weight = stored.t().unwrap();
        let targets = [0u32, 76, 3, 40, 40];
        let ours = linear_target_logprobs(hidden.as_tensor(), &weight, &targets).unwrap();
        let theirs = composed_target_logprobs(hidden.as_tensor(), &weight.contiguous().unwrap(), &targets);
        assert_close(&ours, &theirs, 1e-6, "log-probs");
        let grads = ours.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&weight).is_none());
        let expected = theirs.sum_all().unwrap().backward().unwrap();
        assert_close(
            grads.get(hidden.as_tensor()).unwrap(),
            expected.get(hidden.as_tensor()).unwrap(),
            1e-5,
            "dhidden",
        );
    }

    /// Over the keep limit the backward pass recomputes the logits in row blocks, and a
    /// second backward pass through the same forward recomputes them: the same values
    /// and gradients each time.
    #[test]
    fn recomputed_blocks_give_the_same_gradients() {
        let rows = RECOMPUTE_ROWS + 7;
        let hidden = Var::from_tensor(&seeded(&[rows, 8], 14, 1.0)).unwrap();
        let weight = Var::from_tensor(&seeded(&[33, 8], 15, 1.0)).unwrap();
        let targets: Vec<u32> = (0..rows as u32).map(|i| i % 33).collect();
        let kept = linear_target_logprobs(hidden.as_tensor(), weight.as_tensor(), &targets).unwrap();
        let recomputed =
            target_logprobs_keeping(hidden.as_tensor(), weight.as_tensor(), &targets, 0).unwrap();
        assert_close(&recomputed, &kept, 1e-6, "log-probs");
        let kept_grads = kept.sum_all().unwrap().backward().unwrap();
        let recomputed_grads = recomputed.sum_all().unwrap().backward().unwrap();
        let again = (kept * 1.0).unwrap().sum_all().unwrap().backward().unwrap();
        for tensor in [hidden.as_tensor(), weight.as_tensor()] {
            assert_close(
                recomputed_grads.get(tensor).unwrap(),
                kept_grads.get(tensor).unwrap(),
                1e-5,
                "gradient",
            );
            assert_close(
                again.get(tensor).unwrap(),
                kept_grads.get(tensor).unwrap(),
                1e-5,
                "second backward",
            );
        }
    }

    #[test]
    fn bad_targets_are_errors() {
        let hidden = seeded(&[2, 4], 12, 1.0);
        let weight = seeded(&[10, 4], 13, 1.0);
        assert!(linear_target_logprobs(&hidden, &weight, &[1, 10]).is_err());
        assert!(linear_target_logprobs(&hidden, &weight, &[1]).is_err());
    }
}
