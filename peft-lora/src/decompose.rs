//! The factorisations PiSSA and OLoRA start from, of a frozen weight `W` `[out, in]`, computed in f64 (HF PEFT
//! computes them in f32 with torch / LAPACK): the top `r` singular triplets (exactly, or by HF's randomized
//! `svd_lowrank` with `niter` subspace iterations) and the first `r` columns / rows of a thin QR.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use peft_lora::decompose::{thin_qr, top_singular};
//! let w = Tensor::new(&[[3.0f32, 0.0], [0.0, -2.0], [0.0, 0.0]], &Device::Cpu).unwrap();
//! let top = top_singular(&w, 1).unwrap();
//! assert_eq!(top.s.to_vec1::<f32>().unwrap(), vec![3.0]);
//! // Q R = W, with Q's columns orthonormal.
//! let (q, r) = thin_qr(&w, 2).unwrap();
//! let back = q.matmul(&r).unwrap().to_vec2::<f32>().unwrap();
//! assert!((back[1][1] + 2.0).abs() < 1e-6);
//! ```

use candle_core::{DType, Device, Tensor};
use faer::Mat;
use peft_core::{PeftError, Result};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// The `r` largest singular values of a matrix with their singular vectors: `W ~ u diag(s) vt`.
#[derive(Debug, Clone)]
pub struct TopSingular {
    /// Left singular vectors `[out, r]`.
    pub u: Tensor,
    /// Singular values `[r]`, largest first.
    pub s: Tensor,
    /// Right singular vectors, transposed: `[r, in]`.
    pub vt: Tensor,
}

/// The exact top `r` singular triplets of `w` `[out, in]` (a full thin SVD, HF's `"pissa"`).
pub fn top_singular(w: &Tensor, r: usize) -> Result<TopSingular> {
    let m = to_faer(w)?;
    check_rank(r, &m)?;
    let svd = m.thin_svd().map_err(|e| {
        PeftError::Config(format!("the SVD of a {:?} weight failed: {e:?}", w.dims()))
    })?;
    triplets(svd.U(), svd.S().column_vector(), svd.V(), r, w.device())
}

/// The top `r` singular triplets of `w` by randomized subspace iteration (Halko, Martinsson and Tropp; HF's
/// `"pissa_niter_<niter>"`, through torch's `svd_lowrank` with `q = r`): a Gaussian test matrix `[in, r]`
/// drawn from `seed`, `niter` power iterations with re-orthonormalisation, then the exact SVD of the small
/// projected matrix. torch draws its test matrix from its global generator; the values here come from `seed`,
/// so the approximation is as good but not the same numbers.
pub fn randomized_top_singular(
    w: &Tensor,
    r: usize,
    niter: usize,
    seed: u64,
) -> Result<TopSingular> {
    let a = to_faer(w)?;
    check_rank(r, &a)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let test = Mat::<f64>::from_fn(a.ncols(), r, |_, _| StandardNormal.sample(&mut rng));
    let mut q = orthonormal_columns(&a * &test);
    for _ in 0..niter {
        q = orthonormal_columns(a.transpose() * &q);
        q = orthonormal_columns(&a * &q);
    }
    // W ~ Q (Q^T W); the SVD of the small [r, in] matrix gives the triplets.
    let small = q.transpose() * &a;
    let svd = small.thin_svd().map_err(|e| {
        PeftError::Config(format!(
            "the SVD of a {:?} projection failed: {e:?}",
            small.shape()
        ))
    })?;
    let u = &q * svd.U();
    triplets(u.as_ref(), svd.S().column_vector(), svd.V(), r, w.device())
}

/// The first `r` columns of Q `[out, r]` and rows of R `[r, in]` of `w`'s thin QR (Householder, as LAPACK's
/// `geqrf`, which torch's `linalg.qr` calls: R's diagonal signs may be negative). HF's `"olora"`.
pub fn thin_qr(w: &Tensor, r: usize) -> Result<(Tensor, Tensor)> {
    let m = to_faer(w)?;
    check_rank(r, &m)?;
    let qr = m.qr();
    let q = qr.compute_thin_Q();
    let big_r = qr.thin_R();
    let q_r = Mat::<f64>::from_fn(m.nrows(), r, |i, j| q[(i, j)]);
    let r_r = Mat::<f64>::from_fn(r, m.ncols(), |i, j| big_r[(i, j)]);
    Ok((to_tensor(&q_r, w.device())?, to_tensor(&r_r, w.device())?))
}

