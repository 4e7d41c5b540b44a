//! The bf16 products on AVX-512 BF16: `vdpbf16ps` multiplies 16 lanes of bf16 pairs and adds both products
//! to f32 accumulators, twice the multiply-adds of an f32 FMA per instruction.
//!
//! The GEMM packs both operands per call (O(mk + nk) against the product's O(mnk)): the activations rounded
//! to bf16 pairs row by row (`vcvtne2ps2bf16`, rows padded with zeros to whole [`MR`]-row tiles), the weight
//! in panels of [`NR`] columns ([`super::pack`]). Each `MR x NR` output tile keeps its 24 accumulators in
//! registers while a block of [`KC`] pairs streams through: per pair, two loads of the weight panel and `MR`
//! broadcasts of an activation pair feed 24 `vdpbf16ps`. A few rows (a decoding step) skip the packing: dot
//! products straight from the weight's rows.
//!
//! ```ignore
//! // out[m, n] += x[m, k] W[n, k]^T, W bf16 row-major, on every thread.
//! avx512::gemm(&x, Operand::Transposed(&w), &mut out, (m, n, k), Threads::All);
//! ```

use std::arch::x86_64::*;
use std::cell::Cell;
use std::ops::Range;

use half::bf16;
use rayon::prelude::*;

use super::pack::{self, NR};
use super::Operand;
use crate::cpu::Threads;

/// Rows of an output tile: 12 rows x 2 vectors = 24 accumulators, 2 weight vectors and a broadcast of the 32
/// registers.
const MR: usize = 12;

/// Pairs of the reduced dimension per block: a weight micro-panel (`KC * NR` pairs, 24 KB) stays in L1
/// while the row panels of a task stream past it.
const KC: usize = 192;

/// Row panels and column panels of one parallel task at most (96 rows x 256 columns).
const TASK_ROW_PANELS: usize = 8;
const TASK_COL_PANELS: usize = 8;

/// Output columns per task of the few-rows product.
const DOT_COLUMNS: usize = 64;

/// Whether this CPU runs the kernels of this file.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

/// Whether this CPU's `vdpbf16ps` outruns its f32 FMAs, so that these kernels beat widening the weight to
/// f32: AMD's cores (Zen 4 and later) issue it at the FMA's rate, two products per lane, and the kernel ran
/// the MLP blocks and LM head of SmolLM2 1.5x faster than f32 there. Intel's (Cooper Lake to Granite Rapids)
/// issue it on one port, half the FMA rate, which leaves the same products per cycle as f32 and the
/// rounding and packing on top: on a Xeon with AVX-512 BF16 and AMX, SmolLM2's up_proj forward took 9.8 ms
/// here against 6.7 ms widened. Decided by the CPUID vendor string.
pub(crate) fn outruns_f32() -> bool {
    // CPUID leaf 0 (the vendor string) exists on every x86-64 CPU.
    let leaf = std::arch::x86_64::__cpuid(0);
    let vendor = [leaf.ebx, leaf.edx, leaf.ecx]
        .map(u32::to_le_bytes)
        .concat();
    vendor == b"AuthenticAMD"
}

/// The lanes below `count` (at most 16).
#[inline(always)]
fn mask16(count: usize) -> __mmask16 {
    ((1u32 << count.min(16)) - 1) as __mmask16
}

/// [`pack::round_pairs`] with `vcvtne2ps2bf16`, 32 values per instruction.
///
/// # Safety
/// The CPU has the features of [`available`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn round_pairs(src: &[f32], dst: &mut [u32]) {
    assert_eq!(dst.len(), src.len().div_ceil(2), "round_pairs lengths");
    let (whole, rest) = src.split_at(src.len() / 32 * 32);
    let (dst_whole, dst_rest) = dst.split_at_mut(whole.len() / 2);
    for (c, o) in whole.chunks_exact(32).zip(dst_whole.chunks_exact_mut(16)) {
        let lo = _mm512_loadu_ps(c.as_ptr());
        let hi = _mm512_loadu_ps(c.as_ptr().add(16));
        let bh: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(o.as_mut_ptr().cast(), bh);
    }
    if !rest.is_empty() {
        // Masked loads read nothing past the slice and give zeros there, which pad an odd length.
        let r = rest.len();
        let lo = _mm512_maskz_loadu_ps(mask16(r), rest.as_ptr());
        let hi =
            _mm512_maskz_loadu_ps(mask16(r.saturating_sub(16)), rest.as_ptr().wrapping_add(16));
        let bh: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_mask_storeu_epi32(dst_rest.as_mut_ptr().cast(), mask16(dst_rest.len()), bh);
    }
}

