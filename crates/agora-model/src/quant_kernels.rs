//! Matrix products of GGUF Q8_0, Q4_0 and Q4_1 weights with f32 activations on the CPU,
//! the inference hot path of quantized models (candle has no SIMD kernel for Q4_1, and its
//! Q8_0 kernel reuses nothing across the rows of a prefill or a batched decode).
//!
//! As llama.cpp does, the activations are quantized once per call to blocks of 32 signed
//! bytes with an f32 scale, so every block product is an integer dot product of 32 pairs
//! followed by one multiply-add in f32. Output rows (weight rows) are shared out over
//! rayon's global pool (the pool `agora_model::engine::set_threads` sizes); within a task,
//! each weight block is loaded once and multiplied with up to [`ROWS_PER_PASS`] activation
//! rows ([`ROWS_PER_PASS_VNNI`] with AVX-512 VNNI) while it sits in registers.
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

/// Weight rows interleaved in one group: the SIMD kernels compute this many output
/// values (one per 32-bit lane of a 256-bit register) per activation row at once.
pub const GROUP_ROWS: usize = 8;

/// A quantized `[rows, columns]` matrix. GGUF stores each row as `columns / 32` blocks,
/// rows one after the other; here the rows are interleaved in groups of [`GROUP_ROWS`]
/// (the last group padded with zero rows) so that one 256-bit load holds four
/// consecutive bytes of each of eight rows: one `vpdpbusd` against four activation
/// bytes broadcast then yields eight partial dot products, with no horizontal sums.
///
/// Per group and block, in this order: the eight f16 scales (16 bytes), for Q4_1 the
/// eight f16 minimums (16 bytes), then the quants in 32-byte chunks; chunk `k` holds
/// bytes `4k..4k + 4` of the block's quants for each of the eight rows (8 chunks for
/// Q8_0, 4 of nibble bytes for Q4_0 and Q4_1). A group's blocks are consecutive, so the
/// group-block takes exactly eight GGUF blocks' bytes.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    kind: PackedType,
    rows: usize,
    columns: usize,
    interleaved: Vec<u8>,
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
        // A group of 8 rows occupies the same byte range in both layouts, so the
        // interleaving is done in place, one group at a time, through a group-sized
        // scratch buffer: loading a model never holds a second copy of a matrix (the
        // peak-memory target is 1.3x the file).
        let mut matrix = PackedMatrix { kind, rows, columns, interleaved: Vec::new() };
        let block_bytes = kind.block_bytes();
        let blocks = columns / BLOCK;
        let group_bytes = GROUP_ROWS * blocks * block_bytes;
        let mut interleaved = data;
        interleaved.resize(rows.div_ceil(GROUP_ROWS) * group_bytes, 0);
        let mut scratch = vec![0u8; group_bytes];
        for (group, target) in interleaved.chunks_exact_mut(group_bytes.max(1)).enumerate() {
            scratch.copy_from_slice(target);
            let group_start = group * group_bytes;
            for lane in 0..GROUP_ROWS {
                let row = group * GROUP_ROWS + lane;
                for block in 0..blocks {
                    let start = (lane * blocks + block) * block_bytes;
                    let Some(gguf_block) = scratch.get(start..start + block_bytes) else { continue };
                    for (source, place) in matrix.block_byte_places(row, block) {
                        let slot = place.checked_sub(group_start).and_then(|place| target.get_mut(place));
                        if let (Some(&byte), Some(slot)) = (gguf_block.get(source), slot) {
                            *slot = byte;
                        }
                    }
                }
            }
        }
        matrix.interleaved = interleaved;
        Ok(matrix)
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

    fn blocks_per_row(&self) -> usize {
        self.columns / BLOCK
    }

    /// Bytes of one group of [`GROUP_ROWS`] interleaved rows.
    fn group_bytes(&self) -> usize {
        self.blocks_per_row() * GROUP_ROWS * self.kind.block_bytes()
    }

    /// Bytes before the quants in a group-block (the scales, and the Q4_1 minimums).
    fn header_bytes(kind: PackedType) -> usize {
        match kind {
            PackedType::Q4_1 => 4 * GROUP_ROWS,
            _ => 2 * GROUP_ROWS,
        }
    }

    /// For each byte of GGUF block `block` of row `row`: (its offset in the GGUF block,
    /// its offset in the interleaved bytes). The one definition of the layout.
    fn block_byte_places(&self, row: usize, block: usize) -> impl Iterator<Item = (usize, usize)> + use<> {
        let kind = self.kind;
        let lane = row % GROUP_ROWS;
        let base = ((row / GROUP_ROWS) * self.blocks_per_row() + block) * GROUP_ROWS * kind.block_bytes();
        let header = PackedMatrix::header_bytes(kind);
        let (first_quant, quant_bytes) = match kind {
            PackedType::Q8_0 => (2, BLOCK),
            PackedType::Q4_0 => (2, BLOCK / 2),
            PackedType::Q4_1 => (4, BLOCK / 2),
        };
        let scale = (0..2).map(move |byte| (byte, base + 2 * lane + byte));
        let minimum = (0..if kind == PackedType::Q4_1 { 2 } else { 0 })
            .map(move |byte| (2 + byte, base + 2 * GROUP_ROWS + 2 * lane + byte));
        let quants = (0..quant_bytes).map(move |index| {
            let (chunk, within) = (index / 4, index % 4);
            (first_quant + index, base + header + chunk * 4 * GROUP_ROWS + lane * 4 + within)
        });
        scale.chain(minimum).chain(quants)
    }

    /// GGUF block `block` of row `row` (its first `block_bytes` bytes are meaningful).
    fn gguf_block(&self, row: usize, block: usize) -> [u8; 2 + BLOCK] {
        let mut bytes = [0u8; 2 + BLOCK];
        for (target, source) in self.block_byte_places(row, block) {
            if let (Some(slot), Some(&byte)) = (bytes.get_mut(target), self.interleaved.get(source)) {
                *slot = byte;
            }
        }
        bytes
    }

    /// The matrix in GGUF's row-major block layout (what [`PackedMatrix::new`] took).
    pub fn gguf_bytes(&self) -> Vec<u8> {
        let block_bytes = self.kind.block_bytes();
        let mut data = Vec::with_capacity(self.rows * self.blocks_per_row() * block_bytes);
        for row in 0..self.rows {
            for block in 0..self.blocks_per_row() {
                data.extend_from_slice(&self.gguf_block(row, block)[..block_bytes]);
            }
        }
        data
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
        let mut data = Vec::new();
        for part in parts {
            data.extend_from_slice(&part.gguf_bytes());
        }
        let rows = parts.iter().map(|part| part.rows).sum();
        PackedMatrix::new(first.kind, rows, first.columns, data)
    }

    /// Row `row` as f32 into `output` (`columns` values).
    pub fn dequantize_row(&self, row: usize, output: &mut [f32]) {
        let kind = self.kind;
        for (block_index, values) in output.chunks_exact_mut(BLOCK).take(self.blocks_per_row()).enumerate() {
            let block = self.gguf_block(row, block_index);
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
        if count == 0 || self.rows == 0 {
            return Ok(Vec::new());
        }
        if count > ROWS_PER_CALL && level != SimdLevel::Portable {
            // Every group of weights walks over all the activation rows: for a long prompt
            // or a batch of prompts (thousands of rows) those no longer fit in a core's
            // cache and stream from memory once per group. In slices of `ROWS_PER_CALL`
            // rows they stay cached while the weights stream instead, once per slice.
            let mut output = Vec::with_capacity(count * self.rows);
            for rows in input.chunks(ROWS_PER_CALL * self.columns) {
                output.extend(self.matmul(rows, level)?);
            }
            return Ok(output);
        }
        let activations = QuantizedRows::new(input, count, self.columns);
        if level == SimdLevel::Portable {
            return Ok(self.matmul_portable(&activations, count));
        }
        let groups = self.rows.div_ceil(GROUP_ROWS);
        // Enough tasks for rayon to balance, few enough that each amortises its start.
        let threads = rayon::current_num_threads().max(1);
        let groups_per_task = if threads == 1 { groups } else { groups.div_ceil(threads * 4).max(1) };
        // Per group, per activation row, the group's eight outputs.
        let mut by_group = vec![0f32; groups * count * GROUP_ROWS];
        let group_bytes = self.group_bytes();
        by_group.par_chunks_mut(groups_per_task * count * GROUP_ROWS).enumerate().for_each(
            |(task, outputs)| {
                for (offset, outputs) in outputs.chunks_exact_mut(count * GROUP_ROWS).enumerate() {
                    let group = task * groups_per_task + offset;
                    let weights =
                        self.interleaved.get(group * group_bytes..(group + 1) * group_bytes).unwrap_or(&[]);
                    group_products(self.kind, level, weights, &activations, outputs);
                }
            },
        );
        if count == 1 {
            by_group.truncate(self.rows);
            return Ok(by_group);
        }
        let mut output = vec![0f32; count * self.rows];
        let groups_of_row = |(input_row, output): (usize, &mut [f32])| {
            for (group, values) in output.chunks_mut(GROUP_ROWS).enumerate() {
                let start = (group * count + input_row) * GROUP_ROWS;
                // A full group is a fixed-size copy (a few vector moves); a slice copy of
                // unknown length calls `memmove`.
                if let (Ok(target), Some(source)) = (
                    <&mut [f32; GROUP_ROWS]>::try_from(&mut *values),
                    by_group.get(start..).and_then(|rest| rest.first_chunk::<GROUP_ROWS>()),
                ) {
                    *target = *source;
                } else if let Some(source) = by_group.get(start..start + values.len()) {
                    values.copy_from_slice(source);
                }
            }
        };
        if count >= PARALLEL_QUANTIZE_ROWS {
            output.par_chunks_mut(self.rows).enumerate().for_each(groups_of_row);
        } else {
            output.chunks_mut(self.rows).enumerate().for_each(groups_of_row);
        }
        Ok(output)
    }

    /// The reference: integer block sums, then f32 scaling, in plain Rust, one weight
    /// row at a time from its GGUF blocks.
    fn matmul_portable(&self, activations: &QuantizedRows, count: usize) -> Vec<f32> {
        let kind = self.kind;
        let mut output = vec![0f32; count * self.rows];
        for row in 0..self.rows {
            for block_index in 0..self.blocks_per_row() {
                let block = self.gguf_block(row, block_index);
                let scale = f16_bits_to_f32(u16::from_le_bytes([block[0], block[1]]));
                for input_row in 0..count {
                    let Some(view) = activations.tile(block_index, input_row, 1) else {
                        continue;
                    };
                    let quants = view.values;
                    let activation_scale = view.scales.first().copied().unwrap_or(0.0);
                    let scaled_sum = view.scaled_sums.first().copied().unwrap_or(0.0);
                    let product = match kind {
                        PackedType::Q8_0 => {
                            let dot: i32 = block[2..]
                                .iter()
                                .zip(quants)
                                .map(|(&w, &a)| i32::from(w as i8) * i32::from(a))
                                .sum();
                            scale * activation_scale * dot as f32
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
                                .take(BLOCK / 2)
                                .zip(low.iter().zip(high))
                                .map(|(&byte, (&a_low, &a_high))| {
                                    i32::from(byte & 0x0F) * i32::from(a_low)
                                        + i32::from(byte >> 4) * i32::from(a_high)
                                })
                                .sum();
                            scale * activation_scale * dot as f32 + offset * scaled_sum
                        }
                    };
                    if let Some(slot) = output.get_mut(input_row * self.rows + row) {
                        *slot += product;
                    }
                }
            }
        }
        output
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

/// From this many activation rows on (a prompt or a batched decode step), quantizing
/// them and ordering the products are shared out over the pool too; below, the calling
/// thread does both (one row of decode costs less than handing the work over).
const PARALLEL_QUANTIZE_ROWS: usize = 16;

/// Activations quantized to blocks of 32 signed bytes, as the kernels read them: block
/// by block, and within a block row by row, so the rows of a tile are side by side and
/// one pointer with constant offsets reaches all of them.
#[derive(Debug)]
struct QuantizedRows {
    count: usize,
    /// Per block and row: `max |x| / 127`.
    scales: Vec<f32>,
    /// Per block and row: `scale * Σ q`, for the offsets of Q4_0 and Q4_1.
    scaled_sums: Vec<f32>,
    /// Per block and row: `-128 * Σ q`, the correction when Q8_0 weights are read unsigned.
    offset_sums: Vec<i32>,
    /// Per block and row, 32 values.
    values: Vec<i8>,
}

/// One column block of [`QuantizedRows`]: values, scales, scaled sums and offset sums
/// of every row.
type ColumnParts<'a> = (((&'a mut [i8], &'a mut [f32]), &'a mut [f32]), &'a mut [i32]);

impl QuantizedRows {
    fn new(input: &[f32], count: usize, columns: usize) -> QuantizedRows {
        let blocks_per_row = columns / BLOCK;
        let blocks = count * blocks_per_row;
        let mut scales = vec![0f32; blocks];
        let mut scaled_sums = vec![0f32; blocks];
        let mut offset_sums = vec![0i32; blocks];
        let mut values = vec![0i8; blocks * BLOCK];
        // Column block `block_index` of every row: one contiguous stretch of each output.
        let quantize_column =
            |block_index: usize, (((values, scales), scaled_sums), offset_sums): ColumnParts| {
                let places = values.chunks_exact_mut(BLOCK).zip(scales).zip(scaled_sums).zip(offset_sums);
                for (row, (((quants, scale), scaled_sum), offset_sum)) in places.enumerate() {
                    let start = row * columns + block_index * BLOCK;
                    let (Some(Ok(block)), Ok(quants)) = (
                        input.get(start..start + BLOCK).map(<&[f32; BLOCK]>::try_from),
                        <&mut [i8; BLOCK]>::try_from(quants),
                    ) else {
                        continue;
                    };
                    let (block_scale, sum) = quantize_block(block, quants);
                    *scale = block_scale;
                    *scaled_sum = block_scale * sum as f32;
                    *offset_sum = -128 * sum;
                }
            };
        if count > 0 {
            // One entry per column block (a few dozen), handed out whole.
            let columns: Vec<ColumnParts> = values
                .chunks_mut(count * BLOCK)
                .zip(scales.chunks_mut(count))
                .zip(scaled_sums.chunks_mut(count))
                .zip(offset_sums.chunks_mut(count))
                .collect();
            if count >= PARALLEL_QUANTIZE_ROWS {
                columns
                    .into_par_iter()
                    .enumerate()
                    .for_each(|(block_index, parts)| quantize_column(block_index, parts));
            } else {
                columns
                    .into_iter()
                    .enumerate()
                    .for_each(|(block_index, parts)| quantize_column(block_index, parts));
            }
        }
        QuantizedRows { count, scales, scaled_sums, offset_sums, values }
    }

    /// Block `block` of rows `first..first + rows`, or `None` where that is outside.
    #[inline]
    fn tile(&self, block: usize, first: usize, rows: usize) -> Option<TileView<'_>> {
        if first + rows > self.count {
            return None;
        }
        let start = block * self.count + first;
        Some(TileView {
            values: self.values.get(start * BLOCK..(start + rows) * BLOCK)?,
            scales: self.scales.get(start..start + rows)?,
            scaled_sums: self.scaled_sums.get(start..start + rows)?,
            offset_sums: self.offset_sums.get(start..start + rows)?,
        })
    }
}

