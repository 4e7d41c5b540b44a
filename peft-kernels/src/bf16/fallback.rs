//! The bf16 products on CPUs without AVX-512 BF16: the activations rounded to bf16 (as the vector kernel
//! rounds them) and kept in f32, the weight widened to f32 in blocks of at most [`BLOCK_VALUES`] values (so no
//! f32 copy of a large weight is held), then the crate's f32 GEMM. Every product of two bf16 values is exact
//! in f32, so this computes what [`super::avx512`] computes, up to the order of the f32 sums.
//!
//! ```ignore
//! // out[m, n] += x[m, k] W[n, k]^T, W bf16 row-major, on every thread.
//! fallback::gemm(&x, Operand::Transposed(&w), &mut out, (m, n, k), Threads::All);
//! ```

use std::cell::Cell;

use half::bf16;
use rayon::prelude::*;

use super::pack;
use super::Operand;
use crate::cpu::{self, Mat, SharedOut, Threads};

/// The most weight values widened at once (4 MB of f32).
pub(super) const BLOCK_VALUES: usize = 1 << 20;

/// Values widened per parallel task.
const WIDEN_TASK: usize = 1 << 14;

/// Output columns per task of the few-rows product.
const DOT_COLUMNS: usize = 64;

cpu::simd_fn! {
    /// `dst[i] = src[i]` rounded to bf16, in f32.
    fn round_into(src: &[f32], dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = pack::rounded(s));
    }
}

cpu::simd_fn! {
    /// `dst[i] = src[i]` in f32 (exact).
    pub(super) fn widen_into(src: &[bf16], dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = pack::widen(s.to_bits()));
    }
}

thread_local! {
    /// The buffers of the last product on this thread (the rounded input, a widened weight block), reused:
    /// fresh multi-megabyte buffers on every call cost more in page faults than filling them. Taken out while
    /// a product runs, so that a product nested in another's rayon tasks allocates its own.
    static BUFFERS: Cell<(Vec<f32>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// `f` applied to `src` and `buf` resized to its length, in chunks on the rayon pool where `threads` allows;
/// returns the filled values.
fn convert<'b, T: Sync>(
    src: &[T],
    buf: &'b mut Vec<f32>,
    threads: Threads,
    f: impl Fn(&[T], &mut [f32]) + Send + Sync,
) -> &'b [f32] {
    buf.resize(src.len(), 0.0);
    match threads {
        Threads::One => f(src, buf),
        Threads::All => buf
            .par_chunks_mut(WIDEN_TASK)
            .zip(src.par_chunks(WIDEN_TASK))
            .for_each(|(d, s)| f(s, d)),
    }
    buf
}

/// The row ranges of a `[rows, cols]` weight widened one after the other.
fn row_blocks(rows: usize, cols: usize) -> impl Iterator<Item = (usize, usize)> {
    let per = (BLOCK_VALUES / cols.max(1)).max(1);
    (0..rows)
        .step_by(per)
        .map(move |r| (r, (r + per).min(rows)))
}

/// `out[m, n] += a[m, k] B[k, n]` with `a` f32 (rounded to bf16) and `B` the bf16 `operand`.
pub(crate) fn gemm(
    a: &[f32],
    b: Operand<'_>,
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    threads: Threads,
) {
    assert!(
        a.len() >= m * k && b.values().len() >= n * k && out.len() >= m * n,
        "bf16 gemm operands too short"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (mut a_buf, mut w_buf) = BUFFERS.take();
    let a = convert(&a[..m * k], &mut a_buf, threads, round_into);
    match b {
        // W [n, k]: each block of W's rows fills its own columns of the output.
        Operand::Transposed(w) => {
            let shared = SharedOut::new(out);
            for (start, end) in row_blocks(n, k) {
                let wf = convert(&w[start * k..end * k], &mut w_buf, threads, widen_into);
                // SAFETY: this thread is the only writer (the GEMM's threads split the block it is given);
                // the block writes columns `start..end` of the `m` rows, `n` apart.
                unsafe {
                    cpu::matmul_to(
                        Mat::rows(a, k),
                        Mat::transposed(wf, k),
                        shared,
                        start,
                        n,
                        (m, end - start, k),
                        true,
                        threads,
                    );
                }
            }
        }
        // W [k, n]: each block of W's rows adds its share of the reduction.
        Operand::Rows(w) => {
            for (start, end) in row_blocks(k, n) {
                let wf = convert(&w[start * n..end * n], &mut w_buf, threads, widen_into);
                cpu::matmul(
                    Mat::strided(&a[start..], k, 1),
                    Mat::rows(wf, n),
                    out,
                    (m, n, end - start),
                    true,
                    threads,
                );
            }
        }
    }
    BUFFERS.set((a_buf, w_buf));
}

/// `sum_j a[j] * b[j]` with `b` widened as it is read; 16 running sums in a fixed order.
#[inline(always)]
fn dot(a: &[f32], b: &[bf16]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * pack::widen(y.to_bits());
        }
    }
    acc.iter().sum::<f32>()
        + ra.iter()
            .zip(rb)
            .map(|(x, y)| x * pack::widen(y.to_bits()))
            .sum::<f32>()
}

cpu::simd_fn! {
    /// `block[c * m + i] = x-row i . w-row c` for the weight rows `w` (`[cols, k]`).
    fn dot_block(x: &[f32], w: &[bf16], block: &mut [f32], m: usize, k: usize) {
        for (c, out) in block.chunks_exact_mut(m).enumerate() {
            let row = &w[c * k..(c + 1) * k];
            for (i, o) in out.iter_mut().enumerate() {
                *o = dot(&x[i * k..(i + 1) * k], row);
            }
        }
    }
}

/// `out[m, n] += x[m, k] w[n, k]^T` for a few rows: dot products straight from the bf16 weight, widened as
/// it is read, instead of widening the whole weight for a product of a few rows.
pub(crate) fn few_rows(
    x: &[f32],
    w: &[bf16],
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    threads: Threads,
) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && out.len() >= m * n,
        "bf16 product operands too short"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let mut x_buf = Vec::new();
    let x = convert(&x[..m * k], &mut x_buf, Threads::One, round_into);
    let w = &w[..n * k];
    let mut columns = vec![0f32; n * m];
    match threads {
        Threads::One => columns
            .chunks_mut(DOT_COLUMNS * m)
            .zip(w.chunks(DOT_COLUMNS * k))
            .for_each(|(block, w)| dot_block(x, w, block, m, k)),
        Threads::All => columns
            .par_chunks_mut(DOT_COLUMNS * m)
            .zip(w.par_chunks(DOT_COLUMNS * k))
            .for_each(|(block, w)| dot_block(x, w, block, m, k)),
    }
    for (i, row) in out.chunks_exact_mut(n).take(m).enumerate() {
        for (j, o) in row.iter_mut().enumerate() {
            *o += columns[j * m + i];
        }
    }
}