/// The rows of `x` (`k` values each) rounded to bf16 pairs, `k.div_ceil(2)` per row.
///
/// # Safety
/// The CPU has the features of [`available`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round_rows(x: &[f32], k: usize, dst: &mut [u32]) {
    for (row, d) in x.chunks_exact(k).zip(dst.chunks_exact_mut(k.div_ceil(2))) {
        round_pairs(row, d);
    }
}

/// Column panel `j` of `b` (`[k, n]`): the packing of [`super::pack`], compiled here for AVX-512 so that its
/// loops run 16 lanes wide.
///
/// # Safety
/// The CPU has the features of [`available`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pack_col_panel(b: Operand<'_>, n: usize, k: usize, j: usize, dst: &mut [u32]) {
    match b {
        // An even k is a matrix of whole pairs, transposed in registers (`super::transpose`).
        Operand::Transposed(w) if k.is_multiple_of(2) => {
            super::transpose::panel_along_rows(w, n, k, j, dst)
        }
        Operand::Transposed(w) => pack::panel_along_rows(w, n, k, j, dst),
        Operand::Rows(w) => pack::panel_along_columns(w, k, n, j, dst),
    }
}

/// `c[rows, cols] += a . b-panel` over `pairs` pairs, for `MR` rows of `a` (pairs, rows `lda` apart) and
/// `c` with rows `ldc` apart; the tile is `MR x NR` in registers, rows past `rows` and columns past `cols` of
/// `c` are neither read nor written.
///
/// # Safety
/// The CPU has the features of [`available`]; `a` holds `MR` rows of `pairs` values `lda` apart, `b` holds
/// `pairs * NR`; `c` is valid for `rows` rows of `cols` values and nothing else touches them during the call.
// Raw pointers and extents, as the microkernel's registers take them.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile(
    a: *const u32,
    lda: usize,
    b: *const u32,
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let (m0, m1) = (mask16(cols), mask16(cols.saturating_sub(16)));
    // Constant trip counts and masks instead of `rows`-long loops: every accumulator index is a constant, so
    // the 24 accumulators stay in registers. A masked-out row is neither read nor written.
    let mut row_masks: [(__mmask16, __mmask16); MR] = [(0, 0); MR];
    row_masks[..rows.min(MR)].fill((m0, m1));
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for i in 0..MR {
        let p = c.wrapping_add(i * ldc);
        acc[i][0] = _mm512_maskz_loadu_ps(row_masks[i].0, p);
        acc[i][1] = _mm512_maskz_loadu_ps(row_masks[i].1, p.wrapping_add(16));
    }
    for p in 0..pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
        let ap = a.add(p);
        for (i, r) in acc.iter_mut().enumerate() {
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i * lda) as i32));
            r[0] = _mm512_dpbf16_ps(r[0], x, b0);
            r[1] = _mm512_dpbf16_ps(r[1], x, b1);
        }
    }
    for i in 0..MR {
        let p = c.wrapping_add(i * ldc);
        _mm512_mask_storeu_ps(p, row_masks[i].0, acc[i][0]);
        _mm512_mask_storeu_ps(p.wrapping_add(16), row_masks[i].1, acc[i][1]);
    }
}

/// The output `[m, n]` that parallel tasks write, each its own tiles.
#[derive(Clone, Copy)]
pub(super) struct Out {
    pub(super) ptr: *mut f32,
    pub(super) m: usize,
    pub(super) n: usize,
}

// SAFETY: the tasks that share it write disjoint tiles (see `gemm`), and `gemm` holds the `&mut` it came from
// until they are done.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// The packed operands of one product.
struct Packed<'a> {
    a: &'a [u32],
    b: &'a [u32],
    pairs: usize,
}

/// Row panels `rp` and column panels `cp` of the output: blocks of [`KC`] pairs, each weight micro-panel held
/// while the row panels pass.
///
/// # Safety
/// The CPU has the features of [`available`]; no other thread touches these tiles of `out` meanwhile.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn task(packed: &Packed<'_>, out: Out, rp: Range<usize>, cp: Range<usize>) {
    let pairs = packed.pairs;
    let blocks = pairs.div_ceil(KC).max(1);
    // Equal blocks: 288 pairs are two blocks of 144, not 192 + 96.
    let block = pairs.div_ceil(blocks);
    for start in (0..pairs).step_by(block.max(1)) {
        let len = block.min(pairs - start);
        for j in cp.clone() {
            let b = packed.b.as_ptr().add(j * pairs * NR + start * NR);
            let cols = NR.min(out.n - j * NR);
            for i in rp.clone() {
                let a = packed.a.as_ptr().add(i * MR * pairs + start);
                let rows = MR.min(out.m - i * MR);
                let c = out.ptr.add(i * MR * out.n + j * NR);
                tile(a, pairs, b, len, c, out.n, rows, cols);
            }
        }
    }
}

