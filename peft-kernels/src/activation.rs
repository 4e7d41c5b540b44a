//! Elementwise activations as fused custom ops: GELU (tanh and erf forms), SiLU and LLaMA's `silu(gate) * up`.
//!
//! Each is one candle op: the forward is one pass over the input, the backward one pass over the saved input
//! and the incoming gradient (no composed graph, no temporaries). The passes run on rayon in chunks of 16K
//! elements, each chunk in a loop compiled for the CPU's widest vector unit ([`super::cpu::vectorised`]); the
//! transcendental parts are branch-free f32 formulas of ours so that those loops vectorise. They also avoid
//! the cancellation of `1 + tanh(u)` and `1 + erf(z)` for negative inputs: GELU-tanh is computed as
//! `x * sigmoid(2u)` (the same function) and GELU-erf from `erfc`, which keeps the relative error small in
//! the negative tail where candle's forms lose it (the tests measure both against f64 on dense grids).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let x = Tensor::new(&[-1f32, 0., 2.], &Device::Cpu).unwrap();
//! let y = peft_kernels::gelu_tanh(&x).unwrap().to_vec1::<f32>().unwrap();
//! assert_eq!(y[1], 0.0);
//! assert!((y[2] - 1.954_6).abs() < 1e-4 && (y[0] + 0.158_8).abs() < 1e-4);
//! ```

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu;
use peft_core::Result;

/// GELU, tanh approximation (`gelu_new`, PyTorch's `approximate="tanh"`, candle's `Tensor::gelu`):
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
///
/// One fused op on f32 CPU tensors; elsewhere candle's `gelu` (same function).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if !cpu::covers(x) {
        return Ok(x.gelu()?);
    }
    Ok(x.contiguous()?.apply_op1(Unary::GeluTanh)?)
}

/// GELU, exact form `x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))` (BERT's `gelu`, candle's `gelu_erf`).
///
/// One fused op on f32 CPU tensors; elsewhere candle's `gelu_erf` (same function).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !cpu::covers(x) {
        return Ok(x.gelu_erf()?);
    }
    Ok(x.contiguous()?.apply_op1(Unary::GeluErf)?)
}

/// SiLU (swish) `x * sigmoid(x)`.
///
/// One fused op on f32 CPU tensors; elsewhere candle's `silu` (same function).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if !cpu::covers(x) {
        return Ok(x.silu()?);
    }
    Ok(x.contiguous()?.apply_op1(Unary::Silu)?)
}

/// `silu(gate) * up` (LLaMA's SwiGLU MLP); `gate` and `up` have the same shape (no broadcasting). Each of
/// the two gets its gradient where it is trained (or depends on something trained).
///
/// One fused op when both are f32 CPU tensors; otherwise candle's `silu` and `mul` (same function).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !(cpu::covers(gate) && cpu::covers(up)) {
        return Ok((gate.silu()? * up)?);
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)?)
}

// ---- Scalar kernels: `#[inline(always)]` so that they melt into the vectorised loops. ----

/// `sqrt(2 / pi)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
const GELU_CUBIC: f32 = 0.044_715;
/// `1 / sqrt(2 pi)`, the normal density at 0.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// GELU-tanh: `0.5 x (1 + tanh u) = x / (1 + e^(-2u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)`.
#[inline(always)]
fn gelu_tanh_fwd(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * x * (1.0 + GELU_CUBIC * x * x);
    x / (1.0 + cpu::exp(-2.0 * u))
}

/// d GELU-tanh / dx `= s + 2 x s (1 - s) u'` with `s = sigmoid(2u)`; `1 - s = e s` (`e = e^(-2u)`) keeps
/// its precision where `s` is near 1.
#[inline(always)]
fn gelu_tanh_grad(x: f32) -> f32 {
    let x2 = x * x;
    let u = SQRT_2_OVER_PI * x * (1.0 + GELU_CUBIC * x2);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x2);
    let e = cpu::exp(-2.0 * u);
    let s = 1.0 / (1.0 + e);
    let d = s * (1.0 + 2.0 * x * (e * s) * du);
    // Below u = -40 the true value is under 1e-32; flushing it keeps `s`'s floor (`e` saturates near 1e38)
    // from being multiplied by the huge `x du` far out.
    if u < -40.0 {
        0.0
    } else {
        d
    }
}

