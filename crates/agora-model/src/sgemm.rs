//! A bounds-checked f32 matrix product on the gemm crate (the kernels candle's CPU matmul
//! calls, AVX-512 where the CPU has it), for the fused ops that compute outside candle's
//! graph ([`crate::fused`]). Strided views cost nothing: a transposed operand is the same
//! memory with its strides swapped.
#![allow(unsafe_code)]

/// A read-only matrix view: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix at the start of `data`.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> MatRef<'a> {
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// Any strided layout (a candle tensor's, after its start offset).
    pub(crate) fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> MatRef<'a> {
        MatRef { data, rows, cols, row_stride, col_stride }
    }

    /// The transpose: the same memory, strides swapped.
    pub(crate) fn t(self) -> MatRef<'a> {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Rows `start..start + count` (a row block of the same layout).
    pub(crate) fn rows_range(self, start: usize, count: usize) -> MatRef<'a> {
        let offset = (start * self.row_stride).min(self.data.len());
        MatRef { data: &self.data[offset..], rows: count, ..self }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Whether every element lies inside `data` (so the kernel never reads past it).
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1).checked_mul(self.row_stride).and_then(|rows| {
            (self.cols - 1).checked_mul(self.col_stride).and_then(|cols| rows.checked_add(cols))
        });
        last.is_some_and(|last| last < self.data.len())
    }
}

/// `lhs · rhs` as a new row-major `[lhs.rows, rhs.cols]` vector. The kernel writes every
/// element without reading it, so the vector is never zeroed first: a zeroing `memset`
/// runs on one thread, and for an output layer's logits (hundreds of MB) it left the
/// other thread idle for a tenth of a GPT-2 forward at 2 threads.
pub(crate) fn matmul(lhs: MatRef, rhs: MatRef) -> Result<Vec<f32>, String> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    check_operands(lhs, rhs, m * n)?;
    if k == 0 {
        return Ok(vec![0.0; m * n]);
    }
    let mut dst: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(m * n);
    // SAFETY: the capacity holds m x n elements, and `MaybeUninit` needs no initialisation.
    unsafe { dst.set_len(m * n) };
    if m > 0 && n > 0 {
        // SAFETY: as in `product_into`; with `read_dst` false the kernel only writes `dst`
        // (uninitialised memory is never read).
        unsafe { run_gemm(dst.as_mut_ptr().cast::<f32>(), lhs, rhs, false, pool_parallelism()) };
    }
    let mut dst = std::mem::ManuallyDrop::new(dst);
    // SAFETY: every one of the m x n values was written by the kernel above (or there are
    // none); `MaybeUninit<f32>` has the size and alignment of `f32`, so the allocation is
    // handed over as it is, with the same length and capacity.
    Ok(unsafe { Vec::from_raw_parts(dst.as_mut_ptr().cast::<f32>(), dst.len(), dst.capacity()) })
}

/// [`matmul`] for a `lhs` that is a transposed view with a long row stride (the output
/// layer's `dᵀ · hidden`, `d` being `[rows, vocab]`): computed as `(rhsᵀ · lhsᵀ)`, which
/// reads `lhs`'s memory row by row, then transposed in parallel blocks. Read column-wise,
/// each of `dᵀ`'s elements sits on another page; on a 2-core VM, GPT-2's 50,257 x 1,024 x
/// 384 product ran at 65.9-97.7 GMAC/s that way and at 80.4-109.0 this way (best of 5, six
/// alternations).
pub(crate) fn matmul_transposing(lhs: MatRef, rhs: MatRef) -> Result<Vec<f32>, String> {
    use rayon::prelude::*;
    let (m, n) = (lhs.rows, rhs.cols);
    let transposed = matmul(rhs.t(), lhs.t())?;
    let mut dst = vec![0.0f32; m * n];
    if n == 0 {
        return Ok(dst);
    }
    const BLOCK_ROWS: usize = 64;
    dst.par_chunks_mut(BLOCK_ROWS * n).enumerate().for_each(|(block, rows)| {
        let first = block * BLOCK_ROWS;
        let count = rows.len() / n;
        for (column, values) in transposed.chunks_exact(m).enumerate() {
            for (row, &value) in values[first..first + count].iter().enumerate() {
                rows[row * n + column] = value;
            }
        }
    });
    Ok(dst)
}