/// Quantizes 32 values to `round(x / scale)` with `scale = max |x| / 127`; returns the
/// scale and the sum of the quantized values. Written in lanes of eight so the compiler
/// keeps it in vector registers: adding 1.5 x 2^23 rounds to the nearest integer (ties to
/// even) in one vector add, where `f32::round` calls libm.
#[inline]
fn quantize_block(block: &[f32; BLOCK], quants: &mut [i8; BLOCK]) -> (f32, i32) {
    const ROUNDER: f32 = 12_582_912.0;
    const ROUNDER_BITS: i32 = 0x4B40_0000;
    let mut largest = [0f32; 8];
    for chunk in block.chunks_exact(8) {
        for (lane, &value) in largest.iter_mut().zip(chunk) {
            // A comparison rather than `f32::max`, whose NaN rule keeps the loop scalar.
            let magnitude = value.abs();
            *lane = if magnitude > *lane { magnitude } else { *lane };
        }
    }
    let largest = largest.iter().fold(0f32, |largest, &lane| if lane > largest { lane } else { largest });
    let scale = largest / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sums = [0i32; 8];
    for (chunk, quant_chunk) in block.chunks_exact(8).zip(quants.chunks_exact_mut(8)) {
        for ((quant, &value), sum) in quant_chunk.iter_mut().zip(chunk).zip(sums.iter_mut()) {
            // |value * inverse| <= 127: adding 1.5 x 2^23 leaves the rounded integer in
            // the low mantissa bits, read with integer operations only (a saturating
            // float-to-int `as` would keep the loop scalar).
            let rounded = (value * inverse + ROUNDER).to_bits() as i32 - ROUNDER_BITS;
            *quant = rounded as i8;
            *sum += rounded;
        }
    }
    (scale, sums.iter().sum())
}