fn check_rank(r: usize, m: &Mat<f64>) -> Result<()> {
    let most = m.nrows().min(m.ncols());
    if r == 0 || r > most {
        return Err(PeftError::Config(format!(
            "rank {r} cannot be taken from a {} x {} weight: it must be between 1 and {most}",
            m.nrows(),
            m.ncols()
        )));
    }
    Ok(())
}

/// The orthonormal basis of `x`'s columns (its thin Q).
fn orthonormal_columns(x: Mat<f64>) -> Mat<f64> {
    x.qr().compute_thin_Q()
}

fn triplets(
    u: faer::MatRef<'_, f64>,
    s: faer::ColRef<'_, f64>,
    v: faer::MatRef<'_, f64>,
    r: usize,
    device: &Device,
) -> Result<TopSingular> {
    // faer sorts singular values largest first; the first r columns are the top ones.
    let u_r = Mat::<f64>::from_fn(u.nrows(), r, |i, j| u[(i, j)]);
    let vt_r = Mat::<f64>::from_fn(r, v.nrows(), |i, j| v[(j, i)]);
    let s_r: Vec<f32> = (0..r).map(|i| s[i] as f32).collect();
    Ok(TopSingular {
        u: to_tensor(&u_r, device)?,
        s: Tensor::from_vec(s_r, r, device)?,
        vt: to_tensor(&vt_r, device)?,
    })
}

fn to_faer(w: &Tensor) -> Result<Mat<f64>> {
    let rows = w.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let (m, n) = (rows.len(), rows.first().map_or(0, Vec::len));
    Ok(Mat::from_fn(m, n, |i, j| rows[i][j]))
}

fn to_tensor(m: &Mat<f64>, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)] as f32))
        .collect();
    Ok(Tensor::from_vec(values, (m.nrows(), m.ncols()), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(out: usize, inp: usize, seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..out * inp)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        Tensor::from_vec(v, (out, inp), &Device::Cpu).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn full_rank_triplets_rebuild_the_matrix() {
        let w = sample(7, 5, 1);
        let top = top_singular(&w, 5).unwrap();
        let back = top
            .u
            .broadcast_mul(&top.s.unsqueeze(0).unwrap())
            .unwrap()
            .matmul(&top.vt)
            .unwrap();
        assert!(max_abs(&(back - &w).unwrap()) < 1e-5);
        let s = top.s.to_vec1::<f32>().unwrap();
        assert!(s.windows(2).all(|p| p[0] >= p[1]), "{s:?} not sorted");
    }

    #[test]
    fn randomized_iterations_approach_the_exact_top_subspace() {
        // A matrix with a clear gap after rank 3, as trained weights tend to have.
        let low = sample(20, 3, 2).matmul(&sample(3, 30, 3)).unwrap();
        let w = (low * 10.0 + sample(20, 30, 4)).unwrap();
        let exact = top_singular(&w, 3).unwrap();
        let approx = randomized_top_singular(&w, 3, 4, 9).unwrap();
        let rebuilt = |t: &TopSingular| {
            t.u.broadcast_mul(&t.s.unsqueeze(0).unwrap())
                .unwrap()
                .matmul(&t.vt)
                .unwrap()
        };
        let gap = max_abs(&(rebuilt(&exact) - rebuilt(&approx)).unwrap());
        assert!(gap < 1e-2 * max_abs(&w), "rank-3 parts differ by {gap}");
        let again = randomized_top_singular(&w, 3, 4, 9).unwrap();
        assert_eq!(
            again.s.to_vec1::<f32>().unwrap(),
            approx.s.to_vec1::<f32>().unwrap(),
            "the same seed must draw the same test matrix"
        );
    }

    #[test]
    fn qr_factors_are_orthonormal_and_triangular() {
        let w = sample(6, 4, 5);
        let (q, r) = thin_qr(&w, 4).unwrap();
        assert!(max_abs(&(q.matmul(&r).unwrap() - &w).unwrap()) < 1e-5);
        let eye = Tensor::eye(4, DType::F32, &Device::Cpu).unwrap();
        assert!(max_abs(&(q.t().unwrap().matmul(&q).unwrap() - eye).unwrap()) < 1e-5);
        let r = r.to_vec2::<f32>().unwrap();
        assert!((0..4).all(|i| (0..i).all(|j| r[i][j] == 0.0)));
    }

    #[test]
    fn a_rank_beyond_the_matrix_is_refused() {
        let err = top_singular(&sample(3, 4, 6), 4).unwrap_err().to_string();
        assert!(err.contains("between 1 and 3"), "{err}");
    }
}
