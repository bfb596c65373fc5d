//! Matrix products of GGUF Q8_0, Q4_0 and Q4_1 weights with f32 activations on the CPU,
//! the inference hot path of quantized models (candle has no SIMD kernel for Q4_1, and its
//! Q8_0 kernel reuses nothing across the rows of a prefill or a batched decode).
//!
//! As llama.cpp does, the activations are quantized once per call to blocks of 32 signed
//! bytes with an f32 scale, so every block product is an integer dot product of 32 pairs
//! followed by one multiply-add in f32. Output rows (weight rows) are shared out over
//! rayon's global pool (the pool `agora_model::engine::set_threads` sizes); within a task,
//! each weight block is loaded once and multiplied with up to [`ROWS_PER_PASS`] activation
//! rows while it sits in registers.
//!
//! Three code paths compute the same integer sums: a portable one (always correct, the
//! reference of the tests), AVX2 (with FMA and F16C) and AVX-512 VNNI on 256-bit
//! registers. The fastest the CPU has is picked at run time. This is the one module of the
//! crate allowed `unsafe`: only for the unaligned SIMD loads and the calls into functions
//! compiled for CPU features that were checked first.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Values per quantization block (all three formats).
pub const BLOCK: usize = 32;

/// Activation rows multiplied with one loaded weight block.
pub const ROWS_PER_PASS: usize = 4;

/// The GGUF block formats with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedType {
    /// f16 scale `d`, 32 signed bytes: `x = d * q`.
    Q8_0,
    /// f16 scale `d`, 16 bytes of nibbles: `x = d * (q - 8)`.
    Q4_0,
    /// f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles: `x = d * q + m`.
    Q4_1,
}

impl PackedType {
    pub fn from_ggml(dtype: GgmlDType) -> Option<PackedType> {
        match dtype {
            GgmlDType::Q8_0 => Some(PackedType::Q8_0),
            GgmlDType::Q4_0 => Some(PackedType::Q4_0),
            GgmlDType::Q4_1 => Some(PackedType::Q4_1),
            _ => None,
        }
    }

    /// Bytes of one block of 32 values.
    pub fn block_bytes(self) -> usize {
        match self {
            PackedType::Q8_0 => 2 + BLOCK,
            PackedType::Q4_0 => 2 + BLOCK / 2,
            PackedType::Q4_1 => 4 + BLOCK / 2,
        }
    }
}

/// Which instructions the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 + AVX-512 VNNI (`vpdpbusd` on 256-bit registers).
    Avx512Vnni,
}

impl SimdLevel {
    /// The fastest level this CPU supports (detected once).
    pub fn detect() -> SimdLevel {
        static DETECTED: OnceLock<SimdLevel> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let available = SimdLevel::available();
            available.last().copied().unwrap_or(SimdLevel::Portable)
        })
    }

    /// Every level this CPU can run, slowest first (the tests check each).
    pub fn available() -> Vec<SimdLevel> {
        #[allow(unused_mut)]
        let mut levels = vec![SimdLevel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2 {
                levels.push(SimdLevel::Avx2);
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                    levels.push(SimdLevel::Avx512Vnni);
                }
            }
        }
        levels
    }
}

/// A quantized `[rows, columns]` matrix in GGUF's block layout: each row is
/// `columns / 32` blocks, rows one after the other.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    kind: PackedType,
    rows: usize,
    columns: usize,
    data: Vec<u8>,
}

impl PackedMatrix {
    /// Wraps GGUF tensor bytes; fails when `data` does not hold exactly `rows` rows of
    /// `columns` values, or `columns` is not a multiple of 32.
    pub fn new(kind: PackedType, rows: usize, columns: usize, data: Vec<u8>) -> Result<PackedMatrix, String> {
        if !columns.is_multiple_of(BLOCK) {
            return Err(format!("{columns} columns are not a multiple of the {BLOCK}-value block"));
        }
        let expected = rows * (columns / BLOCK) * kind.block_bytes();
        if data.len() != expected {
            return Err(format!(
                "{} bytes for a {kind:?} matrix of {rows} x {columns} (expected {expected})",
                data.len()
            ));
        }
        Ok(PackedMatrix { kind, rows, columns, data })
    }

