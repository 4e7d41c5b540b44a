//! The low-rank update of LoRA, `scale * x A^T B^T`, as one fused op: two products forward, at most four
//! backward, and no `[rows, out]` temporary besides the output (the composed form also scales the product in
//! a separate pass forward and backward). The `[rows, r]` intermediate `scale * x A^T` is kept for the
//! gradient of `B` (r is 8 to 64, so it is small); the backward reads the output gradient in place (the
//! products take transposed views instead of copies) and scales only the `[rows, r]` intermediates.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! let x = Tensor::new(&[[1f32, 2.]], &dev).unwrap(); // [rows=1, in=2]
//! let a = Tensor::new(&[[1f32, 1.]], &dev).unwrap(); // [r=1, in=2]
//! let b = Tensor::new(&[[1f32], [-2.], [3.]], &dev).unwrap(); // [out=3, r=1]
//! let y = peft_kernels::low_rank(&x, &a, &b, 0.5).unwrap();
//! // x A^T = 3, times B^T = [3, -6, 9], times 0.5
//! assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![1.5, -3., 4.5]]);
//! ```

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::cpu::{self, Mat, Threads};
use peft_core::Result;

/// LoRA's update `scale * x A^T B^T` over the last dimension of `x` (any rank >= 1, last dimension `in`),
/// with `a` of shape `[r, in]` and `b` of shape `[out, r]`. Returns the dims of `x` with the last replaced by
/// `out`.
///
/// Runs one fused CPU op when `x`, `a` and `b` are f32 on the CPU (its backward yields the gradient of each
/// argument only where that argument is trained); otherwise it runs the composed form from candle's matmul,
/// which computes the same function. Non-contiguous arguments are made contiguous first.
pub fn low_rank(x: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let g = check(x, a, b)?;
    if !(cpu::covers(x) && cpu::covers(a) && cpu::covers(b)) {
        return composed(x, a, b, scale, &g);
    }
    let op = LowRank::new(g, scale, b);
    Ok(x.contiguous()?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)?)
}

/// The sizes of one call.
#[derive(Clone, Debug)]
pub(crate) struct Geometry {
    /// Rows of `x`: the product of its leading dimensions.
    rows: usize,
    inp: usize,
    rank: usize,
    out: usize,
    /// `x`'s dims with the last replaced by `out`.
    out_dims: Vec<usize>,
}

/// Checks the shapes (for both paths) and returns the sizes.
pub(crate) fn check(x: &Tensor, a: &Tensor, b: &Tensor) -> candle_core::Result<Geometry> {
    let name = "low_rank";
    let Some((&inp, lead)) = x.dims().split_last() else {
        candle_core::bail!("{name}: x must have at least one dimension, got a scalar");
    };
    let (&[rank, a_in], &[out, b_rank]) = (a.dims(), b.dims()) else {
        candle_core::bail!(
            "{name}: a must be [r, in] and b [out, r], got {:?} and {:?}",
            a.dims(),
            b.dims()
        );
    };
    if a_in != inp {
        candle_core::bail!(
            "{name}: a {:?} must have x's last dimension {inp} as its columns (x {:?})",
            a.dims(),
            x.dims()
        );
    }
    if b_rank != rank {
        candle_core::bail!(
            "{name}: b {:?} must have a's rank {rank} as its columns",
            b.dims()
        );
    }
    if x.dtype() != a.dtype() || x.dtype() != b.dtype() {
        candle_core::bail!(
            "{name}: x, a and b must share a dtype, got {:?}, {:?} and {:?}",
            x.dtype(),
            a.dtype(),
            b.dtype()
        );
    }
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out;
    }
    Ok(Geometry {
        rows: lead.iter().product(),
        inp,
        rank,
        out,
        out_dims,
    })
}

/// The composed form, from candle's differentiable matmul (also the fallback off the fused path).
fn composed(x: &Tensor, a: &Tensor, b: &Tensor, scale: f64, g: &Geometry) -> Result<Tensor> {
    let x2 = x.reshape((g.rows, g.inp))?;
    let y = x2.matmul(&a.t()?)?.matmul(&b.t()?)?;
    Ok((y * scale)?.reshape(g.out_dims.as_slice())?)
}

/// The fused op over `(x, a, b)`.
pub(crate) struct LowRank {
    scale: f32,
    /// Whether to keep `scale * x A^T` for the backward: only `b`'s gradient reads it.
    keep_h: bool,
    /// `scale * x A^T` (`[rows, r]`), set by the forward where `keep_h`.
    h: OnceLock<Vec<f32>>,
    g: Geometry,
}