/// The shape and bounds checks shared by both products.
fn check_operands(lhs: MatRef, rhs: MatRef, dst_len: usize) -> Result<(), String> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k {
        return Err(format!("matrix product of [{m}, {k}] and [{}, {n}]", rhs.rows));
    }
    if dst_len != m * n {
        return Err(format!("matrix product [{m}, {n}] into {dst_len} values"));
    }
    if !lhs.in_bounds() || !rhs.in_bounds() {
        return Err("matrix product: an operand's strides reach past its data".to_string());
    }
    Ok(())
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` with `accumulate`), `dst` row-major
/// `[lhs.rows, rhs.cols]`. Runs on rayon's current pool.
pub(crate) fn matmul_into(dst: &mut [f32], lhs: MatRef, rhs: MatRef, accumulate: bool) -> Result<(), String> {
    product_into(dst, lhs, rhs, accumulate, pool_parallelism())
}

/// [`matmul_into`] on the calling thread alone, without accumulating: for products that
/// are shared out over the pool one whole product per task.
pub(crate) fn matmul_into_here(dst: &mut [f32], lhs: MatRef, rhs: MatRef) -> Result<(), String> {
    product_into(dst, lhs, rhs, false, gemm::Parallelism::None)
}

/// Every thread of rayon's current pool, or none beside the caller's.
fn pool_parallelism() -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None }
}

fn product_into(
    dst: &mut [f32],
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) -> Result<(), String> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    check_operands(lhs, rhs, dst.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: `dst` holds exactly m x n values (checked above) and is borrowed mutably.
    unsafe { run_gemm(dst.as_mut_ptr(), lhs, rhs, accumulate, parallelism) };
    Ok(())
}

/// # Safety
/// `dst` points to m x n writable f32 (row-major, m, k, n > 0), initialised when
/// `accumulate` is set, and both operands passed [`check_operands`].
unsafe fn run_gemm(
    dst: *mut f32,
    lhs: MatRef,
    rhs: MatRef,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let stride = |value: usize| value as isize;
    // SAFETY: the caller guarantees `dst`; every element the kernel reads from `lhs` and
    // `rhs` lies inside their slices (`in_bounds`, with m, k, n > 0). gemm computes
    // dst = alpha·dst + beta·lhs·rhs and reads dst only when `read_dst` is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            stride(n),
            accumulate,
            lhs.data.as_ptr(),
            stride(lhs.col_stride),
            stride(lhs.row_stride),
            rhs.data.as_ptr(),
            stride(rhs.col_stride),
            stride(rhs.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(lhs: MatRef, rhs: MatRef) -> Vec<f32> {
        let at = |m: &MatRef, r: usize, c: usize| m.data[r * m.row_stride + c * m.col_stride];
        let mut out = vec![0.0; lhs.rows * rhs.cols];
        for r in 0..lhs.rows {
            for c in 0..rhs.cols {
                out[r * rhs.cols + c] = (0..lhs.cols).map(|i| at(&lhs, r, i) * at(&rhs, i, c)).sum();
            }
        }
        out
    }

    #[test]
    fn the_allocating_product_equals_the_one_into_a_buffer() {
        let lhs: Vec<f32> = (0..6 * 5).map(|value| value as f32 * 0.25 - 3.0).collect();
        let rhs: Vec<f32> = (0..5 * 7).map(|value| (value % 11) as f32 - 5.0).collect();
        let (lhs, rhs) = (MatRef::row_major(&lhs, 6, 5), MatRef::row_major(&rhs, 5, 7));
        let mut expected = vec![0.0; 6 * 7];
        matmul_into(&mut expected, lhs, rhs, false).unwrap();
        assert_eq!(matmul(lhs, rhs).unwrap(), expected);
        assert_eq!(matmul(lhs.t(), MatRef::row_major(&[0.0; 6], 6, 1)).unwrap(), vec![0.0; 5]);
        assert!(matmul(lhs, lhs).is_err(), "[6, 5] x [6, 5]");
    }

    #[test]
    fn strided_and_transposed_products_match_the_naive_loop() {
        let a: Vec<f32> = (0..35).map(|v| (v as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..28).map(|v| (v as f32 * 0.11).cos()).collect();
        let lhs = MatRef::row_major(&a, 5, 7);
        let rhs = MatRef::row_major(&b, 4, 7).t();
        let mut out = vec![0.0; 20];
        matmul_into(&mut out, lhs, rhs, false).unwrap();
        let expected = naive(lhs, rhs);
        for (x, y) in out.iter().zip(&expected) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        matmul_into(&mut out, lhs, rhs, true).unwrap();
        for (x, y) in out.iter().zip(&expected) {
            assert!((x - 2.0 * y).abs() < 1e-5, "{x} vs {y}");
        }
        let lhs_t = MatRef::row_major(&a, 7, 5).t();
        let mut out = vec![0.0; 5 * 5];
        matmul_into(&mut out, lhs_t, MatRef::row_major(&a, 7, 5), false).unwrap();
        assert_eq!(out.len(), 25);
    }

    #[test]
    fn the_transposing_product_equals_the_plain_one() {
        let d: Vec<f32> = (0..130 * 9).map(|v| ((v * 7 % 23) as f32 - 11.0) * 0.125).collect();
        let h: Vec<f32> = (0..130 * 5).map(|v| (v as f32 * 0.3).sin()).collect();
        // dᵀ · h with d [130, 9] and h [130, 5] (9 x 5, one block of rows), and with d
        // [130, 70] (70 x 5, two blocks).
        let (d_view, h_view) = (MatRef::row_major(&d, 130, 9), MatRef::row_major(&h, 130, 5));
        let close = |ours: Vec<f32>, expected: Vec<f32>| {
            assert_eq!(ours.len(), expected.len());
            for (x, y) in ours.iter().zip(&expected) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
        };
        close(matmul_transposing(d_view.t(), h_view).unwrap(), naive(d_view.t(), h_view));
        let wide: Vec<f32> = (0..130 * 70).map(|v| (v % 13) as f32 - 6.0).collect();
        let wide = MatRef::row_major(&wide, 130, 70);
        close(matmul_transposing(wide.t(), h_view).unwrap(), naive(wide.t(), h_view));
        assert!(matmul_transposing(d_view, h_view).is_err(), "[130, 9] x [130, 5]");
    }

    #[test]
    fn shapes_and_bounds_are_checked() {
        let a = vec![1.0; 6];
        let mut out = vec![0.0; 4];
        assert!(
            matmul_into(&mut out, MatRef::row_major(&a, 2, 3), MatRef::row_major(&a, 2, 3), false).is_err()
        );
        let short = MatRef::strided(&a, 3, 3, 3, 1);
        let mut out = vec![0.0; 9];
        assert!(matmul_into(&mut out, short, short, false).is_err());
    }
}