/// The standard normal CDF `Phi(x) = 0.5 erfc(-x / sqrt 2)`, branch-free.
///
/// For `a = |x|`, `Phi(-a) = 0.5 t e^(G(t) - a^2/2)` with `t = 1 / (1 + 0.4 a)`, where
/// `G(t) = ln(2 Phi(-a) / t) + a^2/2` is smooth on `t` in `(0, 1]`: a degree-10 polynomial (Chebyshev
/// interpolation of `G` on `a` in `[0, 14]`, fitted for this crate in 40-digit arithmetic; fit error 1.4e-8)
/// gives `Phi(-a)`, then `Phi(x) = 1 - Phi(-x)` for `x >= 0` (no cancellation anywhere: both parts are at
/// most 1/2). Measured against f64: within 1.3e-7 absolute everywhere, 3.5e-7 relative for `x >= -1`, the
/// relative error then growing like `a^2 * 6e-8` (the rounding of the exponent) into the tail. `a` beyond 14
/// is clamped inside `G` only: `Phi(-a)` has then underflowed f32 anyway (the exponential flushes to 0).
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    // G as a polynomial in s = (33 t - 19) / 14, which maps t in [1/6.6, 1] onto [-1, 1].
    const G: [f32; 11] = [
        -0.477_575_28,
        0.517_424_47,
        -0.017_238_194,
        -0.028_855_355,
        0.004_483_876_6,
        0.003_071_048_7,
        -0.001_333_354_1,
        -0.000_222_118_04,
        0.000_289_443_75,
        -9.266_522e-6,
        -3.527_988_6e-5,
    ];
    let a = x.abs();
    let ac = if a > 14.0 { 14.0 } else { a };
    let t = 1.0 / (1.0 + 0.4 * ac);
    let s = t * (33.0 / 14.0) - 19.0 / 14.0;
    let mut g = G[10];
    for &c in G[..10].iter().rev() {
        g = g * s + c;
    }
    let tail = 0.5 * t * cpu::exp(g - 0.5 * (a * a));
    if x < 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

/// GELU-erf: `x Phi(x)`.
#[inline(always)]
fn gelu_erf_fwd(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// d GELU-erf / dx `= Phi(x) + x phi(x)`, `phi` the normal density.
#[inline(always)]
fn gelu_erf_grad(x: f32) -> f32 {
    normal_cdf(x) + x * (INV_SQRT_2PI * cpu::exp(-0.5 * (x * x)))
}

/// SiLU: `x / (1 + e^-x)`.
#[inline(always)]
fn silu_fwd(x: f32) -> f32 {
    x / (1.0 + cpu::exp(-x))
}

/// d SiLU / dx `= s (1 + x (1 - s))`, `s = sigmoid(x)`, `1 - s = e s` (`e = e^-x`).
#[inline(always)]
fn silu_grad(x: f32) -> f32 {
    let e = cpu::exp(-x);
    let s = 1.0 / (1.0 + e);
    s * (1.0 + x * (e * s))
}

/// The backward kernels: the incoming gradient times the derivative.
#[inline(always)]
fn gelu_tanh_bwd(x: f32, dy: f32) -> f32 {
    dy * gelu_tanh_grad(x)
}

#[inline(always)]
fn gelu_erf_bwd(x: f32, dy: f32) -> f32 {
    dy * gelu_erf_grad(x)
}

#[inline(always)]
fn silu_bwd(x: f32, dy: f32) -> f32 {
    dy * silu_grad(x)
}

/// `silu(g) * u`.
#[inline(always)]
fn silu_mul_fwd(g: f32, u: f32) -> f32 {
    silu_fwd(g) * u
}

/// The gate's gradient of `silu(g) * u`: `dy u silu'(g)`.
#[inline(always)]
fn silu_mul_dgate(g: f32, u: f32, dy: f32) -> f32 {
    dy * u * silu_grad(g)
}

/// Up's gradient of `silu(g) * u`: `dy silu(g)`.
#[inline(always)]
fn silu_mul_dup(g: f32, dy: f32) -> f32 {
    dy * silu_fwd(g)
}

/// Both gradients of `silu(g) * u`, sharing `e^-g` (the same values as the two kernels above).
#[inline(always)]
fn silu_mul_grads(g: f32, u: f32, dy: f32) -> (f32, f32) {
    let e = cpu::exp(-g);
    let s = 1.0 / (1.0 + e);
    (dy * u * (s * (1.0 + g * (e * s))), dy * (g / (1.0 + e)))
}

// ---- Parallel, vectorised maps. The kernels passed in must be `#[inline(always)]` (see `cpu::vectorised`). ----

/// Elements per rayon task: 64 KiB of f32 per input, enough to pay for the task, small enough to balance.
const CHUNK: usize = 1 << 14;

/// `f(a[i])` for every `i`.
fn map1(a: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    map3(
        a,
        a,
        a,
        #[inline(always)]
        |a, _, _| f(a),
    )
}

/// `f(a[i], b[i])` for every `i` (`b` as long as `a`).
fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    map3(
        a,
        b,
        b,
        #[inline(always)]
        |a, b, _| f(a, b),
    )
}