impl LowRank {
    /// The update of geometry `g` (from [`check`]); keeps `scale * x A^T` for the backward where `b` is trained.
    pub(crate) fn new(g: Geometry, scale: f64, b: &Tensor) -> Self {
        LowRank {
            scale: scale as f32,
            keep_h: b.track_op(),
            h: OnceLock::new(),
            g,
        }
    }

    /// `y += scale * x A^T B^T` for `y` `[rows, out]`: the forward, onto whatever `y` holds.
    pub(crate) fn add_forward(
        &self,
        x: &[f32],
        a: &[f32],
        b: &[f32],
        y: &mut [f32],
    ) -> candle_core::Result<()> {
        let g = &self.g;
        self.check_sizes(x, a, b)?;
        let h = self.scaled_h(x, a);
        cpu::matmul(
            Mat::rows(&h, g.rank),
            Mat::transposed(b, g.rank),
            y,
            (g.rows, g.out, g.rank),
            true,
            Threads::All,
        );
        if self.keep_h && self.h.set(h).is_err() {
            candle_core::bail!("low_rank: the op ran its forward twice");
        }
        Ok(())
    }

    /// `scale * x A^T` (`[rows, r]`).
    fn scaled_h(&self, x: &[f32], a: &[f32]) -> Vec<f32> {
        let g = &self.g;
        let mut h = vec![0f32; g.rows * g.rank];
        cpu::matmul(
            Mat::rows(x, g.inp),
            Mat::transposed(a, g.inp),
            &mut h,
            (g.rows, g.rank, g.inp),
            false,
            Threads::All,
        );
        // Scaling the small intermediate instead of the `[rows, out]` product saves a pass over the output.
        h.iter_mut().for_each(|v| *v *= self.scale);
        h
    }

    /// Checks that the arguments have the sizes the op was built for.
    fn check_sizes(&self, x: &[f32], a: &[f32], b: &[f32]) -> candle_core::Result<()> {
        let g = &self.g;
        if x.len() != g.rows * g.inp || a.len() != g.rank * g.inp || b.len() != g.out * g.rank {
            candle_core::bail!(
                "low_rank: arguments of {}, {} and {} values do not match x [{}, {}], a [{}, {}], b [{}, {}]",
                x.len(),
                a.len(),
                b.len(),
                g.rows,
                g.inp,
                g.rank,
                g.inp,
                g.out,
                g.rank
            );
        }
        Ok(())
    }
}

impl CustomOp3 for LowRank {
    fn name(&self) -> &'static str {
        "low-rank"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (x, a, b) = (
            cpu::slice(s1, l1)?,
            cpu::slice(s2, l2)?,
            cpu::slice(s3, l3)?,
        );
        let mut y = vec![0f32; g.rows * g.out];
        self.add_forward(x, a, b, &mut y)?;
        Ok((CpuStorage::F32(y), Shape::from(g.out_dims.as_slice())))
    }

    fn bwd(
        &self,
        x_arg: &Tensor,
        a_arg: &Tensor,
        b_arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.gradients(x_arg, a_arg, b_arg, grad_res, None)
    }
}