    pub fn kind(&self) -> PackedType {
        self.kind
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn columns(&self) -> usize {
        self.columns
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    fn row_bytes(&self) -> usize {
        self.columns / BLOCK * self.kind.block_bytes()
    }

    fn row(&self, row: usize) -> &[u8] {
        let bytes = self.row_bytes();
        self.data.get(row * bytes..(row + 1) * bytes).unwrap_or(&[])
    }

    /// The rows of `parts` one after the other (all of one type and width): the q, k and
    /// v projections of a layer, say, so that one pass over the activations serves all.
    pub fn stack_rows(parts: &[&PackedMatrix]) -> Result<PackedMatrix, String> {
        let Some(first) = parts.first() else {
            return Err("no matrices to stack".to_string());
        };
        if let Some(other) =
            parts.iter().find(|part| part.kind != first.kind || part.columns != first.columns)
        {
            return Err(format!(
                "cannot stack a {:?} matrix of {} columns onto a {:?} matrix of {} columns",
                other.kind, other.columns, first.kind, first.columns
            ));
        }
        let mut data = Vec::with_capacity(parts.iter().map(|part| part.data.len()).sum());
        for part in parts {
            data.extend_from_slice(&part.data);
        }
        let rows = parts.iter().map(|part| part.rows).sum();
        PackedMatrix::new(first.kind, rows, first.columns, data)
    }

    /// Row `row` as f32 into `output` (`columns` values).
    pub fn dequantize_row(&self, row: usize, output: &mut [f32]) {
        let kind = self.kind;
        for (block, values) in
            self.row(row).chunks_exact(kind.block_bytes()).zip(output.chunks_exact_mut(BLOCK))
        {
            let scale = f16_bits_to_f32(u16::from_le_bytes([block[0], block[1]]));
            match kind {
                PackedType::Q8_0 => {
                    for (value, &quant) in values.iter_mut().zip(&block[2..]) {
                        *value = scale * f32::from(quant as i8);
                    }
                }
                PackedType::Q4_0 | PackedType::Q4_1 => {
                    let (minimum, nibbles) = match kind {
                        PackedType::Q4_1 => {
                            (f16_bits_to_f32(u16::from_le_bytes([block[2], block[3]])), &block[4..])
                        }
                        _ => (-8.0 * scale, &block[2..]),
                    };
                    let (low, high) = values.split_at_mut(BLOCK / 2);
                    for ((low, high), &byte) in low.iter_mut().zip(high.iter_mut()).zip(nibbles) {
                        *low = scale * f32::from(byte & 0x0F) + minimum;
                        *high = scale * f32::from(byte >> 4) + minimum;
                    }
                }
            }
        }
    }

    /// The whole matrix as f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut output = vec![0f32; self.rows * self.columns];
        for (row, values) in output.chunks_exact_mut(self.columns.max(1)).enumerate() {
            self.dequantize_row(row, values);
        }
        output
    }

    /// The rows `ids` (an embedding lookup) as f32, `ids.len() x columns`.
    pub fn select_rows(&self, ids: &[u32]) -> Result<Vec<f32>, String> {
        let mut output = vec![0f32; ids.len() * self.columns];
        for (&id, values) in ids.iter().zip(output.chunks_exact_mut(self.columns.max(1))) {
            let id = id as usize;
            if id >= self.rows {
                return Err(format!("row {id} is outside the table ({} rows)", self.rows));
            }
            self.dequantize_row(id, values);
        }
        Ok(output)
    }

    /// `input [count, columns] · selfᵀ`: `[count, rows]`, row-major, at `level` (which
    /// must be one of [`SimdLevel::available`]; anything else runs the portable code).
    pub fn matmul(&self, input: &[f32], level: SimdLevel) -> Result<Vec<f32>, String> {
        if self.columns == 0 || !input.len().is_multiple_of(self.columns) {
            return Err(format!("{} input values are not rows of {} columns", input.len(), self.columns));
        }
        let count = input.len() / self.columns;
        let level = if SimdLevel::available().contains(&level) { level } else { SimdLevel::Portable };
        let activations = QuantizedRows::new(input, count, self.columns);
        if count == 0 || self.rows == 0 {
            return Ok(Vec::new());
        }
        // Enough tasks for rayon to balance, few enough that each amortises its start.
        let threads = rayon::current_num_threads().max(1);
        let rows_per_task = self.rows.div_ceil(threads * 8).max(8);
        let mut by_weight_row = vec![0f32; self.rows * count];
        by_weight_row.par_chunks_mut(rows_per_task * count).enumerate().for_each(|(task, outputs)| {
            let first_row = task * rows_per_task;
            for (offset, outputs) in outputs.chunks_exact_mut(count).enumerate() {
                let weights = self.row(first_row + offset);
                dot_one_weight_row(self.kind, level, weights, &activations, outputs);
            }
        });
        if count == 1 {
            return Ok(by_weight_row);
        }
        let mut output = vec![0f32; count * self.rows];
        for (weight_row, values) in by_weight_row.chunks_exact(count).enumerate() {
            for (input_row, &value) in values.iter().enumerate() {
                output[input_row * self.rows + weight_row] = value;
            }
        }
        Ok(output)
    }

    /// `xs [.., columns] · selfᵀ` as a candle tensor `[.., rows]` (no gradient: quantized
    /// weights are never trained).
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let xs = if xs.dtype() == candle_core::DType::F32 {
            xs.clone()
        } else {
            xs.to_dtype(candle_core::DType::F32)?
        };
        xs.contiguous()?.apply_op1_no_bwd(&PackedMatMul { matrix: self, level: SimdLevel::detect() })
    }
}