thread_local! {
    /// The packing buffers of the last product on this thread, reused: fresh multi-megabyte buffers on every
    /// call cost more in page faults than the packing itself. Taken out while a product runs, so that a
    /// product nested in another's rayon tasks finds none and allocates its own.
    pub(super) static BUFFERS: Cell<(Vec<u32>, Vec<u32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// The first `len` values of `buf`, grown (with zeros) where it is shorter; the values are stale.
pub(super) fn prefix(buf: &mut Vec<u32>, len: usize) -> &mut [u32] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// Runs `f(i, chunk)` for the chunks of `size` values of `data`, on the rayon pool where `threads` allows.
pub(super) fn for_each_chunk<T: Send>(
    threads: Threads,
    data: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) + Send + Sync,
) {
    match threads {
        Threads::One => data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c)),
        Threads::All => data
            .par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c)),
    }
}

/// Runs `f(row panels, column panels)` over a grid of `rows x cols` output panels split into tasks of at most
/// `limits` panels each way, on the rayon pool where `threads` allows: enough tasks for every thread to get
/// several (balance), the tasks disjoint.
pub(super) fn for_each_task(
    threads: Threads,
    (rows, cols): (usize, usize),
    (max_rows, max_cols): (usize, usize),
    f: impl Fn(Range<usize>, Range<usize>) + Send + Sync,
) {
    let workers = match threads {
        Threads::One => 1,
        Threads::All => rayon::current_num_threads().max(1),
    };
    let rows_per = max_rows.min(rows).max(1);
    let row_tasks = rows.div_ceil(rows_per);
    let col_splits = (4 * workers).div_ceil(row_tasks).max(1);
    let cols_per = cols.div_ceil(col_splits).clamp(1, max_cols);
    let col_tasks = cols.div_ceil(cols_per);
    let run = |t: usize| {
        let (ct, rt) = (t / row_tasks, t % row_tasks);
        let rp = rt * rows_per..((rt + 1) * rows_per).min(rows);
        let cp = ct * cols_per..((ct + 1) * cols_per).min(cols);
        f(rp, cp)
    };
    match threads {
        Threads::One => (0..row_tasks * col_tasks).for_each(run),
        Threads::All => (0..row_tasks * col_tasks).into_par_iter().for_each(run),
    }
}

/// `out[m, n] += a[m, k] B[k, n]` with `a` f32 (rounded to bf16) and `B` the bf16 `operand`.
///
/// Panics unless this CPU has the features of [`available`] and the slices hold the shapes.
pub(crate) fn gemm(
    a: &[f32],
    b: Operand<'_>,
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    threads: Threads,
) {
    assert!(available(), "the avx512-bf16 kernel on a CPU without it");
    assert!(
        a.len() >= m * k && b.values().len() >= n * k && out.len() >= m * n,
        "bf16 gemm operands too short"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let pairs = k.div_ceil(2);
    let (row_panels, col_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let (mut a_buf, mut b_buf) = BUFFERS.take();
    let a_packed = prefix(&mut a_buf, row_panels * MR * pairs);
    // Every value is written: rows `0..m` here, the padding rows up to whole tiles zero.
    for_each_chunk(threads, a_packed, MR * pairs, |i, dst| {
        let x = &a[i * MR * k..((i + 1) * MR).min(m) * k];
        // SAFETY: `available` was checked above.
        unsafe { round_rows(x, k, dst) };
        dst[x.len() / k * pairs..].fill(0);
    });
    let b_packed = prefix(&mut b_buf, col_panels * pairs * NR);
    // SAFETY: `available` was checked above (every value is written).
    for_each_chunk(threads, b_packed, pairs * NR, |j, dst| unsafe {
        pack_col_panel(b, n, k, j, dst)
    });
    let packed = Packed {
        a: a_packed,
        b: b_packed,
        pairs,
    };

    let out = Out {
        ptr: out.as_mut_ptr(),
        m,
        n,
    };
    let limits = (TASK_ROW_PANELS, TASK_COL_PANELS);
    for_each_task(threads, (row_panels, col_panels), limits, |rp, cp| {
        // SAFETY: `available` was checked; tasks cover disjoint row x column panels of `out`, whose `&mut`
        // borrow `gemm` holds until `for_each_task` returns.
        unsafe { task(&packed, out, rp, cp) }
    });
    BUFFERS.set((a_buf, b_buf));
}

/// `block[c * m + i] += x-row i . w-row c` for up to `R` rows of `xr` (pairs, rows `stride` apart, padded
/// to whole vectors with zeros) and the rows of `w` (`k` values each).
///
/// # Safety
/// The CPU has the features of [`available`]; `xr` holds `R` rows of `stride >= 16 * ceil(k / 32)` pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn dots<const R: usize>(
    xr: &[u32],
    stride: usize,
    w: &[bf16],
    k: usize,
    block: &mut [f32],
    m: usize,
    first_row: usize,
) {
    assert!(xr.len() >= R * stride && stride * 2 >= k.div_ceil(32) * 32);
    let whole = k / 32;
    let tail = (1u64 << (k % 32)) - 1;
    for (c, row) in w.chunks_exact(k).enumerate() {
        let mut acc = [_mm512_setzero_ps(); R];
        let wp = row.as_ptr().cast::<i16>();
        for v in 0..whole {
            let wv: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(32 * v).cast()));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_si512(xr.as_ptr().add(i * stride + 16 * v).cast());
                *a = _mm512_dpbf16_ps(*a, std::mem::transmute::<__m512i, __m512bh>(xv), wv);
            }
        }
        if tail != 0 {
            // The masked load stops at the row's end (the next row, or the slice's end).
            let wv = _mm512_maskz_loadu_epi16(tail as __mmask32, wp.add(32 * whole));
            let wv: __m512bh = std::mem::transmute(wv);
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_si512(xr.as_ptr().add(i * stride + 16 * whole).cast());
                *a = _mm512_dpbf16_ps(*a, std::mem::transmute::<__m512i, __m512bh>(xv), wv);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            block[c * m + first_row + i] += _mm512_reduce_add_ps(*a);
        }
    }
}

