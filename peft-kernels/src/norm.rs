//! Layer norm and RMS norm over the last dimension, each one fused custom op with a hand-written backward.
//!
//! The input, the weight and (layer norm) the bias are all arguments of the op, so each gets its gradient
//! from it exactly when it is trained: the input always in prompt tuning and LoRA, BitFit's bias, every
//! weight in full fine-tuning; a frozen one gets none. Rows are processed in blocks of about 16K values on
//! rayon, each block in a loop compiled for the CPU's widest vector unit. The forward keeps each row's mean
//! and `1 / sqrt(var + eps)` (8 bytes a row) for the backward: that saves the backward the two reductions
//! per row that recomputing them costs, and makes it use exactly the forward's statistics. Weight and bias
//! gradients are summed per block of rows, then the blocks' partial sums are added in block order; the
//! blocks depend on the shape only, so gradients are bit-identical run to run and for any thread count.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! let x = Tensor::new(&[[1f32, 2., 3., 4.]], &dev).unwrap();
//! let w = Tensor::new(&[1f32, 1., 1., 1.], &dev).unwrap();
//! let b = Tensor::new(&[0f32, 0., 0., 1.], &dev).unwrap();
//! let y = peft_kernels::layer_norm(&x, &w, Some(&b), 1e-5).unwrap().to_vec2::<f32>().unwrap();
//! // mean 2.5, variance 1.25
//! assert!((y[0][0] + 1.5 / 1.25f32.sqrt()).abs() < 1e-4 && (y[0][3] - 1. - 1.5 / 1.25f32.sqrt()).abs() < 1e-4);
//! let r = peft_kernels::rms_norm(&x, &w, 1e-5).unwrap().to_vec2::<f32>().unwrap();
//! assert!((r[0][3] - 4. / 7.5f32.sqrt()).abs() < 1e-4);
//! ```

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu;
use peft_core::Result;

/// Layer norm: `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension of `x` (any rank;
/// `weight` and `bias` of shape `[H]`, `H` the last dimension) (GPT-2, BERT).
///
/// One fused op when `x`, `weight` and `bias` are f32 CPU tensors; otherwise the composed form
/// [`super::composed::layer_norm`] (same function).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    if !(cpu::covers(x) && cpu::covers(weight) && bias.is_none_or(cpu::covers)) {
        return super::composed::layer_norm(x, weight, bias, eps);
    }
    let op = Norm::new(true, eps);
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    Ok(match bias {
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, op)?,
        None => x.apply_op2(&weight, op)?,
    })
}

/// RMS norm: `x / sqrt(mean(x^2) + eps) * weight` over the last dimension of `x` (any rank; `weight` of
/// shape `[H]`) (LLaMA, T5).
///
/// One fused op when `x` and `weight` are f32 CPU tensors; otherwise the composed form
/// [`super::composed::rms_norm`] (same function).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !(cpu::covers(x) && cpu::covers(weight)) {
        return super::composed::rms_norm(x, weight, eps);
    }
    let op = Norm::new(false, eps);
    Ok(x.contiguous()?.apply_op2(&weight.contiguous()?, op)?)
}

/// The op behind both norms: arguments `x`, `weight` and, for a layer norm with a bias, `bias`.
struct Norm {
    /// Layer norm subtracts the row mean; RMS norm does not (its "mean" is 0).
    centred: bool,
    eps: f32,
    /// Per row `[mean, 1 / sqrt(var + eps)]`, set by the forward for the backward.
    stats: OnceLock<Vec<f32>>,
}

/// Values per block of rows (one rayon task).
const BLOCK: usize = 1 << 14;

/// Rows per block for rows of `h` values: at least one.
fn rows_per_block(h: usize) -> usize {
    (BLOCK / h.max(1)).max(1)
}

/// Independent partial sums in the row reductions: they let the loops vectorise, in a fixed order.
const LANES: usize = 16;

/// `sum_j f(x[j])`, in [`LANES`] interleaved partial sums added in a fixed order.
#[inline(always)]
fn sum_by(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&v| f(v)).sum::<f32>()
}

/// `sum_j f(a[j], b[j], c[j])` over slices of one length, like [`sum_by`].
#[inline(always)]
fn sum_by3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let (ra, rb, rc) = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((a, b), c) in ca.zip(cb).zip(cc) {
        for (((s, &a), &b), &c) in acc.iter_mut().zip(a).zip(b).zip(c) {
            *s += f(a, b, c);
        }
    }
    let rest: f32 = ra
        .iter()
        .zip(rb)
        .zip(rc)
        .map(|((&a, &b), &c)| f(a, b, c))
        .sum();
    acc.iter().sum::<f32>() + rest
}

