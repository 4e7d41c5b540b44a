//! What the fused CPU kernels share: borrowing a tensor's f32 values, and the `gemm` crate's matrix product
//! (the kernels candle's own matmul runs, AVX-512 where the CPU has it).
//!
//! ```ignore
//! // Inside a kernel: C[m, n] = A[m, k] B[k, n], all row-major.
//! cpu::matmul(Mat::rows(&a, k), Mat::rows(&b, n), &mut c, (m, n, k), false, cpu::Threads::All);
//! ```

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Device, Layout, Storage, Tensor};

/// Whether the fused kernels cover `t`: f32 on the CPU. Elsewhere the ops run their composed forms.
pub(crate) fn covers(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == candle_core::DType::F32
}

/// The values of a contiguous f32 CPU storage under `layout`.
pub(crate) fn slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!(
            "fused kernel: expected f32 values, got {:?}",
            storage.dtype()
        );
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("fused kernel: the input must be contiguous"),
    }
}

/// Runs `f` on the values of `t`, made contiguous first (no copy where it already is).
pub(crate) fn with_values<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fused kernel: the tensor is not on the CPU");
    };
    f(slice(cpu, layout)?)
}

/// A row-major f32 tensor made from `values`.
pub(crate) fn tensor(values: Vec<f32>, dims: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values, dims, &Device::Cpu)
}

/// A matrix operand: its values and its row and column strides (a transposed view swaps them).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub(super) values: &'a [f32],
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix with `cols` columns.
    pub(crate) fn rows(values: &'a [f32], cols: usize) -> Self {
        Mat {
            values,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns, without moving any value.
    pub(crate) fn transposed(values: &'a [f32], cols: usize) -> Self {
        Mat {
            values,
            row_stride: 1,
            col_stride: cols,
        }
    }
}

/// How many threads a product may use: the kernels that already run one product per thread ask for one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// candle's thread count (`RAYON_NUM_THREADS`, else the cores).
    All,
    /// The calling thread only.
    One,
}

/// `out[m, n] (+)= a[m, k] b[k, n]`, `out` row-major; accumulates into `out` where `accumulate`.
pub(crate) fn matmul(
    a: Mat<'_>,
    b: Mat<'_>,
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    threads: Threads,
) {
    assert!(out.len() >= m * n, "gemm output too short");
    check_operands(&a, &b, (m, n, k));
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(feature = "openblas")]
    if threads == Threads::All && super::openblas::sgemm(a, b, out, (m, n, k), accumulate) {
        return;
    }
    // SAFETY: `check_operands` keeps every index the strides reach inside the slices, the assert above keeps
    // the output inside `out`, which is borrowed mutably for the call.
    unsafe { raw_gemm(a, b, out.as_mut_ptr(), n, (m, n, k), accumulate, threads) }
}

/// Panics unless every index the strides of `a` (`[m, k]`) and `b` (`[k, n]`) reach lies inside their slices.
fn check_operands(a: &Mat<'_>, b: &Mat<'_>, (m, n, k): (usize, usize, usize)) {
    let reach = |mat: &Mat<'_>, rows: usize, cols: usize| {
        rows == 0
            || cols == 0
            || (rows - 1) * mat.row_stride + (cols - 1) * mat.col_stride < mat.values.len()
    };
    assert!(reach(a, m, k) && reach(b, k, n), "gemm operand too short");
}

/// The `gemm` crate's product into `dst` with rows `dst_row_stride` apart.
///
/// # Safety
/// The operands were checked by [`check_operands`], `dst` is valid for `(m - 1) * dst_row_stride + n` values,
/// and nothing else reads or writes the output elements during the call.
unsafe fn raw_gemm(
    a: Mat<'_>,
    b: Mat<'_>,
    dst: *mut f32,
    dst_row_stride: usize,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    threads: Threads,
) {
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::All => match candle_core::utils::get_num_threads() {
            0 | 1 => gemm::Parallelism::None,
            t => gemm::Parallelism::Rayon(t),
        },
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_row_stride as isize,
        accumulate,
        a.values.as_ptr(),
        a.col_stride as isize,
        a.row_stride as isize,
        b.values.as_ptr(),
        b.col_stride as isize,
        b.row_stride as isize,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

// ---- Added for the attention and cross-entropy kernels. ----

impl<'a> Mat<'a> {
    /// A matrix whose element `(i, j)` is `values[i * row_stride + j * col_stride]`: a view into a larger
    /// tensor (one head of `[B, T, H, D]`, say) without copying it.
    pub(crate) fn strided(values: &'a [f32], row_stride: usize, col_stride: usize) -> Self {
        Mat {
            values,
            row_stride,
            col_stride,
        }
    }
}

/// An output buffer that several rayon tasks write at once, each into elements no other task touches (one
/// head's columns of `[B, T, H * D]`, say), which `&mut` slices cannot express.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: the pointer comes from a `&'a mut [f32]` held for `'a`; the writers (`matmul_to`) promise to touch
// disjoint elements, so sharing it between threads races on nothing.
unsafe impl Send for SharedOut<'_> {}
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    /// Shares `out` for the lifetime of the borrow.
    pub(crate) fn new(out: &'a mut [f32]) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _borrow: std::marker::PhantomData,
        }
    }
}