/// One block of a few consecutive activation rows: `values` holds 32 per row, the others
/// one per row.
#[derive(Clone, Copy)]
struct TileView<'a> {
    values: &'a [i8],
    scales: &'a [f32],
    scaled_sums: &'a [f32],
    offset_sums: &'a [i32],
}

/// The most activation rows one pass over the weights serves (see
/// [`PackedMatrix::matmul`]): 128 rows of a 1,536-wide input are 192 KiB of quantized
/// activations, which a core's second-level cache holds; a 64-row decode step is one pass.
pub const ROWS_PER_CALL: usize = 128;

/// Activation rows multiplied with one loaded weight chunk (the register tile is
/// [`GROUP_ROWS`] weight rows x this many activation rows) by the AVX2 kernel, whose
/// sixteen vector registers hold no more.
pub const ROWS_PER_PASS: usize = 4;

/// The same for the AVX-512 VNNI kernel: its 32 vector registers hold eight rows' sums
/// and totals, and eight independent `vpdpbusd` chains hide the instruction's latency
/// (four left the kernel waiting on its own results in batched decode and prompts).
pub const ROWS_PER_PASS_VNNI: usize = 8;

/// The products of one group of interleaved weight rows with every activation row,
/// written as `[activation row][GROUP_ROWS]` into `outputs`: [`ROWS_PER_PASS`] (or
/// [`ROWS_PER_PASS_VNNI`]) rows at a time, then the remainder in smaller tiles. Only the
/// first tile asks for the weights ahead: the later ones read the group from the cache.
fn group_products(
    kind: PackedType,
    level: SimdLevel,
    weights: &[u8],
    activations: &QuantizedRows,
    outputs: &mut [f32],
) {
    let count = outputs.len() / GROUP_ROWS;
    let widest = if level == SimdLevel::Avx512Vnni { ROWS_PER_PASS_VNNI } else { ROWS_PER_PASS };
    let mut first = 0;
    while first < count {
        let left = count - first;
        let pass = [ROWS_PER_PASS_VNNI, ROWS_PER_PASS, 2, 1]
            .into_iter()
            .find(|&pass| pass <= widest && pass <= left)
            .unwrap_or(1);
        let outputs = &mut outputs[first * GROUP_ROWS..(first + pass) * GROUP_ROWS];
        let prefetch = first == 0;
        match pass {
            ROWS_PER_PASS_VNNI => {
                tile::<ROWS_PER_PASS_VNNI>(kind, level, weights, activations, first, prefetch, outputs)
            }
            ROWS_PER_PASS => {
                tile::<ROWS_PER_PASS>(kind, level, weights, activations, first, prefetch, outputs)
            }
            2 => tile::<2>(kind, level, weights, activations, first, prefetch, outputs),
            _ => tile::<1>(kind, level, weights, activations, first, prefetch, outputs),
        }
        first += pass;
    }
}