/// `f(a[i], b[i], c[i])` for every `i` (all three of the same length).
fn map3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert!(
        a.len() == b.len() && a.len() == c.len(),
        "elementwise map over slices of different lengths"
    );
    let n = a.len();
    let mut out = Vec::with_capacity(n);
    let body = |start: usize, o: &mut [MaybeUninit<f32>]| {
        let end = start + o.len();
        let (a, b, c) = (&a[start..end], &b[start..end], &c[start..end]);
        cpu::vectorised(
            #[inline(always)]
            || {
                for (((o, &a), &b), &c) in o.iter_mut().zip(a).zip(b).zip(c) {
                    o.write(f(a, b, c));
                }
            },
        )
    };
    let o = &mut out.spare_capacity_mut()[..n];
    if n <= CHUNK {
        body(0, o);
    } else {
        o.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, o)| body(i * CHUNK, o));
    }
    // SAFETY: the chunks cover `out[..n]` and each loop writes every element of its chunk (the zipped input
    // slices have the chunk's length).
    unsafe { out.set_len(n) };
    out
}

/// `f(a[i], b[i], c[i])` for every `i`, into two outputs at once.
fn map3_pair(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> (f32, f32) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    assert!(
        a.len() == b.len() && a.len() == c.len(),
        "elementwise map over slices of different lengths"
    );
    let n = a.len();
    let (mut out1, mut out2) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let body = |start: usize, o1: &mut [MaybeUninit<f32>], o2: &mut [MaybeUninit<f32>]| {
        let end = start + o1.len();
        let (a, b, c) = (&a[start..end], &b[start..end], &c[start..end]);
        cpu::vectorised(
            #[inline(always)]
            || {
                for ((((o1, o2), &a), &b), &c) in
                    o1.iter_mut().zip(o2.iter_mut()).zip(a).zip(b).zip(c)
                {
                    let (v1, v2) = f(a, b, c);
                    o1.write(v1);
                    o2.write(v2);
                }
            },
        )
    };
    let (o1, o2) = (
        &mut out1.spare_capacity_mut()[..n],
        &mut out2.spare_capacity_mut()[..n],
    );
    if n <= CHUNK {
        body(0, o1, o2);
    } else {
        o1.par_chunks_mut(CHUNK)
            .zip(o2.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(i, (o1, o2))| body(i * CHUNK, o1, o2));
    }
    // SAFETY: the chunks of both outputs have the same lengths (same `n`, same chunk size) and cover their
    // first `n` elements; each loop writes every element of both chunks.
    unsafe {
        out1.set_len(n);
        out2.set_len(n);
    }
    (out1, out2)
}

// ---- The custom ops. ----

/// The one-argument activations; each is its own op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unary {
    GeluTanh,
    GeluErf,
    Silu,
}

impl Unary {
    fn forward(self, x: &[f32]) -> Vec<f32> {
        match self {
            Unary::GeluTanh => map1(x, gelu_tanh_fwd),
            Unary::GeluErf => map1(x, gelu_erf_fwd),
            Unary::Silu => map1(x, silu_fwd),
        }
    }

    fn backward(self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        match self {
            Unary::GeluTanh => map2(x, dy, gelu_tanh_bwd),
            Unary::GeluErf => map2(x, dy, gelu_erf_bwd),
            Unary::Silu => map2(x, dy, silu_bwd),
        }
    }
}