impl LowRank {
    /// The backward: the gradients of `x` (shaped as `x`, added onto the `[rows, in]` values `dx_onto` where
    /// given), `a` and `b`, each only where that argument is trained.
    pub(crate) fn gradients(
        &self,
        x_arg: &Tensor,
        a_arg: &Tensor,
        b_arg: &Tensor,
        grad_res: &Tensor,
        dx_onto: Option<Vec<f32>>,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = &self.g;
        let (need_x, need_a, need_b) = (x_arg.track_op(), a_arg.track_op(), b_arg.track_op());
        let shaped = |dx: Option<Vec<f32>>| dx.map(|v| cpu::tensor(v, x_arg.dims())).transpose();
        if !(need_x || need_a || need_b) {
            return Ok((shaped(dx_onto)?, None, None));
        }
        let (rows, inp, rank, out) = (g.rows, g.inp, g.rank, g.out);
        cpu::with_values(grad_res, |dy| {
            cpu::with_values(x_arg, |x| {
                cpu::with_values(a_arg, |a| {
                    cpu::with_values(b_arg, |b| {
                        self.check_sizes(x, a, b)?;
                        if dy.len() != rows * out {
                            candle_core::bail!(
                                "low_rank: the output gradient has {} values, expected {rows} x {out}",
                                dy.len()
                            );
                        }
                        // dB = scale * dy^T (x A^T) = dy^T h  ([out, r])
                        let db = if need_b {
                            let recomputed;
                            let h = match self.h.get() {
                                Some(h) => h,
                                None => {
                                    recomputed = self.scaled_h(x, a);
                                    &recomputed
                                }
                            };
                            // As `h^T dy` (`[r, out]`), then transposed: gemm reads dy row by row that
                            // way, about 1.6 times as fast as `dy^T h` at GPT-2's sizes.
                            let mut db_t = vec![0f32; rank * out];
                            cpu::matmul(
                                Mat::transposed(h, rank),
                                Mat::rows(dy, out),
                                &mut db_t,
                                (rank, out, rows),
                                false,
                                Threads::All,
                            );
                            let mut db = vec![0f32; out * rank];
                            for (i, row) in db_t.chunks_exact(out.max(1)).enumerate() {
                                for (j, &v) in row.iter().enumerate() {
                                    db[j * rank + i] = v;
                                }
                            }
                            Some(cpu::tensor(db, &[out, rank])?)
                        } else {
                            None
                        };
                        if !(need_x || need_a) {
                            return Ok((shaped(dx_onto)?, None, db));
                        }
                        // dh = scale * dy B  ([rows, r]): scaled here, where it is small.
                        let mut dh = vec![0f32; rows * rank];
                        cpu::matmul(
                            Mat::rows(dy, out),
                            Mat::rows(b, rank),
                            &mut dh,
                            (rows, rank, out),
                            false,
                            Threads::All,
                        );
                        dh.iter_mut().for_each(|v| *v *= self.scale);
                        // dA = dh^T x  ([r, in])
                        let da = if need_a {
                            let mut da = vec![0f32; rank * inp];
                            cpu::matmul(
                                Mat::transposed(&dh, rank),
                                Mat::rows(x, inp),
                                &mut da,
                                (rank, inp, rows),
                                false,
                                Threads::All,
                            );
                            Some(cpu::tensor(da, &[rank, inp])?)
                        } else {
                            None
                        };
                        // dx = dh A  ([rows, in]), onto what the caller gave
                        let dx = if need_x {
                            let onto = dx_onto.is_some();
                            let mut dx = dx_onto.unwrap_or_else(|| vec![0f32; rows * inp]);
                            cpu::matmul(
                                Mat::rows(&dh, rank),
                                Mat::rows(a, inp),
                                &mut dx,
                                (rows, inp, rank),
                                onto,
                                Threads::All,
                            );
                            Some(dx)
                        } else {
                            dx_onto
                        };
                        Ok((shaped(dx)?, da, db))
                    })
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    /// Seeded standard normal values.
    fn random(dims: &[usize], seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }

    /// `max |a - b| / max |b|`.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        peft_core::compare::max_rel_diff(a, b).unwrap()
    }

    /// The composed form on the same arguments.
    fn reference(x: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
        composed(x, a, b, scale, &check(x, a, b)?)
    }

    type Form = fn(&Tensor, &Tensor, &Tensor, f64) -> Result<Tensor>;

    /// Output of `f` and the gradients of `x`, `a`, `b` (`None` where absent) for the loss `sum(out * w)`.
    fn run(
        f: Form,
        (x, a, b): (&Tensor, &Tensor, &Tensor),
        scale: f64,
        w: &Tensor,
    ) -> (Tensor, [Option<Tensor>; 3]) {
        let out = f(x, a, b, scale).unwrap();
        let grads = (&out * w).unwrap().sum_all().unwrap().backward().unwrap();
        let get = |t: &Tensor| grads.get(t).cloned();
        (out, [get(x), get(a), get(b)])
    }

    /// Values and the gradients of every argument, all trained, fused against composed.
    fn compare(x_dims: &[usize], rank: usize, out: usize, scale: f64, seed: u64) {
        let inp = *x_dims.last().unwrap();
        let x = Var::from_tensor(&random(x_dims, seed)).unwrap();
        let a = Var::from_tensor(&random(&[rank, inp], seed + 1)).unwrap();
        let b = Var::from_tensor(&random(&[out, rank], seed + 2)).unwrap();
        let mut out_dims = x_dims.to_vec();
        *out_dims.last_mut().unwrap() = out;
        let w = random(&out_dims, seed + 3);
        let args = (x.as_tensor(), a.as_tensor(), b.as_tensor());
        let (y, g) = run(low_rank, args, scale, &w);
        let (y_ref, g_ref) = run(reference, args, scale, &w);
        assert_eq!(y.dims(), out_dims.as_slice());
        let what = format!("x {x_dims:?}, r {rank}, out {out}");
        assert!(rel_diff(&y, &y_ref) < 1e-5, "values, {what}");
        for (name, (g, g_ref)) in ["x", "a", "b"].iter().zip(g.iter().zip(&g_ref)) {
            let (g, g_ref) = (g.as_ref().unwrap(), g_ref.as_ref().unwrap());
            assert!(rel_diff(g, g_ref) < 1e-5, "gradient of {name}, {what}");
        }
    }

    #[test]
    fn values_and_gradients_match_the_composed_form() {
        compare(&[4, 7, 16], 8, 12, 2.0, 1);
        compare(&[4, 7, 16], 1, 12, 0.5, 2);
        // 15 rows: not a multiple of the thread count.
        compare(&[3, 5, 16], 8, 24, 4.0, 3);
        // A 2-D x, a 1-D x, and size-1 dimensions.
        compare(&[9, 10], 4, 1, 1.0, 4);
        compare(&[10], 2, 3, 1.0, 5);
        compare(&[1, 1, 5], 1, 1, 0.25, 6);
        // GPT-2's attention projection at a small batch.
        compare(&[2, 33, 64], 16, 192, 2.0, 7);
    }

    #[test]
    fn a_frozen_input_gets_no_gradient() {
        let x = random(&[4, 7, 16], 11);
        let a = Var::from_tensor(&random(&[8, 16], 12)).unwrap();
        let b = Var::from_tensor(&random(&[12, 8], 13)).unwrap();
        let w = random(&[4, 7, 12], 14);
        let args = (&x, a.as_tensor(), b.as_tensor());
        let (y, g) = run(low_rank, args, 2.0, &w);
        let (y_ref, g_ref) = run(reference, args, 2.0, &w);
        assert!(rel_diff(&y, &y_ref) < 1e-5);
        assert!(g[0].is_none());
        for i in 1..3 {
            assert!(rel_diff(g[i].as_ref().unwrap(), g_ref[i].as_ref().unwrap()) < 1e-5);
        }
    }

    #[test]
    fn frozen_factors_get_no_gradient() {
        let x = Var::from_tensor(&random(&[4, 7, 16], 21)).unwrap();
        let (a, b) = (random(&[8, 16], 22), random(&[12, 8], 23));
        let w = random(&[4, 7, 12], 24);
        let args = (x.as_tensor(), &a, &b);
        let (y, g) = run(low_rank, args, 2.0, &w);
        let (y_ref, g_ref) = run(reference, args, 2.0, &w);
        assert!(rel_diff(&y, &y_ref) < 1e-5);
        assert!(g[1].is_none() && g[2].is_none());
        assert!(rel_diff(g[0].as_ref().unwrap(), g_ref[0].as_ref().unwrap()) < 1e-5);
        // Nothing trained: no graph at all.
        assert!(!low_rank(&x.as_tensor().detach(), &a, &b, 2.0)
            .unwrap()
            .track_op());
    }

    #[test]
    fn only_the_second_factor_trained() {
        // The gradient of b alone reads the kept intermediate; the others are not computed.
        let x = random(&[3, 5, 16], 31);
        let a = random(&[8, 16], 32);
        let b = Var::from_tensor(&random(&[12, 8], 33)).unwrap();
        let w = random(&[3, 5, 12], 34);
        let args = (&x, &a, b.as_tensor());
        let (_, g) = run(low_rank, args, 0.5, &w);
        let (_, g_ref) = run(reference, args, 0.5, &w);
        assert!(g[0].is_none() && g[1].is_none());
        assert!(rel_diff(g[2].as_ref().unwrap(), g_ref[2].as_ref().unwrap()) < 1e-5);
    }

    #[test]
    fn the_gradient_of_b_without_the_kept_intermediate_is_the_same() {
        // An op that did not keep `scale * x A^T` recomputes it: the same bits as the kept one.
        let x = random(&[3, 5, 16], 35);
        let a = random(&[8, 16], 36);
        let b = Var::from_tensor(&random(&[12, 8], 37)).unwrap();
        let w = random(&[3, 5, 12], 38);
        let grad_b = |keep_h: bool| {
            let op = LowRank {
                scale: 0.5,
                keep_h,
                h: OnceLock::new(),
                g: check(&x, &a, b.as_tensor()).unwrap(),
            };
            let y = x.apply_op3(&a, b.as_tensor(), op).unwrap();
            let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            grads
                .get(b.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (kept, recomputed) = (grad_b(true), grad_b(false));
        assert!(kept.iter().any(|&v| v != 0.0));
        assert_eq!(kept, recomputed);
    }

    #[test]
    fn strided_arguments_are_read_correctly() {
        // x and a given as transposed views.
        let x = Var::from_tensor(&random(&[16, 6], 41)).unwrap();
        let a = Var::from_tensor(&random(&[16, 4], 42)).unwrap();
        let b = Var::from_tensor(&random(&[5, 4], 43)).unwrap();
        let (xt, at) = (x.as_tensor().t().unwrap(), a.as_tensor().t().unwrap());
        let w = random(&[6, 5], 44);
        let (y, g) = run(low_rank, (&xt, &at, b.as_tensor()), 1.5, &w);
        let (y_ref, g_ref) = run(reference, (&xt, &at, b.as_tensor()), 1.5, &w);
        assert!(rel_diff(&y, &y_ref) < 1e-5);
        // The gradients flow back through the transposes to the variables.
        let grads = |f: Form| {
            let out = f(&xt, &at, b.as_tensor(), 1.5).unwrap();
            let store = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
            [x.as_tensor(), a.as_tensor(), b.as_tensor()].map(|t| store.get(t).unwrap().clone())
        };
        let (gf, gr) = (grads(low_rank), grads(reference));
        for (f, r) in gf.iter().zip(&gr) {
            assert!(rel_diff(f, r) < 1e-5);
        }
        assert!(g
            .iter()
            .zip(&g_ref)
            .all(|(f, r)| f.is_some() == r.is_some()));
    }

    #[test]
    fn f64_falls_back_to_the_composed_form() {
        let x = Var::from_tensor(&random(&[3, 5, 16], 51).to_dtype(DType::F64).unwrap()).unwrap();
        let a = Var::from_tensor(&random(&[8, 16], 52).to_dtype(DType::F64).unwrap()).unwrap();
        let b = Var::from_tensor(&random(&[12, 8], 53).to_dtype(DType::F64).unwrap()).unwrap();
        let w = random(&[3, 5, 12], 54).to_dtype(DType::F64).unwrap();
        let args = (x.as_tensor(), a.as_tensor(), b.as_tensor());
        let (y, g) = run(low_rank, args, 2.0, &w);
        let (y_ref, g_ref) = run(reference, args, 2.0, &w);
        assert_eq!(y.dtype(), DType::F64);
        assert_eq!(peft_core::compare::max_abs_diff(&y, &y_ref).unwrap(), 0.0);
        for (g, g_ref) in g.iter().zip(&g_ref) {
            let (g, g_ref) = (g.as_ref().unwrap(), g_ref.as_ref().unwrap());
            assert_eq!(peft_core::compare::max_abs_diff(g, g_ref).unwrap(), 0.0);
        }
        // And the fused f32 op agrees with it.
        let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let y32 = low_rank(&f32s(&x), &f32s(&a), &f32s(&b), 2.0).unwrap();
        assert!(rel_diff(&y32, &f32s(&y)) < 1e-5);
    }

    #[test]
    fn results_are_identical_across_thread_counts() {
        let x = Var::from_tensor(&random(&[4, 37, 64], 61)).unwrap();
        let a = Var::from_tensor(&random(&[8, 64], 62)).unwrap();
        let b = Var::from_tensor(&random(&[96, 8], 63)).unwrap();
        let w = random(&[4, 37, 96], 64);
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        let pool = crate::cpu::test_pool;
        let args = (x.as_tensor(), a.as_tensor(), b.as_tensor());
        let (y1, g1) = pool(1).install(|| run(low_rank, args, 2.0, &w));
        let (y3, g3) = pool(3).install(|| run(low_rank, args, 2.0, &w));
        assert_eq!(bits(&y1), bits(&y3));
        for (g1, g3) in g1.iter().zip(&g3) {
            assert_eq!(bits(g1.as_ref().unwrap()), bits(g3.as_ref().unwrap()));
        }
    }

    #[test]
    fn bad_shapes_are_named() {
        let z = |dims: &[usize]| Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap();
        let err = |x: &[usize], a: &[usize], b: &[usize]| {
            low_rank(&z(x), &z(a), &z(b), 1.0).unwrap_err().to_string()
        };
        let e = err(&[2, 16], &[8, 15], &[4, 8]);
        assert!(
            e.contains("low_rank") && e.contains("last dimension 16"),
            "{e}"
        );
        let e = err(&[2, 16], &[8, 16], &[4, 7]);
        assert!(e.contains("a's rank 8"), "{e}");
        let e = err(&[2, 16], &[8, 16, 1], &[4, 8]);
        assert!(e.contains("[r, in]"), "{e}");
        let e = err(&[], &[8, 16], &[4, 8]);
        assert!(e.contains("scalar"), "{e}");
    }
}