/// Activation rows `first..first + R` times one group of weight rows.
fn tile<const R: usize>(
    kind: PackedType,
    level: SimdLevel,
    weights: &[u8],
    activations: &QuantizedRows,
    first: usize,
    prefetch: bool,
    outputs: &mut [f32],
) {
    let sums: [[f32; GROUP_ROWS]; R] = match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul` only passes a SIMD level that `SimdLevel::available` detected
        // on this CPU, so the functions compiled for those features may run.
        SimdLevel::Avx2 => unsafe { x86::group_avx2::<R>(kind, weights, activations, first, prefetch) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX-512 VNNI and VL (and AVX2) were detected.
        SimdLevel::Avx512Vnni => unsafe { x86::group_vnni::<R>(kind, weights, activations, first, prefetch) },
        _ => [[0f32; GROUP_ROWS]; R],
    };
    for (output, sum) in outputs.chunks_exact_mut(GROUP_ROWS).zip(sums) {
        output.copy_from_slice(&sum);
    }
}

/// One query row of attention: `scores[k] = softmax_k(query · key_k * scale + mask[k])`
/// and `output = Σ_k scores[k] value_k`. Key `k` is `keys[k * key_stride..][..dim]`
/// and value `k` is `values[k * value_stride..][..dim]` (rows of a strided cache), `dim`
/// being `query.len()`; `scores` holds one slot per key, `output` (`dim` values) is
/// overwritten. Compiled twice (AVX2 + FMA and portable) from one body, the vector
/// version chosen at run time: the default target's SSE2 halves the width.
#[allow(clippy::too_many_arguments)]
pub fn attend_row(
    query: &[f32],
    keys: &[f32],
    key_stride: usize,
    values: &[f32],
    value_stride: usize,
    mask: Option<&[f32]>,
    scale: f32,
    scores: &mut [f32],
    output: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if SimdLevel::detect() != SimdLevel::Portable {
        // SAFETY: every level but the portable one has AVX2 and FMA (`SimdLevel::detect`
        // checked them on this CPU).
        unsafe {
            x86::attend_row_avx2(query, keys, key_stride, values, value_stride, mask, scale, scores, output)
        };
        return;
    }
    attend_row_body(query, keys, key_stride, values, value_stride, mask, scale, scores, output);
}

/// The body of [`attend_row`], inlined into each compiled version.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_row_body(
    query: &[f32],
    keys: &[f32],
    key_stride: usize,
    values: &[f32],
    value_stride: usize,
    mask: Option<&[f32]>,
    scale: f32,
    scores: &mut [f32],
    output: &mut [f32],
) {
    let dim = query.len();
    let mut largest = f32::NEG_INFINITY;
    for (key, score) in scores.iter_mut().enumerate() {
        let key_row = keys.get(key * key_stride..key * key_stride + dim).unwrap_or(&[]);
        // Eight independent lanes, so the sum is not one serial chain.
        let mut lanes = [0f32; 8];
        for (a, b) in query.chunks_exact(8).zip(key_row.chunks_exact(8)) {
            for lane in 0..8 {
                lanes[lane] += a[lane] * b[lane];
            }
        }
        let tail: f32 = query
            .chunks_exact(8)
            .remainder()
            .iter()
            .zip(key_row.chunks_exact(8).remainder())
            .map(|(a, b)| a * b)
            .sum();
        let dot =
            ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        let hidden = mask.and_then(|mask| mask.get(key)).copied().unwrap_or(0.0);
        *score = (dot + tail) * scale + hidden;
        largest = largest.max(*score);
    }
    let mut total = 0f32;
    for score in scores.iter_mut() {
        *score = (*score - largest).exp();
        total += *score;
    }
    let inverse = 1.0 / total;
    output.iter_mut().for_each(|value| *value = 0.0);
    for (key, score) in scores.iter_mut().enumerate() {
        *score *= inverse;
        let weight = *score;
        let value_row = values.get(key * value_stride..key * value_stride + dim).unwrap_or(&[]);
        for (out, value) in output.iter_mut().zip(value_row) {
            *out += weight * value;
        }
    }
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
    //! The AVX2 and AVX-512 VNNI kernels over one group of eight interleaved weight rows
    //! and a tile of activation rows. Each 256-bit weight chunk holds four bytes of each
    //! of the eight rows; four activation bytes broadcast to every lane make one byte
    //! dot product yield eight partial sums, one per weight row, so a block ends in one
    //! i32 vector per activation row, converted to f32 and multiply-added with the
    //! eight weight scales times the activation's scale. The weight chunk is loaded once
    //! per tile and reused for each activation row while it sits in a register.

    use std::arch::x86_64::*;

    use super::{BLOCK, GROUP_ROWS, PackedMatrix, PackedType, QuantizedRows, TileView};

    /// 32 bytes from the start of `bytes` (a shorter slice reads as zeros rather than
    /// out of bounds).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_32(bytes: &[u8]) -> __m256i {
        match bytes.first_chunk::<32>() {
            // SAFETY: the array is 32 readable bytes; `loadu` has no alignment requirement.
            Some(array) => unsafe { _mm256_loadu_si256(array.as_ptr().cast()) },
            None => _mm256_setzero_si256(),
        }
    }

    /// Eight f16 values from the start of `bytes`, as f32 (zeros when shorter).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn load_8_halves(bytes: &[u8]) -> __m256 {
        match bytes.first_chunk::<16>() {
            // SAFETY: the array is 16 readable bytes; `loadu` has no alignment requirement.
            Some(array) => _mm256_cvtph_ps(unsafe { _mm_loadu_si128(array.as_ptr().cast()) }),
            None => _mm256_setzero_ps(),
        }
    }

    /// How far ahead of the block being multiplied its successors are requested. Weights
    /// stream from memory once per decode step and the hardware prefetcher stops at every
    /// 4 KiB page; asking for the lines about a page ahead measured 10-20% faster
    /// single-row decode here (1,024 and 2,048 bytes gained less).
    const PREFETCH_DISTANCE: usize = 4096;

    /// Asks for the cache lines `distance` bytes past the start of `block`, one per 64
    /// bytes of the block.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn prefetch_ahead(block: &[u8], distance: usize) {
        let ahead = block.as_ptr().wrapping_add(distance);
        let mut offset = 0;
        while offset < block.len() {
            // A prefetch is only a hint: it never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(offset).cast());
            offset += 64;
        }
    }

    /// Activation bytes `at..at + 4` in every 32-bit lane.
    ///
    /// # Safety
    /// `at + 4 <= values.len()` (the kernels check the rows' lengths on entry).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn broadcast_4(values: &[i8], at: usize) -> __m256i {
        // SAFETY: the caller guarantees the four bytes are inside `values`;
        // `read_unaligned` has no alignment requirement.
        let word = unsafe { values.as_ptr().add(at).cast::<i32>().read_unaligned() };
        _mm256_set1_epi32(word)
    }

    /// Bytes of one group-block's quants: eight rows of a block.
    const Q8_BYTES: usize = GROUP_ROWS * BLOCK;
    const Q4_BYTES: usize = GROUP_ROWS * BLOCK / 2;

    /// Q8_0 block sums with `vpdpbusd`: the weights read as unsigned (`w + 128`, one xor
    /// per chunk) against signed activations, each sum starting from `-128 Σ a` so the
    /// result is the exact signed dot product. The block's eight weight chunks are loaded
    /// first and stay in registers; each activation row then runs one chain of eight
    /// `vpdpbusd` whose broadcast operands come straight from memory (the other loop
    /// order let the compiler hoist 64 broadcasts and spill them to the stack).
    #[inline]
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    fn q8_sums_vnni<const R: usize>(quants: &[u8; Q8_BYTES], tile: &TileView) -> [__m256i; R] {
        if tile.values.len() < R * BLOCK || tile.offset_sums.len() < R {
            return [_mm256_setzero_si256(); R];
        }
        let flip = _mm256_set1_epi8(-128);
        let mut weights = [_mm256_setzero_si256(); BLOCK / 4];
        for (chunk, chunk_weights) in weights.iter_mut().enumerate() {
            *chunk_weights = _mm256_xor_si256(load_32(&quants[chunk * 32..]), flip);
        }
        // Plain loops, not `array::from_fn`: a closure is a function of its own that the
        // compiler may leave uninlined, one call per row and block.
        let mut sums = [_mm256_setzero_si256(); R];
        for (index, sum) in sums.iter_mut().enumerate() {
            *sum = _mm256_set1_epi32(tile.offset_sums[index]);
            for (chunk, &chunk_weights) in weights.iter().enumerate() {
                // SAFETY: the tile holds R rows of 32 values (checked above).
                let activations = unsafe { broadcast_4(tile.values, index * BLOCK + 4 * chunk) };
                *sum = _mm256_dpbusd_epi32(*sum, chunk_weights, activations);
            }
        }
        sums
    }

    /// Q8_0 block sums with AVX2: `|w|` against `a * sign(w)` (the unsigned x signed
    /// form `vpmaddubsw` takes), pairs summed by `vpmaddwd`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q8_sums_avx2<const R: usize>(quants: &[u8; Q8_BYTES], tile: &TileView) -> [__m256i; R] {
        let mut sums = [_mm256_setzero_si256(); R];
        if tile.values.len() < R * BLOCK {
            return sums;
        }
        let ones = _mm256_set1_epi16(1);
        for chunk in 0..BLOCK / 4 {
            let weights = load_32(&quants[chunk * 32..]);
            let magnitudes = _mm256_sign_epi8(weights, weights);
            for (index, sum) in sums.iter_mut().enumerate() {
                // SAFETY: the tile holds R rows of 32 values (checked above).
                let activations = unsafe { broadcast_4(tile.values, index * BLOCK + 4 * chunk) };
                let pairs = _mm256_maddubs_epi16(magnitudes, _mm256_sign_epi8(activations, weights));
                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
            }
        }
        sums
    }

    /// The low and high nibbles of a Q4 chunk: values `4k..4k + 4` and `16 + 4k..`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn nibbles(quants: &[u8; Q4_BYTES], chunk: usize) -> (__m256i, __m256i) {
        let packed = load_32(&quants[chunk * 32..]);
        let mask = _mm256_set1_epi8(0x0F);
        (_mm256_and_si256(packed, mask), _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask))
    }

    /// Q4_0 / Q4_1 block sums of the unsigned nibbles with `vpdpbusd`.
    #[inline]
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    fn q4_sums_vnni<const R: usize>(quants: &[u8; Q4_BYTES], tile: &TileView) -> [__m256i; R] {
        let mut sums = [_mm256_setzero_si256(); R];
        if tile.values.len() < R * BLOCK {
            return sums;
        }
        for chunk in 0..BLOCK / 8 {
            let (low, high) = nibbles(quants, chunk);
            for (index, sum) in sums.iter_mut().enumerate() {
                let at = index * BLOCK + 4 * chunk;
                // SAFETY: the tile holds R rows of 32 values (checked above).
                let (first, second) =
                    unsafe { (broadcast_4(tile.values, at), broadcast_4(tile.values, at + 16)) };
                *sum = _mm256_dpbusd_epi32(*sum, low, first);
                *sum = _mm256_dpbusd_epi32(*sum, high, second);
            }
        }
        sums
    }

    /// Q4_0 / Q4_1 block sums with AVX2: the byte pair sums stay in i16 for the whole
    /// block (at most 8 x 2 x 15 x 127 = 30480), then one `vpmaddwd` widens them.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q4_sums_avx2<const R: usize>(quants: &[u8; Q4_BYTES], tile: &TileView) -> [__m256i; R] {
        let mut pairs = [_mm256_setzero_si256(); R];
        if tile.values.len() < R * BLOCK {
            return pairs;
        }
        for chunk in 0..BLOCK / 8 {
            let (low, high) = nibbles(quants, chunk);
            for (index, pair) in pairs.iter_mut().enumerate() {
                let at = index * BLOCK + 4 * chunk;
                // SAFETY: the tile holds R rows of 32 values (checked above).
                let (first, second) =
                    unsafe { (broadcast_4(tile.values, at), broadcast_4(tile.values, at + 16)) };
                let both =
                    _mm256_add_epi16(_mm256_maddubs_epi16(low, first), _mm256_maddubs_epi16(high, second));
                *pair = _mm256_add_epi16(*pair, both);
            }
        }
        let ones = _mm256_set1_epi16(1);
        pairs.map(|pair| _mm256_madd_epi16(pair, ones))
    }

    /// One kernel per SIMD level, identical but for the block sums (a macro, because a
    /// `target_feature` function must be compiled once per feature set).
    macro_rules! kernel {
        ($name:ident, $features:literal, $q8_sums:ident, $q4_sums:ident) => {
            /// Activation rows `first..first + R` times one group of weight rows: per
            /// activation row, the group's eight outputs (zeros where the rows are not
            /// all there).
            #[target_feature(enable = $features)]
            pub(super) fn $name<const R: usize>(
                kind: PackedType,
                weights: &[u8],
                activations: &QuantizedRows,
                first: usize,
                prefetch: bool,
            ) -> [[f32; GROUP_ROWS]; R] {
                let mut outputs = [[0f32; GROUP_ROWS]; R];
                let block_bytes = GROUP_ROWS * kind.block_bytes();
                let blocks = weights.len() / block_bytes;
                if blocks == 0 || activations.tile(blocks - 1, first, R).is_none() {
                    return outputs;
                }
                let header = PackedMatrix::header_bytes(kind);
                let mut totals = [_mm256_setzero_ps(); R];
                for (block_index, block) in weights.chunks_exact(block_bytes).enumerate() {
                    let Some(tile) = activations.tile(block_index, first, R) else { continue };
                    if prefetch {
                        prefetch_ahead(block, PREFETCH_DISTANCE);
                    }
                    let scales = load_8_halves(block);
                    let quants = block.get(header..).unwrap_or(&[]);
                    let sums: [__m256i; R] = match kind {
                        PackedType::Q8_0 => match quants.first_chunk::<Q8_BYTES>() {
                            Some(quants) => $q8_sums(quants, &tile),
                            None => continue,
                        },
                        PackedType::Q4_0 | PackedType::Q4_1 => match quants.first_chunk::<Q4_BYTES>() {
                            Some(quants) => $q4_sums(quants, &tile),
                            None => continue,
                        },
                    };
                    for ((total, sum), &scale) in totals.iter_mut().zip(sums).zip(tile.scales) {
                        let both = _mm256_mul_ps(scales, _mm256_set1_ps(scale));
                        *total = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), both, *total);
                    }
                    if kind != PackedType::Q8_0 {
                        // The constant part of every weight (`-8 d` or the minimum) times
                        // the activation block's sum.
                        let offsets = match kind {
                            PackedType::Q4_1 => load_8_halves(block.get(2 * GROUP_ROWS..).unwrap_or(&[])),
                            _ => _mm256_mul_ps(scales, _mm256_set1_ps(-8.0)),
                        };
                        for (total, &sum) in totals.iter_mut().zip(tile.scaled_sums) {
                            *total = _mm256_fmadd_ps(offsets, _mm256_set1_ps(sum), *total);
                        }
                    }
                }
                for (output, total) in outputs.iter_mut().zip(totals) {
                    // SAFETY: `output` is 8 writable f32; `storeu` has no alignment requirement.
                    unsafe { _mm256_storeu_ps(output.as_mut_ptr(), total) };
                }
                outputs
            }
        };
    }

    /// [`super::attend_row`] with AVX2 and FMA: each score one fused multiply-add
    /// chain per eight dimensions, the weighted sum of values one pass per eight output
    /// dimensions with the sum held in a register. Rows whose dimension is not a
    /// multiple of 8, or slices too short for every row, take the portable body.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn attend_row_avx2(
        query: &[f32],
        keys: &[f32],
        key_stride: usize,
        values: &[f32],
        value_stride: usize,
        mask: Option<&[f32]>,
        scale: f32,
        scores: &mut [f32],
        output: &mut [f32],
    ) {
        let dim = query.len();
        let count = scores.len();
        let reaches = |len: usize, stride: usize| count == 0 || (count - 1) * stride + dim <= len;
        if !dim.is_multiple_of(8)
            || output.len() != dim
            || !reaches(keys.len(), key_stride)
            || !reaches(values.len(), value_stride)
            || mask.is_some_and(|mask| mask.len() < count)
        {
            super::attend_row_body(
                query,
                keys,
                key_stride,
                values,
                value_stride,
                mask,
                scale,
                scores,
                output,
            );
            return;
        }
        let mut largest = f32::NEG_INFINITY;
        for (key, score) in scores.iter_mut().enumerate() {
            let row = keys[key * key_stride..].as_ptr();
            let mut even = _mm256_setzero_ps();
            let mut odd = _mm256_setzero_ps();
            let mut at = 0;
            while at + 16 <= dim {
                // SAFETY: `at + 16 <= dim`, `query` holds `dim` values and the check above
                // gave every key row `dim` values; `loadu` has no alignment requirement.
                unsafe {
                    even = _mm256_fmadd_ps(
                        _mm256_loadu_ps(query.as_ptr().add(at)),
                        _mm256_loadu_ps(row.add(at)),
                        even,
                    );
                    odd = _mm256_fmadd_ps(
                        _mm256_loadu_ps(query.as_ptr().add(at + 8)),
                        _mm256_loadu_ps(row.add(at + 8)),
                        odd,
                    );
                }
                at += 16;
            }
            if at < dim {
                // SAFETY: as above, `at + 8 == dim`.
                unsafe {
                    even = _mm256_fmadd_ps(
                        _mm256_loadu_ps(query.as_ptr().add(at)),
                        _mm256_loadu_ps(row.add(at)),
                        even,
                    );
                }
            }
            let sum = _mm256_add_ps(even, odd);
            let halves = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
            let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
            let dot = _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)));
            let hidden = mask.map_or(0.0, |mask| mask[key]);
            *score = dot * scale + hidden;
            largest = largest.max(*score);
        }
        let mut total = 0f32;
        for score in scores.iter_mut() {
            *score = (*score - largest).exp();
            total += *score;
        }
        let inverse = 1.0 / total;
        scores.iter_mut().for_each(|score| *score *= inverse);
        // Eight output chunks at a time (all of a 64-wide head): eight independent
        // multiply-add chains per key instead of one chain waiting on itself.
        let mut first = 0;
        while first < dim {
            if first + 64 <= dim {
                weighted_sum::<8>(scores, values, value_stride, first, &mut output[first..first + 64]);
                first += 64;
            } else {
                weighted_sum::<1>(scores, values, value_stride, first, &mut output[first..first + 8]);
                first += 8;
            }
        }
    }

    /// `output[8c..8c + 8] = Σ_k weights[k] values[k * stride + first + 8c..]` for the
    /// `C` chunks of `output`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn weighted_sum<const C: usize>(
        weights: &[f32],
        values: &[f32],
        stride: usize,
        first: usize,
        output: &mut [f32],
    ) {
        let mut sums = [_mm256_setzero_ps(); C];
        for (key, &weight) in weights.iter().enumerate() {
            let weight = _mm256_set1_ps(weight);
            let row = values[key * stride + first..].as_ptr();
            for (chunk, sum) in sums.iter_mut().enumerate() {
                // SAFETY: the caller checked that every value row holds the `dim` values
                // that `first + 8 * C` stays within; `loadu` has no alignment requirement.
                *sum = _mm256_fmadd_ps(weight, unsafe { _mm256_loadu_ps(row.add(chunk * 8)) }, *sum);
            }
        }
        for (out, sum) in output.chunks_exact_mut(8).zip(sums) {
            // SAFETY: `out` is 8 writable f32; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        }
    }

    kernel!(group_avx2, "avx2,fma,f16c", q8_sums_avx2, q4_sums_avx2);
    kernel!(group_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", q8_sums_vnni, q4_sums_vnni);
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
            for (out_features, columns, count) in [
                (1, 32, 1),
                (7, 64, 1),
                (33, 96, 3),
                (65, 576, 5),
                (9, 160, 64),
                (10, 64, 300),
                (130, 32, 2),
                (17, 64, 7),
                (24, 128, 11),
            ] {
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
    fn interleaving_keeps_the_gguf_bytes() {
        for kind in [PackedType::Q8_0, PackedType::Q4_0, PackedType::Q4_1] {
            for rows in [1, 8, 13] {
                let data = quantize(kind, &random_values(rows * 64, rows as u64));
                let matrix = PackedMatrix::new(kind, rows, 64, data.clone()).unwrap();
                assert_eq!(matrix.gguf_bytes(), data, "{kind:?} {rows} rows");
                let stacked = PackedMatrix::stack_rows(&[&matrix, &matrix]).unwrap();
                assert_eq!(stacked.rows(), 2 * rows);
                assert_eq!(stacked.gguf_bytes(), [data.clone(), data].concat(), "{kind:?} stacked");
            }
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