/// Gradients the backward returns: input, weight, bias.
type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

impl Norm {
    fn new(centred: bool, eps: f64) -> Self {
        Norm {
            centred,
            eps: eps as f32,
            stats: OnceLock::new(),
        }
    }

    fn op_name(&self) -> &'static str {
        if self.centred {
            "fused-layer-norm"
        } else {
            "fused-rms-norm"
        }
    }

    /// The row length `H`, after checking `weight` (and `bias`) are `[H]`.
    fn row_len(
        &self,
        x: &Shape,
        weight: &Shape,
        bias: Option<&Shape>,
    ) -> candle_core::Result<usize> {
        let Some(&h) = x.dims().last() else {
            candle_core::bail!(
                "{}: the input must have at least one dimension",
                self.op_name()
            );
        };
        if weight.dims() != [h] {
            candle_core::bail!(
                "{}: weight has shape {:?}, expected [{h}] for an input of shape {:?}",
                self.op_name(),
                weight.dims(),
                x.dims()
            );
        }
        if let Some(b) = bias.filter(|b| b.dims() != [h]) {
            candle_core::bail!(
                "{}: bias has shape {:?}, expected [{h}] for an input of shape {:?}",
                self.op_name(),
                b.dims(),
                x.dims()
            );
        }
        Ok(h)
    }

    /// `y = (x - mean) * rstd * w (+ b)` per row of `h` values; keeps the rows' statistics.
    fn forward(
        &self,
        x: &[f32],
        h: usize,
        w: &[f32],
        b: Option<&[f32]>,
    ) -> candle_core::Result<Vec<f32>> {
        let n = x.len();
        let rows = n.checked_div(h).unwrap_or(0);
        let mut y = Vec::with_capacity(n);
        let mut stats = vec![0f32; 2 * rows];
        let (centred, eps) = (self.centred, self.eps);
        let body = |first: usize, y: &mut [MaybeUninit<f32>], stats: &mut [f32]| {
            cpu::vectorised(
                #[inline(always)]
                || {
                    for (r, (y, st)) in y.chunks_mut(h).zip(stats.chunks_mut(2)).enumerate() {
                        let x = &x[(first + r) * h..][..h];
                        let mean = if centred {
                            sum_by(
                                x,
                                #[inline(always)]
                                |v| v,
                            ) / h as f32
                        } else {
                            0.0
                        };
                        let var = sum_by(
                            x,
                            #[inline(always)]
                            |v| (v - mean) * (v - mean),
                        ) / h as f32;
                        let rstd = 1.0 / (var + eps).sqrt();
                        st[0] = mean;
                        st[1] = rstd;
                        match b {
                            Some(b) => {
                                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                                    y.write((x - mean) * rstd * w + b);
                                }
                            }
                            None => {
                                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                                    y.write((x - mean) * rstd * w);
                                }
                            }
                        }
                    }
                },
            )
        };
        if rows > 0 {
            let rpb = rows_per_block(h);
            let out = &mut y.spare_capacity_mut()[..n];
            if rows <= rpb {
                body(0, out, &mut stats);
            } else {
                out.par_chunks_mut(rpb * h)
                    .zip(stats.par_chunks_mut(2 * rpb))
                    .enumerate()
                    .for_each(|(i, (y, st))| body(i * rpb, y, st));
            }
            // SAFETY: the blocks cover `y[..n]` (`n = rows * h`), each block's rows cover the block, and each
            // row's loop writes all `h` of its values (`w` and `b` have `h` values: checked by `row_len`).
            unsafe { y.set_len(n) };
        }
        if self.stats.set(stats).is_err() {
            candle_core::bail!("{}: the op ran its forward twice", self.op_name());
        }
        Ok(y)
    }

    /// The gradients of `x`, `weight` and `bias`, each where that argument is trained.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        grad: &Tensor,
    ) -> candle_core::Result<Grads> {
        let (need_x, need_w, need_b) =
            (x.track_op(), w.track_op(), b.is_some_and(Tensor::track_op));
        if !(need_x || need_w || need_b) {
            return Ok((None, None, None));
        }
        let h = self.row_len(x.shape(), w.shape(), b.map(Tensor::shape))?;
        if grad.dims() != x.dims() {
            candle_core::bail!(
                "{}: gradient of shape {:?} for an input of shape {:?}",
                self.op_name(),
                grad.dims(),
                x.dims()
            );
        }
        let Some(stats) = self.stats.get() else {
            candle_core::bail!("{}: backward before forward", self.op_name());
        };
        let (dx, dw, db) = cpu::with_values(x, |xv| {
            cpu::with_values(w, |wv| {
                cpu::with_values(grad, |dy| {
                    Ok(self.backward_values(xv, wv, dy, stats, h, (need_x, need_w, need_b)))
                })
            })
        })?;
        let vector = |v: Option<Vec<f32>>| v.map(|v| cpu::tensor(v, &[h])).transpose();
        Ok((
            dx.map(|v| cpu::tensor(v, x.dims())).transpose()?,
            vector(dw)?,
            vector(db)?,
        ))
    }

    /// `dx = rstd (g - mean(g) - xhat mean(g xhat))` per row (`g = dy * w`; no `mean(g)` term for RMS
    /// norm), `dw = sum_rows dy * xhat`, `db = sum_rows dy`, each computed only where asked.
    #[allow(clippy::type_complexity)]
    fn backward_values(
        &self,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        stats: &[f32],
        h: usize,
        (need_x, need_w, need_b): (bool, bool, bool),
    ) -> (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>) {
        let n = x.len();
        let rows = n.checked_div(h).unwrap_or(0);
        let centred = self.centred;
        // One block of rows: writes its rows of dx (if asked) and returns its partial dw and db sums.
        let block = |first: usize, count: usize, dx: Option<&mut [MaybeUninit<f32>]>| {
            let mut dw = if need_w { vec![0f32; h] } else { Vec::new() };
            let mut db = if need_b { vec![0f32; h] } else { Vec::new() };
            cpu::vectorised(
                #[inline(always)]
                || {
                    for row in first..first + count {
                        let (x, dy) = (&x[row * h..][..h], &dy[row * h..][..h]);
                        let (mean, rstd) = (stats[2 * row], stats[2 * row + 1]);
                        for ((acc, &x), &dy) in dw.iter_mut().zip(x).zip(dy) {
                            *acc += dy * ((x - mean) * rstd);
                        }
                        for (acc, &dy) in db.iter_mut().zip(dy) {
                            *acc += dy;
                        }
                    }
                    if let Some(dx) = dx {
                        for (r, dx) in dx.chunks_mut(h.max(1)).enumerate() {
                            let row = first + r;
                            let (x, dy) = (&x[row * h..][..h], &dy[row * h..][..h]);
                            let (mean, rstd) = (stats[2 * row], stats[2 * row + 1]);
                            // sum_j g_j and sum_j g_j xhat_j (g = dy * w), one accumulator each: a loop with two
                            // accumulators vectorises poorly.
                            let sg = sum_by3(
                                x,
                                dy,
                                w,
                                #[inline(always)]
                                |_, dy, w| dy * w,
                            );
                            let sgx = sum_by3(
                                x,
                                dy,
                                w,
                                #[inline(always)]
                                |x, dy, w| dy * w * ((x - mean) * rstd),
                            );
                            let c1 = if centred { sg / h as f32 } else { 0.0 };
                            let c2 = sgx / h as f32;
                            for (((o, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                                let xhat = (x - mean) * rstd;
                                o.write(rstd * (dy * w - c1 - xhat * c2));
                            }
                        }
                    }
                },
            );
            (dw, db)
        };
        let rpb = rows_per_block(h);
        let blocks = rows.div_ceil(rpb);
        let mut dx = need_x.then(|| Vec::with_capacity(n));
        let partials: Vec<(Vec<f32>, Vec<f32>)> = match dx.as_mut() {
            Some(dx) => {
                let out = &mut dx.spare_capacity_mut()[..n];
                if blocks <= 1 {
                    vec![block(0, rows, Some(out))]
                } else {
                    out.par_chunks_mut(rpb * h)
                        .enumerate()
                        .map(|(i, o)| block(i * rpb, o.len() / h, Some(o)))
                        .collect()
                }
            }
            None if blocks <= 1 => vec![block(0, rows, None)],
            None => (0..blocks)
                .into_par_iter()
                .map(|i| block(i * rpb, rpb.min(rows - i * rpb), None))
                .collect(),
        };
        if let Some(dx) = dx.as_mut() {
            // SAFETY: with rows > 0 the blocks cover `dx[..n]` row by row and each row's loop writes all `h`
            // values (`x`, `dy`, `w` have `h` values a row); with no rows `n` is 0 (or `h` is 0, and so `n`).
            unsafe { dx.set_len(n) };
        }
        // Block partial sums added in block order: the same result whatever ran where.
        let total = |part: fn(&(Vec<f32>, Vec<f32>)) -> &Vec<f32>| {
            let mut sum = vec![0f32; h];
            for p in &partials {
                for (s, &v) in sum.iter_mut().zip(part(p)) {
                    *s += v;
                }
            }
            sum
        };
        let dw = need_w.then(|| total(|p| &p.0));
        let db = need_b.then(|| total(|p| &p.1));
        (dx, dw, db)
    }
}

impl CustomOp2 for Norm {
    fn name(&self) -> &'static str {
        self.op_name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = self.row_len(l1.shape(), l2.shape(), None)?;
        let y = self.forward(cpu::slice(s1, l1)?, h, cpu::slice(s2, l2)?, None)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, None, grad_res)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Norm {
    fn name(&self) -> &'static str {
        self.op_name()
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
        let h = self.row_len(l1.shape(), l2.shape(), Some(l3.shape()))?;
        let b = cpu::slice(s3, l3)?;
        let y = self.forward(cpu::slice(s1, l1)?, h, cpu::slice(s2, l2)?, Some(b))?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Grads> {
        self.backward(x, w, Some(b), grad_res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::composed;
    use candle_core::{DType, Device, Var};
    use rand::{Rng, SeedableRng};

    /// A seeded `N(mean, scale^2)` f32 tensor.
    fn seeded(shape: &[usize], seed: u64, mean: f32, scale: f32) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| mean + scale * rng.sample::<f32, _>(rand_distr::StandardNormal))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Every element within `tol * (1 + |want|)`.
    fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
        assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
        for (i, (a, b)) in values(got).iter().zip(values(want)).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    /// Row counts: 6, 7 (odd), 1 with size-1 dimensions, 5 rows of H = 1, 37 rows of 768 (two blocks of 21
    /// rows, the second partial), 300 rows of 96 (two blocks).
    const SHAPES: [&[usize]; 6] = [
        &[2, 3, 5],
        &[7, 33],
        &[1, 1, 768],
        &[5, 1],
        &[37, 768],
        &[3, 100, 96],
    ];

    /// Which norm: layer norm with or without a bias, or RMS norm.
    #[derive(Clone, Copy, Debug)]
    enum Kind {
        LayerBias,
        Layer,
        Rms,
    }

    fn run(kind: Kind, fused: bool, x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        let eps = 1e-5;
        match (kind, fused) {
            (Kind::LayerBias, true) => layer_norm(x, w, Some(b), eps),
            (Kind::LayerBias, false) => composed::layer_norm(x, w, Some(b), eps),
            (Kind::Layer, true) => layer_norm(x, w, None, eps),
            (Kind::Layer, false) => composed::layer_norm(x, w, None, eps),
            (Kind::Rms, true) => rms_norm(x, w, eps),
            (Kind::Rms, false) => composed::rms_norm(x, w, eps),
        }
        .unwrap()
    }

    /// Inputs for `shape`: x (mean 0.5, sd 2), weight around 1, bias, and the output weights of the loss.
    fn inputs(shape: &[usize], seed: u64) -> [Tensor; 4] {
        let h = *shape.last().unwrap();
        [
            seeded(shape, seed, 0.5, 2.0),
            seeded(&[h], seed + 1, 1.0, 0.2),
            seeded(&[h], seed + 2, 0.0, 1.0),
            seeded(shape, seed + 3, 0.0, 1.0),
        ]
    }

    /// Forward and the gradients of x, weight and bias (all trained) of `sum(norm(x) * r)`.
    fn forward_backward(kind: Kind, fused: bool, t: &[Tensor; 4]) -> [Option<Tensor>; 4] {
        let vars: Vec<Var> = t[..3]
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let (x, w, b) = (
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
        );
        let y = run(kind, fused, x, w, b);
        let grads = (&y * &t[3]).unwrap().sum_all().unwrap().backward().unwrap();
        [
            Some(y.clone()),
            grads.get(x).cloned(),
            grads.get(w).cloned(),
            grads.get(b).cloned(),
        ]
    }

    #[test]
    fn norms_match_the_composed_forms_forward_and_gradients() {
        for kind in [Kind::LayerBias, Kind::Layer, Kind::Rms] {
            for (k, shape) in SHAPES.iter().enumerate() {
                let t = inputs(shape, 100 + 10 * k as u64);
                let got = forward_backward(kind, true, &t);
                let want = forward_backward(kind, false, &t);
                for (i, part) in ["forward", "d x", "d weight", "d bias"].iter().enumerate() {
                    let what = format!("{kind:?} {shape:?} {part}");
                    match (&got[i], &want[i]) {
                        (Some(g), Some(w)) => assert_close(&what, g, w, 2e-5),
                        (None, None) => {
                            assert!(matches!(kind, Kind::Layer | Kind::Rms) && i == 3, "{what}")
                        }
                        _ => panic!("{what}: one has a gradient, the other not"),
                    }
                }
            }
        }
    }

    #[test]
    fn frozen_arguments_get_no_gradient() {
        let [x, w, b, r] = inputs(&[37, 768], 7);
        let (xv, wv, bv) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&w).unwrap(),
            Var::from_tensor(&b).unwrap(),
        );
        let loss = |y: Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        // Prompt tuning / LoRA: only the input is trained.
        let grads = loss(layer_norm(xv.as_tensor(), &w, Some(&b), 1e-5).unwrap());
        assert!(grads.get(xv.as_tensor()).is_some());
        assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
        // BitFit in the first layer: only the bias, with the composed form's values.
        let grads = loss(layer_norm(&x, &w, Some(bv.as_tensor()), 1e-5).unwrap());
        assert!(grads.get(&x).is_none() && grads.get(&w).is_none());
        let db = grads.get(bv.as_tensor()).expect("bias gradient");
        let want = loss(composed::layer_norm(&x, &w, Some(bv.as_tensor()), 1e-5).unwrap());
        assert_close("bias only", db, want.get(bv.as_tensor()).unwrap(), 2e-5);
        // Full fine-tuning of the weight with a frozen input and bias.
        let grads = loss(layer_norm(&x, wv.as_tensor(), Some(&b), 1e-5).unwrap());
        assert!(
            grads.get(&x).is_none()
                && grads.get(&b).is_none()
                && grads.get(wv.as_tensor()).is_some()
        );
        let grads = loss(rms_norm(&x, wv.as_tensor(), 1e-5).unwrap());
        assert!(grads.get(&x).is_none() && grads.get(wv.as_tensor()).is_some());
        let grads = loss(rms_norm(xv.as_tensor(), &w, 1e-5).unwrap());
        assert!(grads.get(&w).is_none() && grads.get(xv.as_tensor()).is_some());
    }

    #[test]
    fn results_are_bit_identical_run_to_run_and_across_thread_counts() {
        // 300 rows in two blocks: the weight and bias gradients add two partial sums.
        let t = inputs(&[3, 100, 96], 3);
        for kind in [Kind::LayerBias, Kind::Rms] {
            let first = forward_backward(kind, true, &t);
            let in_pool = |threads: usize| {
                crate::cpu::test_pool(threads).install(|| forward_backward(kind, true, &t))
            };
            for again in [forward_backward(kind, true, &t), in_pool(1), in_pool(3)] {
                for (a, b) in first.iter().zip(&again) {
                    match (a, b) {
                        (Some(a), Some(b)) => assert_eq!(values(a), values(b), "{kind:?}"),
                        (a, b) => assert_eq!(a.is_some(), b.is_some(), "{kind:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn f64_inputs_fall_back_to_the_composed_forms() {
        let t = inputs(&[7, 33], 5);
        let t64: Vec<Tensor> = t.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect();
        for kind in [Kind::LayerBias, Kind::Layer, Kind::Rms] {
            let y64 = run(kind, true, &t64[0], &t64[1], &t64[2]);
            assert_eq!(y64.dtype(), DType::F64);
            assert_eq!(
                values(&y64),
                values(&run(kind, false, &t64[0], &t64[1], &t64[2])),
                "{kind:?}"
            );
            assert_close(
                &format!("{kind:?}"),
                &run(kind, true, &t[0], &t[1], &t[2]),
                &y64,
                1e-5,
            );
        }
    }

    #[test]
    fn a_weight_of_the_wrong_shape_is_refused() {
        let [x, w, b, _] = inputs(&[2, 8], 9);
        let err = layer_norm(&x, &w.reshape((1, 8)).unwrap(), Some(&b), 1e-5)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layer-norm") && err.contains("[1, 8]"),
            "{err}"
        );
        let err = layer_norm(&x, &w, Some(&b.narrow(0, 0, 4).unwrap()), 1e-5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bias has shape [4]"), "{err}");
        let err = rms_norm(&x, &w.narrow(0, 0, 3).unwrap(), 1e-5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rms-norm") && err.contains("[3]"), "{err}");
    }
}