/// `out[m, n] += x[m, k] w[n, k]^T` for a few rows: each weight row read once, in L1 while every input row
/// takes its dot product (no packing of the weight).
///
/// Panics unless this CPU has the features of [`available`] and the slices hold the shapes.
pub(crate) fn few_rows(
    x: &[f32],
    w: &[bf16],
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    threads: Threads,
) {
    assert!(available(), "the avx512-bf16 kernel on a CPU without it");
    assert!(
        x.len() >= m * k && w.len() >= n * k && out.len() >= m * n,
        "bf16 product operands too short"
    );
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let stride = k.div_ceil(32) * 16;
    let mut xr = vec![0u32; m * stride];
    for (row, dst) in x.chunks_exact(k).zip(xr.chunks_exact_mut(stride)) {
        // SAFETY: `available` was checked above.
        unsafe { round_pairs(row, &mut dst[..k.div_ceil(2)]) };
    }
    // Column-major, each task its own output columns; added into the row-major output after.
    let mut columns = vec![0f32; n * m];
    let run = |(block, w): (&mut [f32], &[bf16])| {
        let mut i = 0;
        // SAFETY (all three): `available` was checked; `xr` holds the rows from `i` on, `stride` pairs each.
        while i + 4 <= m {
            unsafe { dots::<4>(&xr[i * stride..], stride, w, k, block, m, i) };
            i += 4;
        }
        if i + 2 <= m {
            unsafe { dots::<2>(&xr[i * stride..], stride, w, k, block, m, i) };
            i += 2;
        }
        if i < m {
            unsafe { dots::<1>(&xr[i * stride..], stride, w, k, block, m, i) };
        }
    };
    let w = &w[..n * k];
    match threads {
        Threads::One => columns
            .chunks_mut(DOT_COLUMNS * m)
            .zip(w.chunks(DOT_COLUMNS * k))
            .for_each(run),
        Threads::All => columns
            .par_chunks_mut(DOT_COLUMNS * m)
            .zip(w.par_chunks(DOT_COLUMNS * k))
            .for_each(run),
    }
    for (i, row) in out.chunks_exact_mut(n).take(m).enumerate() {
        for (j, o) in row.iter_mut().enumerate() {
            *o += columns[j * m + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn vector_rounding_equals_the_scalar_rounding_bit_for_bit() {
        if !available() {
            eprintln!("skipped: this CPU has no avx512bf16");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut values: Vec<f32> = (0..4096).map(|_| f32::from_bits(rng.random())).collect();
        values.extend([
            0.0,
            -0.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(1),
            f32::from_bits(0x807f_ffff),
            f32::MIN_POSITIVE,
        ]);
        // Every tail length: whole vectors, masked ones, odd lengths.
        for len in (0..70).chain([values.len()]) {
            let src = &values[values.len() - len..];
            let mut want = vec![0u32; len.div_ceil(2)];
            pack::round_pairs(src, &mut want);
            let mut got = vec![0u32; len.div_ceil(2)];
            // SAFETY: `available` was checked.
            unsafe { round_pairs(src, &mut got) };
            assert_eq!(got, want, "length {len}");
        }
    }
}