/// The candle operator around [`PackedMatrix::matmul`].
struct PackedMatMul<'a> {
    matrix: &'a PackedMatrix,
    level: SimdLevel,
}

impl CustomOp1 for PackedMatMul<'_> {
    fn name(&self) -> &'static str {
        "agora-packed-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else {
            return Err(candle_core::Error::Msg("quantized matmul: the input is not f32".into()));
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("quantized matmul: the input is not contiguous".into()))?;
        let input = values
            .get(start..end)
            .ok_or_else(|| candle_core::Error::Msg("quantized matmul: layout outside the storage".into()))?;
        let mut dims = layout.shape().dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == self.matrix.columns => *last = self.matrix.rows,
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "quantized matmul: input shape {dims:?} does not end in {} columns",
                    self.matrix.columns
                )));
            }
        }
        let output = self.matrix.matmul(input, self.level).map_err(candle_core::Error::Msg)?;
        Ok((CpuStorage::F32(output), Shape::from(dims)))
    }
}

/// Activations quantized to blocks of 32 signed bytes, as the kernels read them.
#[derive(Debug)]
struct QuantizedRows {
    blocks_per_row: usize,
    /// Per block: `max |x| / 127`.
    scales: Vec<f32>,
    /// Per block: `scale * Σ q`, for the offsets of Q4_0 and Q4_1.
    scaled_sums: Vec<f32>,
    /// 32 per block, blocks of a row one after the other.
    values: Vec<i8>,
}

impl QuantizedRows {
    fn new(input: &[f32], count: usize, columns: usize) -> QuantizedRows {
        let blocks = count * (columns / BLOCK);
        let mut scales = Vec::with_capacity(blocks);
        let mut scaled_sums = Vec::with_capacity(blocks);
        let mut values = vec![0i8; blocks * BLOCK];
        for (block, quants) in input.chunks_exact(BLOCK).zip(values.chunks_exact_mut(BLOCK)) {
            let largest = block.iter().fold(0f32, |largest, value| largest.max(value.abs()));
            let scale = largest / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (quant, &value) in quants.iter_mut().zip(block) {
                // `as` saturates, and |value * inverse| <= 127 anyway.
                *quant = (value * inverse).round() as i8;
                sum += i32::from(*quant);
            }
            scales.push(scale);
            scaled_sums.push(scale * sum as f32);
        }
        QuantizedRows { blocks_per_row: columns / BLOCK, scales, scaled_sums, values }
    }

