//! The SVD combinations' last step, as HF PEFT's `_svd_generalized_task_arithmetic_weighted_adapter` does it:
//! the combined update `ΔW` `[out, in]` is factored by SVD and cut to the new rank, `B = U_r diag(S_r)` and
//! `A = V_r^T`; with `svd_clamp = q`, both factors are clamped to `[-h, h]`, `h` the `q`-quantile (linear
//! interpolation, as `torch.quantile`) of all their entries together.
//!
//! The SVD runs through faer in f64 (HF: torch / LAPACK in f32), so `B A` agrees with HF's to float precision.
//! The factors themselves agree only up to the sign of each singular pair, which SVD routines choose freely;
//! with `svd_clamp` the signs decide which entries the quantile clamps, so a clamped merge can differ from
//! HF's where an entry sits near the threshold.
//!
//! Where the new rank exceeds the update's smaller dimension, HF PEFT either fails (`full_matrices=True`, its
//! default) or writes factors of that smaller rank (`False`), which it then cannot reload; here the factors are
//! padded with zeros to the new rank, which changes nothing in `B A`.
//!
//! ```
//! use peft_merge::{svd::truncated_factors, Matrix};
//! // A rank-1 update, factored at rank 2: the second singular value is zero.
//! let delta = Matrix::new(2, 1, vec![3.0, 4.0]).matmul(&Matrix::new(1, 2, vec![1.0, 0.0]));
//! let (a, b) = truncated_factors(&delta, 2, None, "m").unwrap();
//! assert_eq!((a.shape(), b.shape()), ([2, 2], [2, 2]));
//! assert!(b.matmul(&a).max_abs_diff(&delta) < 1e-12);
//! ```

use faer::Mat;

use crate::error::{MergeError, Result};
use crate::matrix::Matrix;

/// `(A [rank, in], B [out, rank])` with `B A` the best rank-`rank` approximation of `delta` (`module` names it
/// in errors), clamped at the `clamp` quantile of their entries where given.
pub fn truncated_factors(
    delta: &Matrix,
    rank: usize,
    clamp: Option<f64>,
    module: &str,
) -> Result<(Matrix, Matrix)> {
    let m = Mat::<f64>::from_fn(delta.rows, delta.cols, |i, j| delta.at(i, j));
    let svd = m.thin_svd().map_err(|e| MergeError::Svd {
        module: module.to_string(),
        rows: delta.rows,
        cols: delta.cols,
        cause: format!("{e:?}"),
    })?;
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    // faer orders the singular values largest first, as LAPACK does.
    let k = rank.min(delta.rows.min(delta.cols));
    let mut b = Matrix::new(
        delta.rows,
        k,
        (0..delta.rows)
            .flat_map(|i| (0..k).map(move |j| u[(i, j)] * s[j]))
            .collect(),
    );
    let mut a = Matrix::new(
        k,
        delta.cols,
        (0..k)
            .flat_map(|i| (0..delta.cols).map(move |j| v[(j, i)]))
            .collect(),
    );
    if let Some(q) = clamp {
        clamp_to_quantile(&mut a, &mut b, q);
    }
    Ok((a.pad_rows(rank), b.pad_cols(rank)))
}

/// HF's `svd_clamp`: both factors clamped to `[-h, h]`, `h` the `q`-quantile of all their entries together.
pub fn clamp_to_quantile(a: &mut Matrix, b: &mut Matrix, q: f64) {
    let mut all: Vec<f64> = b.data.iter().chain(&a.data).copied().collect();
    let high = quantile(&mut all, q);
    // torch's clamp(min, max) is min(max(x, min), max): with min > max every entry becomes max.
    let clamp = |x: f64| x.max(-high).min(high);
    b.data.iter_mut().for_each(|x| *x = clamp(*x));
    a.data.iter_mut().for_each(|x| *x = clamp(*x));
}

/// `torch.quantile(values, q)`: the `q` quantile with linear interpolation between the sorted values (which
/// `values` are left as).
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let Some(last) = values.len().checked_sub(1) else {
        return f64::NAN;
    };
    let position = q * last as f64;
    let low = position.floor() as usize;
    let high = position.ceil() as usize;
    values[low] + (values[high] - values[low]) * (position - low as f64)
}
