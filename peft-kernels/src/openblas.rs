//! The system OpenBLAS's `cblas_sgemm` behind the cargo feature `openblas` (link `libopenblas`; Debian's
//! `libopenblas-dev`). [`super::cpu::matmul`] sends the products that may use every thread here; the per-head
//! products of attention, which already run one per thread, stay on the `gemm` crate so that OpenBLAS's own
//! threads do not compete with rayon's.
//!
//! ```ignore
//! // Only with `--features openblas`; the same call as without it.
//! cpu::matmul(Mat::rows(&a, k), Mat::rows(&b, n), &mut c, (m, n, k), false, Threads::All);
//! ```

use std::os::raw::{c_float, c_int};
use std::sync::Once;

use super::cpu::Mat;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

#[link(name = "openblas")]
extern "C" {
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: c_float,
        a: *const c_float,
        lda: c_int,
        b: *const c_float,
        ldb: c_int,
        beta: c_float,
        c: *mut c_float,
        ldc: c_int,
    );
    fn openblas_set_num_threads(n: c_int);
    fn openblas_get_corename() -> *const std::os::raw::c_char;
}

/// The CPU kernel set OpenBLAS chose (`Prescott` is its generic fallback: on a CPU it does not recognise, set
/// `OPENBLAS_CORETYPE`, e.g. `SKYLAKEX`, or it runs several times slower than the `gemm` crate).
pub(super) fn core_name() -> String {
    // SAFETY: OpenBLAS returns a static NUL-terminated string.
    unsafe {
        let name = openblas_get_corename();
        if name.is_null() {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}

/// OpenBLAS uses as many threads as candle (`RAYON_NUM_THREADS`, else every core).
fn set_threads() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let n = candle_core::utils::get_num_threads().max(1);
        // SAFETY: a plain setter of OpenBLAS's thread count, called once before any product.
        unsafe { openblas_set_num_threads(n as c_int) };
    });
}

/// How cblas reads a `[rows, cols]` operand: transposed or not, and its leading dimension, which cblas
/// requires to be at least the row length it reads (a one-column matrix stored with stride 1 does not
/// qualify as untransposed row-major, but does as a transposed one). `None` for strides cblas cannot take.
fn operand(mat: &Mat<'_>, rows: usize, cols: usize) -> Option<(c_int, c_int)> {
    if mat.col_stride == 1 || cols == 1 {
        let ld = if rows == 1 { cols } else { mat.row_stride };
        if ld >= cols.max(1) {
            return Some((NO_TRANS, ld as c_int));
        }
    }
    if mat.row_stride == 1 || rows == 1 {
        let ld = if cols == 1 { rows } else { mat.col_stride };
        if ld >= rows.max(1) {
            return Some((TRANS, ld as c_int));
        }
    }
    None
}

/// `out[m, n] (+)= a[m, k] b[k, n]` through `cblas_sgemm`; the caller has checked the operand lengths.
/// Returns false, computing nothing, where an operand's strides are not a cblas layout.
pub(super) fn sgemm(
    a: Mat<'_>,
    b: Mat<'_>,
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) -> bool {
    let (Some((trans_a, lda)), Some((trans_b, ldb))) = (operand(&a, m, k), operand(&b, k, n))
    else {
        return false;
    };
    set_threads();
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: `cpu::matmul` asserted that every index the strides reach lies inside the slices; `out` is
    // borrowed mutably for the call.
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            trans_a,
            trans_b,
            m as c_int,
            n as c_int,
            k as c_int,
            1.0,
            a.values.as_ptr(),
            lda,
            b.values.as_ptr(),
            ldb,
            beta,
            out.as_mut_ptr(),
            n.max(1) as c_int,
        );
    }
    true
}