    /// Row `row`'s values, scales and scaled sums.
    fn row(&self, row: usize) -> (&[i8], &[f32], &[f32]) {
        let blocks = self.blocks_per_row;
        let range = row * blocks..(row + 1) * blocks;
        (
            self.values.get(range.start * BLOCK..range.end * BLOCK).unwrap_or(&[]),
            self.scales.get(range.clone()).unwrap_or(&[]),
            self.scaled_sums.get(range).unwrap_or(&[]),
        )
    }
}

/// One activation row as a kernel reads it.
#[derive(Clone, Copy)]
struct RowView<'a> {
    values: &'a [i8],
    scales: &'a [f32],
    scaled_sums: &'a [f32],
}

/// The dot products of one weight row with every activation row, `ROWS_PER_PASS` at a
/// time.
fn dot_one_weight_row(
    kind: PackedType,
    level: SimdLevel,
    weights: &[u8],
    activations: &QuantizedRows,
    outputs: &mut [f32],
) {
    let count = outputs.len();
    let mut first = 0;
    while first < count {
        let pass = (count - first).min(ROWS_PER_PASS);
        let outputs = &mut outputs[first..first + pass];
        let row = |index: usize| {
            let (values, scales, scaled_sums) = activations.row(first + index.min(pass - 1));
            RowView { values, scales, scaled_sums }
        };
        match pass {
            4 => dispatch::<4>(kind, level, weights, [row(0), row(1), row(2), row(3)], outputs),
            3 => dispatch::<3>(kind, level, weights, [row(0), row(1), row(2)], outputs),
            2 => dispatch::<2>(kind, level, weights, [row(0), row(1)], outputs),
            _ => dispatch::<1>(kind, level, weights, [row(0)], outputs),
        }
        first += pass;
    }
}