impl CustomOp1 for Unary {
    fn name(&self) -> &'static str {
        match self {
            Unary::GeluTanh => "fused-gelu-tanh",
            Unary::GeluErf => "fused-gelu-erf",
            Unary::Silu => "fused-silu",
        }
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu::slice(storage, layout)?;
        Ok((CpuStorage::F32(self.forward(x)), layout.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        if grad_res.dims() != arg.dims() {
            candle_core::bail!(
                "{}: gradient of shape {:?} for an input of shape {:?}",
                self.name(),
                grad_res.dims(),
                arg.dims()
            );
        }
        let dx = cpu::with_values(arg, |x| {
            cpu::with_values(grad_res, |dy| Ok(self.backward(x, dy)))
        })?;
        Ok(Some(cpu::tensor(dx, arg.dims())?))
    }
}

/// The op behind [`silu_mul`]: arguments `gate`, `up`.
struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fused-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "silu_mul: gate {:?} and up {:?} must have the same shape",
                l1.shape().dims(),
                l2.shape().dims()
            );
        }
        let (gate, up) = (cpu::slice(s1, l1)?, cpu::slice(s2, l2)?);
        let y = map2(gate, up, silu_mul_fwd);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (need_gate, need_up) = (gate.track_op(), up.track_op());
        if grad_res.dims() != gate.dims() {
            candle_core::bail!(
                "silu_mul: gradient of shape {:?} for inputs of shape {:?}",
                grad_res.dims(),
                gate.dims()
            );
        }
        let dims = gate.dims();
        cpu::with_values(gate, |g| {
            cpu::with_values(up, |u| {
                cpu::with_values(grad_res, |dy| {
                    // d/dgate = dy * up * silu'(gate), d/dup = dy * silu(gate).
                    let (dg, du) = match (need_gate, need_up) {
                        (true, true) => {
                            let (dg, du) = map3_pair(g, u, dy, silu_mul_grads);
                            (Some(dg), Some(du))
                        }
                        (true, false) => (Some(map3(g, u, dy, silu_mul_dgate)), None),
                        (false, true) => (None, Some(map2(g, dy, silu_mul_dup))),
                        (false, false) => (None, None),
                    };
                    Ok((
                        dg.map(|v| cpu::tensor(v, dims)).transpose()?,
                        du.map(|v| cpu::tensor(v, dims)).transpose()?,
                    ))
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

    /// A seeded `N(0, scale^2)` f32 tensor.
    fn seeded(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| scale * rng.sample::<f32, _>(rand_distr::StandardNormal))
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

    /// One element, a size-1 dimension, an odd count, and more than one chunk with a partial last one.
    const SHAPES: [&[usize]; 4] = [&[1], &[3, 1, 5], &[4, 7, 33], &[5, 8, 1000]];

    type Op = fn(&Tensor) -> Result<Tensor>;

    /// The fused ops and candle's (differentiable) forms of the same functions.
    fn unary_ops() -> [(&'static str, Op, Op); 3] {
        [
            ("gelu_tanh", gelu_tanh, |x| Ok(x.gelu()?)),
            ("gelu_erf", gelu_erf, |x| Ok(x.gelu_erf()?)),
            ("silu", silu, |x| Ok(x.silu()?)),
        ]
    }

    #[test]
    fn unary_ops_match_candle_forward_and_gradient() {
        for (name, fused, reference) in unary_ops() {
            for (k, shape) in SHAPES.iter().enumerate() {
                // Scale 3 reaches well into both tails.
                let x = seeded(shape, 10 + k as u64, 3.0);
                let r = seeded(shape, 20 + k as u64, 1.0);
                let run = |op: Op| {
                    let v = Var::from_tensor(&x).unwrap();
                    let y = op(v.as_tensor()).unwrap();
                    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    (y, grads.get(v.as_tensor()).expect("input gradient").clone())
                };
                let ((y, g), (y_ref, g_ref)) = (run(fused), run(reference));
                assert_close(&format!("{name} {shape:?} forward"), &y, &y_ref, 1e-6);
                assert_close(&format!("{name} {shape:?} gradient"), &g, &g_ref, 1e-5);
            }
        }
    }

    #[test]
    fn silu_mul_matches_candle_and_skips_frozen_arguments() {
        for (k, shape) in SHAPES.iter().enumerate() {
            let g0 = seeded(shape, 30 + k as u64, 3.0);
            let u0 = seeded(shape, 40 + k as u64, 1.0);
            let r = seeded(shape, 50 + k as u64, 1.0);
            let (g, u) = (
                Var::from_tensor(&g0).unwrap(),
                Var::from_tensor(&u0).unwrap(),
            );
            let (gt, ut) = (g.as_tensor(), u.as_tensor());
            let y = silu_mul(gt, ut).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let (gr, ur) = (
                Var::from_tensor(&g0).unwrap(),
                Var::from_tensor(&u0).unwrap(),
            );
            let y_ref = (gr.as_tensor().silu().unwrap() * ur.as_tensor()).unwrap();
            let grads_ref = (&y_ref * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert_close("silu_mul forward", &y, &y_ref, 1e-6);
            let dg = grads.get(gt).unwrap();
            let du = grads.get(ut).unwrap();
            assert_close(
                "silu_mul d gate",
                dg,
                grads_ref.get(gr.as_tensor()).unwrap(),
                1e-5,
            );
            assert_close(
                "silu_mul d up",
                du,
                grads_ref.get(ur.as_tensor()).unwrap(),
                1e-5,
            );

            // A frozen `up` (plain tensor): only the gate's gradient, the same values.
            let grads = (silu_mul(gt, &u0).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert!(grads.get(&u0).is_none());
            assert_eq!(values(grads.get(gt).unwrap()), values(dg));
            // A frozen gate: only up's.
            let grads = (silu_mul(&g0, ut).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert!(grads.get(&g0).is_none());
            assert_eq!(values(grads.get(ut).unwrap()), values(du));
        }
        let err = silu_mul(&seeded(&[2, 3], 1, 1.0), &seeded(&[3, 2], 2, 1.0)).unwrap_err();
        assert!(err.to_string().contains("silu_mul"), "{err}");
    }

    #[test]
    fn f64_inputs_fall_back_to_candle() {
        let x = seeded(&[4, 7, 33], 60, 3.0);
        let x64 = x.to_dtype(DType::F64).unwrap();
        for (name, fused, reference) in unary_ops() {
            let y64 = fused(&x64).unwrap();
            assert_eq!(y64.dtype(), DType::F64);
            assert_eq!(values(&y64), values(&reference(&x64).unwrap()), "{name}");
            assert_close(name, &fused(&x).unwrap(), &y64, 1e-6);
        }
        let u64 = seeded(&[4, 7, 33], 61, 1.0).to_dtype(DType::F64).unwrap();
        let y64 = silu_mul(&x64, &u64).unwrap();
        assert_eq!(y64.dtype(), DType::F64);
        let u = u64.to_dtype(DType::F32).unwrap();
        assert_close("silu_mul", &silu_mul(&x, &u).unwrap(), &y64, 1e-6);
    }

    /// The largest error of `f32_fn` against `f64_fn` over `steps + 1` points of `[lo, hi]`, as
    /// `|f32 - f64| / (|f64| + floor)`, and where it happens.
    fn worst(
        lo: f64,
        hi: f64,
        floor: f64,
        f32_fn: impl Fn(f32) -> f32,
        f64_fn: impl Fn(f64) -> f64,
    ) -> (f64, f32) {
        let steps = 1_000_000;
        let mut worst = (0f64, 0f32);
        for i in 0..=steps {
            let x = (lo + (hi - lo) * i as f64 / steps as f64) as f32;
            let want = f64_fn(x as f64);
            let err = (f32_fn(x) as f64 - want).abs() / (want.abs() + floor);
            if err > worst.0 {
                worst = (err, x);
            }
        }
        worst
    }

    /// Phi in f64, from libm's `erfc` (through candle).
    fn phi64(x: f64) -> f64 {
        0.5 * candle_core::cpu::erf::erfc_f64(-x / std::f64::consts::SQRT_2)
    }

    #[test]
    fn kernels_are_accurate_on_dense_grids() {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let gelu_tanh64 = |x: f64| x / (1.0 + (-2.0 * c * (x + 0.044715 * x * x * x)).exp());
        let gelu_tanh_grad64 = |x: f64| {
            let s = 1.0 / (1.0 + (-2.0 * c * (x + 0.044715 * x * x * x)).exp());
            s + 2.0 * x * s * (1.0 - s) * c * (1.0 + 3.0 * 0.044715 * x * x)
        };
        let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        // (name, worst error, bound). Errors are relative to the value, or to max(1, |value|) (floor 1) where
        // an absolute error is what counts. In f32 the relative error of e^v grows like |v| * 6e-8 (v itself is
        // rounded), so it grows into the negative tails, where the values are tiny; candle's `1 + tanh` and
        // `1 + erf` lose far more there (2e-5 relative at x = -3 already, all digits by x = -9).
        let checks = [
            // Phi within 2e-7 absolute: the erf it stands for (2 Phi(sqrt 2 z) - 1) within 4e-7 of f64's.
            (
                "Phi, absolute",
                worst(-14.0, 14.0, 1.0, normal_cdf, phi64),
                2e-7,
            ),
            ("Phi", worst(-12.0, 12.0, 0.0, normal_cdf, phi64), 1.2e-5),
            (
                "Phi from -5",
                worst(-5.0, 12.0, 0.0, normal_cdf, phi64),
                2e-6,
            ),
            (
                "Phi from -1",
                worst(-1.0, 12.0, 0.0, normal_cdf, phi64),
                5e-7,
            ),
            (
                "gelu_tanh",
                worst(-9.0, 12.0, 0.0, gelu_tanh_fwd, gelu_tanh64),
                2e-5,
            ),
            (
                "gelu_tanh from -3",
                worst(-3.0, 12.0, 0.0, gelu_tanh_fwd, gelu_tanh64),
                1.5e-6,
            ),
            (
                "gelu_tanh from -1",
                worst(-1.0, 12.0, 0.0, gelu_tanh_fwd, gelu_tanh64),
                5e-7,
            ),
            (
                "gelu_tanh'",
                worst(-9.0, 12.0, 1.0, gelu_tanh_grad, gelu_tanh_grad64),
                3e-7,
            ),
            (
                "gelu_erf",
                worst(-9.0, 12.0, 0.0, gelu_erf_fwd, |x| x * phi64(x)),
                6e-6,
            ),
            (
                "gelu_erf from -3",
                worst(-3.0, 12.0, 0.0, gelu_erf_fwd, |x| x * phi64(x)),
                1e-6,
            ),
            (
                "gelu_erf'",
                worst(-9.0, 12.0, 1.0, gelu_erf_grad, |x| phi64(x) + x * pdf(x)),
                3e-7,
            ),
            (
                "silu",
                worst(-80.0, 80.0, 0.0, silu_fwd, |x| x * sig(x)),
                5e-7,
            ),
            (
                "silu'",
                worst(-80.0, 80.0, 1.0, silu_grad, |x| {
                    sig(x) * (1.0 + x * (1.0 - sig(x)))
                }),
                3e-7,
            ),
        ];
        for (name, (err, at), bound) in checks {
            assert!(
                err < bound,
                "{name}: error {err:e} at {at} (bound {bound:e})"
            );
        }
        // Far out: exact limits, no NaN.
        assert_eq!(gelu_tanh_fwd(0.0), 0.0);
        assert_eq!(gelu_erf_fwd(0.0), 0.0);
        assert_eq!(normal_cdf(0.0), 0.5);
        assert_eq!(
            (gelu_tanh_fwd(50.0), gelu_erf_fwd(50.0), silu_fwd(120.0)),
            (50.0, 50.0, 120.0)
        );
        for x in [-1e4f32, -200.0, -120.0] {
            for v in [
                gelu_tanh_fwd(x),
                gelu_erf_fwd(x),
                silu_fwd(x),
                gelu_tanh_grad(x),
                gelu_erf_grad(x),
                silu_grad(x),
            ] {
                assert!(v.abs() < 1e-30, "{x}: {v}");
            }
        }
        assert!(
            gelu_tanh_fwd(f32::NAN).is_nan()
                && gelu_erf_fwd(f32::NAN).is_nan()
                && silu_fwd(f32::NAN).is_nan()
        );
    }
}