/// `out[offset + i * row_stride + j] (+)= (a b)[i, j]` for the `[m, n]` product of `a[m, k]` and `b[k, n]`.
///
/// # Safety
/// No other thread may read or write those `m x n` elements of `out` during the call (bounds are checked).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_to(
    a: Mat<'_>,
    b: Mat<'_>,
    out: SharedOut<'_>,
    offset: usize,
    row_stride: usize,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    threads: Threads,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= row_stride || m == 1, "gemm output rows overlap");
    assert!(
        offset + (m - 1) * row_stride + n <= out.len,
        "gemm output too short"
    );
    check_operands(&a, &b, (m, n, k));
    // SAFETY: the asserts keep every index inside the buffers; the caller guarantees exclusive access to the
    // output elements written.
    raw_gemm(
        a,
        b,
        out.ptr.add(offset),
        row_stride,
        (m, n, k),
        accumulate,
        threads,
    )
}

/// `e^x` in f32 without a branch, so that loops over slices vectorise. Relative error below 2e-7 (2 ulp)
/// for `x` in `[-87.3, 88.3]`; 0 below that (where `e^x` is subnormal), saturating above (callers pass values
/// minus a row maximum, so `x <= 0`); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOW: f32 = -87.3;
    const HIGH: f32 = 88.3;
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: i32 = 0x4B40_0000;
    // ln 2 in two parts: `n * LN2_HI` is exact for |n| <= 128 (LN2_HI has 11 significant bits).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(LOW, HIGH);
    // e^x = 2^n e^r with n = round(x / ln 2) and |r| <= ln 2 / 2.
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // Taylor series to r^7: truncation error below 6e-9 on |r| <= 0.35.
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let two_n = f32::from_bits(((t.to_bits() as i32 - ROUND_BITS + 127) << 23) as u32);
    let y = if x < LOW { 0.0 } else { p * two_n };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// Lanes of the running reductions below: independent accumulators let the compiler vectorise a sum (a
/// single f32 accumulator would force strict left-to-right order); the order stays fixed, so results are
/// reproducible.
const LANES: usize = 16;

/// The largest value of `values` (`-inf` for none).
#[inline(always)]
pub(crate) fn max(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let m = acc
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    rest.iter().fold(m, |m, &v| if v > m { v } else { m })
}

/// `sum_j e^(values[j] - shift)`.
#[inline(always)]
pub(crate) fn sum_exp(values: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp(v - shift);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&v| exp(v - shift)).sum::<f32>()
}

/// Replaces each value by `e^(value - shift)` and returns their sum.
#[inline(always)]
pub(crate) fn exp_in_place(values: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = values.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *v = exp(*v - shift);
            *a += *v;
        }
    }
    let mut total = acc.iter().sum::<f32>();
    for v in chunks.into_remainder() {
        *v = exp(*v - shift);
        total += *v;
    }
    total
}