fn dispatch<const R: usize>(
    kind: PackedType,
    level: SimdLevel,
    weights: &[u8],
    rows: [RowView; R],
    outputs: &mut [f32],
) {
    let sums: [f32; R] = match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul` only passes a SIMD level that `SimdLevel::available` detected
        // on this CPU, so the functions compiled for those features may run.
        SimdLevel::Avx2 => unsafe { x86::dot_avx2::<R>(kind, weights, &rows) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX-512 VNNI and VL (and AVX2) were detected.
        SimdLevel::Avx512Vnni => unsafe { x86::dot_vnni::<R>(kind, weights, &rows) },
        _ => portable_dot::<R>(kind, weights, &rows),
    };
    for (output, sum) in outputs.iter_mut().zip(sums) {
        *output = sum;
    }
}

/// The reference kernel: integer block sums, then f32 scaling, in plain Rust.
fn portable_dot<const R: usize>(kind: PackedType, weights: &[u8], rows: &[RowView; R]) -> [f32; R] {
    let mut totals = [0f32; R];
    for (block_index, block) in weights.chunks_exact(kind.block_bytes()).enumerate() {
        let scale = f16_bits_to_f32(u16::from_le_bytes([block[0], block[1]]));
        for (total, row) in totals.iter_mut().zip(rows) {
            let Some(quants) = row.values.get(block_index * BLOCK..(block_index + 1) * BLOCK) else {
                continue;
            };
            let activation_scale = row.scales.get(block_index).copied().unwrap_or(0.0);
            let scaled_sum = row.scaled_sums.get(block_index).copied().unwrap_or(0.0);
            match kind {
                PackedType::Q8_0 => {
                    let dot: i32 =
                        block[2..].iter().zip(quants).map(|(&w, &a)| i32::from(w as i8) * i32::from(a)).sum();
                    *total += scale * activation_scale * dot as f32;
                }
                PackedType::Q4_0 | PackedType::Q4_1 => {
                    let (offset, nibbles) = match kind {
                        PackedType::Q4_1 => {
                            (f16_bits_to_f32(u16::from_le_bytes([block[2], block[3]])), &block[4..])
                        }
                        _ => (-8.0 * scale, &block[2..]),
                    };
                    let (low, high) = quants.split_at(BLOCK / 2);
                    let dot: i32 = nibbles
                        .iter()
                        .zip(low.iter().zip(high))
                        .map(|(&byte, (&a_low, &a_high))| {
                            i32::from(byte & 0x0F) * i32::from(a_low)
                                + i32::from(byte >> 4) * i32::from(a_high)
                        })
                        .sum();
                    *total += scale * activation_scale * dot as f32 + offset * scaled_sum;
                }
            }
        }
    }
    totals
}

/// IEEE half precision bits to f32 (GGUF stores block scales as f16).
pub fn f16_bits_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits & 0x8000) << 16;
    let exponent = u32::from((bits >> 10) & 0x1F);
    let mantissa = u32::from(bits & 0x03FF);
    let magnitude = match (exponent, mantissa) {
        (0, 0) => 0,
        // Subnormal: value = mantissa * 2^-24, exact in f32.
        (0, _) => {
            let magnitude = mantissa as f32 * 2f32.powi(-24);
            return if sign != 0 { -magnitude } else { magnitude };
        }
        (0x1F, _) => 0x7F80_0000 | (mantissa << 13),
        _ => ((exponent + 112) << 23) | (mantissa << 13),
    };
    f32::from_bits(sign | magnitude)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2 and AVX-512 VNNI kernels. Both compute, per 32-value block, eight i32
    //! partial sums of byte products, convert them to f32 and multiply-add them with the
    //! product of the two block scales; they differ only in how the byte products are
    //! summed (`vpmaddubsw` + `vpmaddwd`, or one `vpdpbusd`).

    use std::arch::x86_64::*;

    use super::{BLOCK, PackedType, RowView};

    /// 32 bytes from the start of `bytes` (the callers pass exact 32-byte blocks; a
    /// shorter slice reads as zeros rather than out of bounds).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_32(bytes: &[u8]) -> __m256i {
        match bytes.first_chunk::<32>() {
            // SAFETY: the array is 32 readable bytes; `loadu` has no alignment requirement.
            Some(array) => unsafe { _mm256_loadu_si256(array.as_ptr().cast()) },
            None => _mm256_setzero_si256(),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_16(bytes: &[u8]) -> __m128i {
        match bytes.first_chunk::<16>() {
            // SAFETY: the array is 16 readable bytes; `loadu` has no alignment requirement.
            Some(array) => unsafe { _mm_loadu_si128(array.as_ptr().cast()) },
            None => _mm_setzero_si128(),
        }
    }

    #[inline]
    fn as_bytes(values: &[i8]) -> &[u8] {
        // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is
        // valid for both; the slice keeps the borrow's lifetime.
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len()) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn f16_to_f32(low: u8, high: u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(u16::from_le_bytes([low, high])))))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(values: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(values), _mm256_extractf128_ps::<1>(values));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let single = _mm_add_ss(pair, _mm_shuffle_ps::<0b01>(pair, pair));
        _mm_cvtss_f32(single)
    }

    /// Eight i32 sums of `unsigned[i] * signed[i]` (4 adjacent products each).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn byte_dot_avx2(unsigned: __m256i, signed: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(unsigned, signed), _mm256_set1_epi16(1))
    }

    // The AVX-512 intrinsics are stable since Rust 1.89, the workspace's `rust-version`.
    #[inline]
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    fn byte_dot_vnni(unsigned: __m256i, signed: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned, signed)
    }

    /// One kernel body per SIMD level, identical but for the byte dot product (a macro,
    /// because a `target_feature` function must be compiled once per feature set).
    macro_rules! kernel {
        ($name:ident, $features:literal, $byte_dot:ident) => {
            #[target_feature(enable = $features)]
            pub(super) fn $name<const R: usize>(
                kind: PackedType,
                weights: &[u8],
                rows: &[RowView; R],
            ) -> [f32; R] {
                let mut accumulators = [_mm256_setzero_ps(); R];
                let mut offsets = [0f32; R];
                let low_nibbles = _mm_set1_epi8(0x0F);
                for (block_index, block) in weights.chunks_exact(kind.block_bytes()).enumerate() {
                    let scale = f16_to_f32(block[0], block[1]);
                    let range = block_index * BLOCK..(block_index + 1) * BLOCK;
                    match kind {
                        PackedType::Q8_0 => {
                            let quants = load_32(&block[2..]);
                            // |w| as unsigned and a * sign(w): the same products, in the
                            // unsigned x signed form the instructions take.
                            let magnitudes = _mm256_sign_epi8(quants, quants);
                            for index in 0..R {
                                let row = &rows[index];
                                let activations =
                                    load_32(as_bytes(row.values.get(range.clone()).unwrap_or(&[])));
                                let sums = $byte_dot(magnitudes, _mm256_sign_epi8(activations, quants));
                                let both = scale * row.scales.get(block_index).copied().unwrap_or(0.0);
                                accumulators[index] = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(sums),
                                    _mm256_set1_ps(both),
                                    accumulators[index],
                                );
                            }
                        }
                        PackedType::Q4_0 | PackedType::Q4_1 => {
                            let (offset, nibbles) = match kind {
                                PackedType::Q4_1 => (f16_to_f32(block[2], block[3]), &block[4..]),
                                _ => (-8.0 * scale, &block[2..]),
                            };
                            let packed = load_16(nibbles);
                            let low = _mm_and_si128(packed, low_nibbles);
                            let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), low_nibbles);
                            let quants = _mm256_set_m128i(high, low);
                            for index in 0..R {
                                let row = &rows[index];
                                let activations =
                                    load_32(as_bytes(row.values.get(range.clone()).unwrap_or(&[])));
                                let sums = $byte_dot(quants, activations);
                                let both = scale * row.scales.get(block_index).copied().unwrap_or(0.0);
                                accumulators[index] = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(sums),
                                    _mm256_set1_ps(both),
                                    accumulators[index],
                                );
                                offsets[index] +=
                                    offset * row.scaled_sums.get(block_index).copied().unwrap_or(0.0);
                            }
                        }
                    }
                }
                let mut totals = [0f32; R];
                for index in 0..R {
                    totals[index] = horizontal_sum(accumulators[index]) + offsets[index];
                }
                totals
            }
        };
    }

    kernel!(dot_avx2, "avx2,fma,f16c", byte_dot_avx2);
    kernel!(dot_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", byte_dot_vnni);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream in [-1, 1).
    fn random_values(count: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn f32_to_f16_bits(value: f32) -> u16 {
        // Round-trip through the nearest representable half: scales here are normal.
        let bits = value.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exponent = ((bits >> 23) & 0xFF) as i32 - 127 + 15;
        if value == 0.0 || exponent <= 0 {
            return sign;
        }
        let mantissa = ((bits & 0x007F_FFFF) + 0x1000) >> 13;
        sign | (((exponent as u32) << 10) + mantissa) as u16
    }

    /// Quantizes random rows to `kind` the way llama.cpp's reference quantizers do.
    fn quantize(kind: PackedType, values: &[f32]) -> Vec<u8> {
        let mut data = Vec::new();
        for block in values.chunks_exact(BLOCK) {
            match kind {
                PackedType::Q8_0 => {
                    let largest = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = largest / 127.0;
                    data.extend(f32_to_f16_bits(scale).to_le_bytes());
                    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                    data.extend(block.iter().map(|v| (v * inverse).round() as i8 as u8));
                }
                PackedType::Q4_0 => {
                    let extreme = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    let scale = extreme / -8.0;
                    data.extend(f32_to_f16_bits(scale).to_le_bytes());
                    let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                    let quant = |v: f32| ((v * inverse + 8.5) as u8).min(15);
                    for j in 0..BLOCK / 2 {
                        data.push(quant(block[j]) | (quant(block[j + BLOCK / 2]) << 4));
                    }
                }
                PackedType::Q4_1 => {
                    let minimum = block.iter().copied().fold(f32::INFINITY, f32::min);
                    let maximum = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let scale = (maximum - minimum) / 15.0;
                    data.extend(f32_to_f16_bits(scale).to_le_bytes());
                    data.extend(f32_to_f16_bits(minimum).to_le_bytes());
                    let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                    let quant = |v: f32| (((v - minimum) * inverse + 0.5) as u8).min(15);
                    for j in 0..BLOCK / 2 {
                        data.push(quant(block[j]) | (quant(block[j + BLOCK / 2]) << 4));
                    }
                }
            }
        }
        data
    }

    /// Checks every available kernel path against dequantize-then-multiply in f32 (the
    /// activation quantization costs about 1% of the row's magnitude) and against the
    /// portable path (same integer sums, so equal up to f32 summation order).
    fn check(kind: PackedType, out_features: usize, columns: usize, count: usize, seed: u64) {
        let weights = random_values(out_features * columns, seed);
        let matrix = PackedMatrix::new(kind, out_features, columns, quantize(kind, &weights)).unwrap();
        let dense = matrix.dequantize();
        let input = random_values(count * columns, seed + 1);
        let portable = matrix.matmul(&input, SimdLevel::Portable).unwrap();
        assert_eq!(portable.len(), count * out_features);
        for level in SimdLevel::available() {
            let got = matrix.matmul(&input, level).unwrap();
            for row in 0..count {
                let x = &input[row * columns..(row + 1) * columns];
                let norm: f32 = x.iter().map(|v| v.abs()).sum();
                for out in 0..out_features {
                    let w = &dense[out * columns..(out + 1) * columns];
                    let expected: f32 = x.iter().zip(w).map(|(a, b)| a * b).sum();
                    let actual = got[row * out_features + out];
                    assert!(
                        (actual - expected).abs() <= 0.02 * norm / (columns as f32).sqrt() + 1e-3,
                        "{kind:?} {level:?} row {row} out {out}: {actual} vs {expected}"
                    );
                    let reference = portable[row * out_features + out];
                    assert!(
                        (actual - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                        "{kind:?} {level:?} differs from portable: {actual} vs {reference}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_kernel_matches_the_f32_reference() {
        for kind in [PackedType::Q8_0, PackedType::Q4_0, PackedType::Q4_1] {
            for (out_features, columns, count) in
                [(1, 32, 1), (7, 64, 1), (33, 96, 3), (65, 576, 5), (9, 160, 64), (130, 32, 2)]
            {
                check(kind, out_features, columns, count, (out_features * 31 + columns + count) as u64);
            }
        }
    }

    #[test]
    fn dequantize_matches_the_stored_values() {
        let values = random_values(64, 9);
        for kind in [PackedType::Q8_0, PackedType::Q4_0, PackedType::Q4_1] {
            let matrix = PackedMatrix::new(kind, 2, 32, quantize(kind, &values)).unwrap();
            let dense = matrix.dequantize();
            let tolerance = if kind == PackedType::Q8_0 { 0.01 } else { 0.15 };
            for (got, want) in dense.iter().zip(&values) {
                assert!((got - want).abs() < tolerance, "{kind:?}: {got} vs {want}");
            }
            assert_eq!(matrix.select_rows(&[1]).unwrap(), dense[32..].to_vec());
            assert!(matrix.select_rows(&[2]).is_err());
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(PackedMatrix::new(PackedType::Q8_0, 1, 33, vec![0; 34]).is_err());
        assert!(PackedMatrix::new(PackedType::Q8_0, 2, 32, vec![0; 34]).is_err());
        let matrix = PackedMatrix::new(PackedType::Q4_1, 1, 32, vec![0; 20]).unwrap();
        assert!(matrix.matmul(&[0.0; 31], SimdLevel::Portable).is_err());
    }

    #[test]
    fn half_precision_conversion() {
        for (bits, value) in [
            (0x3C00u16, 1.0f32),
            (0xC000, -2.0),
            (0x0000, 0.0),
            (0x3555, 0.333_251_95),
            (0x0001, 5.960_464_5e-8),
            (0x7BFF, 65504.0),
        ] {
            assert_eq!(f16_bits_to_f32(bits), value, "{bits:#x}");
        }
    }
}