/// `sum_j a[j] * b[j]` over the shorter of the two.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// Defines a function whose body is compiled three times, for AVX-512, for AVX2 and for the baseline x86-64
/// (SSE2), and runs the widest build the CPU has (the check is a cached load). The crate is built for the
/// baseline, so loops such as [`exp`] over a row would otherwise use 4 lanes instead of 16. Results do not
/// depend on the build: Rust never fuses `a * b + c`, and the reductions above fix their order. The body is an
/// `#[inline(always)]` function, so it is compiled into each build (a closure passed to [`vectorised`] may
/// stay out of line, compiled for the baseline). Wrap the per-task work, not a function that spawns rayon
/// tasks: the tasks' closures are compiled on their own, for the baseline.
///
/// ```ignore
/// cpu::simd_fn! {
///     /// Doubles every value.
///     fn double(x: &mut [f32]) { x.iter_mut().for_each(|v| *v *= 2.0) }
/// }
/// ```
macro_rules! simd_fn {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                {
                    // SAFETY: the CPU has the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// A rayon pool of `threads` threads, for the kernels' tests that results do not depend on the thread count.
#[cfg(test)]
pub(crate) fn test_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_with_transposed_operands_and_accumulation() {
        // a = [[1, 2], [3, 4]], b = [[5, 6], [7, 8]]
        let a = [1f32, 2., 3., 4.];
        let b = [5f32, 6., 7., 8.];
        let mut c = vec![0f32; 4];
        matmul(
            Mat::rows(&a, 2),
            Mat::rows(&b, 2),
            &mut c,
            (2, 2, 2),
            false,
            Threads::All,
        );
        assert_eq!(c, vec![19., 22., 43., 50.]);
        // a^T b = [[1*5+3*7, 1*6+3*8], [2*5+4*7, 2*6+4*8]], added to the previous result
        matmul(
            Mat::transposed(&a, 2),
            Mat::rows(&b, 2),
            &mut c,
            (2, 2, 2),
            true,
            Threads::One,
        );
        assert_eq!(c, vec![19. + 26., 22. + 30., 43. + 38., 50. + 44.]);
        // a b^T = [[1*5+2*6, 1*7+2*8], [3*5+4*6, 3*7+4*8]]
        matmul(
            Mat::rows(&a, 2),
            Mat::transposed(&b, 2),
            &mut c,
            (2, 2, 2),
            false,
            Threads::One,
        );
        assert_eq!(c, vec![17., 23., 39., 53.]);
    }
}

#[cfg(test)]
mod reduction_tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate_over_its_range() {
        let mut worst = 0f64;
        let mut at = 0f32;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = -87.3f32 + (88.3 + 87.3) * (i as f32 / steps as f32);
            let exact = (x as f64).exp();
            let rel = ((exp(x) as f64 - exact) / exact).abs();
            if rel > worst {
                worst = rel;
                at = x;
            }
        }
        assert!(worst < 2e-7, "relative error {worst:e} at {at}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1e9).is_finite());
    }

    #[test]
    fn reductions_match_plain_loops() {
        // 37 values: two full lanes of 16 and a remainder of 5.
        let v: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 23) as f32 * 0.37 - 4.0)
            .collect();
        let w: Vec<f32> = (0..37)
            .map(|i| ((i * 104_729) % 17) as f32 * 0.11 - 1.0)
            .collect();
        let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&v), m);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let s: f64 = v.iter().map(|&x| ((x - m) as f64).exp()).sum();
        assert!((sum_exp(&v, m) as f64 - s).abs() < 1e-5 * s);
        let mut e = v.clone();
        let total = exp_in_place(&mut e, m);
        assert!((total as f64 - s).abs() < 1e-5 * s);
        for (x, y) in v.iter().zip(&e) {
            assert!((((x - m) as f64).exp() - *y as f64).abs() < 1e-6);
        }
        let d: f64 = v.iter().zip(&w).map(|(a, b)| (a * b) as f64).sum();
        assert!((dot(&v, &w) as f64 - d).abs() < 1e-4);
    }

    #[test]
    fn strided_product_into_a_shared_buffer() {
        // a = [[1, 2], [3, 4]] written into columns 1..3 of a [2, 4] buffer: a * I.
        let a = [1f32, 2., 3., 4.];
        let id = [1f32, 0., 0., 1.];
        let mut out = vec![0f32; 8];
        // SAFETY: one writer.
        unsafe {
            matmul_to(
                Mat::rows(&a, 2),
                Mat::strided(&id, 2, 1),
                SharedOut::new(&mut out),
                1,
                4,
                (2, 2, 2),
                false,
                Threads::One,
            );
        }
        assert_eq!(out, vec![0., 1., 2., 0., 0., 3., 4., 0.]);
    }
}

// ---- Added for the norm and activation kernels. ----

/// Runs `f` compiled for the widest vector unit the CPU has: AVX-512, else AVX2, else the build's baseline
/// (SSE2 on x86-64 without `-C target-cpu`), so that its loops vectorise 16 (8) lanes wide instead of 4. No
/// fused multiply-add is formed (Rust never contracts `a * b + c`), so every path gives the same bits.
///
/// Only code inlined into the feature-specific copies gets the wide instructions, and the compiler does not
/// inline a large closure called from three places on its own: pass `#[inline(always)] || ...` (allowed on a
/// closure in argument position), and make what it calls `#[inline(always)]` too, closures included. Without
/// that, `f` runs at the baseline (correct, four lanes).
#[inline(always)]
pub(crate) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512bw")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { avx512(f) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { avx2(f) };
        }
    }
    f()
}
