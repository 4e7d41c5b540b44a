//! The fast [`FrozenProduct`]: `x W^T + b` as one candle op whose backward returns the input gradient only (and
//! a trained bias's column sums), on this crate's GEMM. Each output row starts as the bias and the product
//! accumulates onto it (no zero fill, no separate bias pass). f32 on the CPU runs the kernel; an f32 input
//! with a bf16 weight runs the mixed-precision kernel of [`crate::bf16`] (f32 output, the same gradients);
//! anything else runs the reference [`CandleProduct`].
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use peft_core::frozen::FrozenLinear;
//! let dev = Device::Cpu;
//! let w = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap();
//! let lin = FrozenLinear::new(w.clone(), None, &peft_kernels::frozen::FrozenGemm);
//! let x = Var::new(&[[1f32, 1.]], &dev).unwrap();
//! let y = lin.forward(x.as_tensor()).unwrap();
//! assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![3., 7., 11.]]);
//! let grads = y.sum_all().unwrap().backward().unwrap();
//! assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), vec![vec![9., 12.]]);
//! assert!(grads.get(&w).is_none());
//! ```

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use peft_core::frozen::{CandleProduct, FrozenProduct};
use peft_core::quantized::QuantizedWeight;
use peft_core::Result;

use crate::cpu::{self, Mat, Threads};
use crate::skinny;

/// The product every model of the zoo runs its frozen projections on.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrozenGemm;

impl FrozenProduct for FrozenGemm {
    fn affine(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        frozen_affine(x, weight, bias)
    }

    fn affine_quantized(
        &self,
        x: &Tensor,
        weight: &QuantizedWeight,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        crate::quantized::quantized_affine(x, weight, bias)
    }

    fn name(&self) -> String {
        crate::matmul_backend()
    }

    fn affine_low_rank(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        (a, b, scale): (&Tensor, &Tensor, f64),
    ) -> Result<Option<Tensor>> {
        crate::frozen_low_rank(x, weight, bias, a, b, scale)
    }

    fn input_grad(&self, dy: &Tensor, weight: &Tensor) -> Result<Tensor> {
        match kernel_weight(dy, weight) {
            Some(w) => Ok(w.input_grad(dy)?),
            None => CandleProduct.input_grad(dy, weight),
        }
    }

    fn input_grad_quantized(&self, dy: &Tensor, weight: &QuantizedWeight) -> Result<Tensor> {
        if !cpu::covers(dy) {
            return CandleProduct.input_grad(dy, &weight.dequantize()?);
        }
        Ok(crate::quantized::input_grad(dy, weight)?)
    }
}

/// `x W^T` over the last dimension of `x`, with a backward that yields the gradient of `x` only.
pub fn frozen_matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    frozen_affine(x, weight, None)
}

/// `x W^T + b` with a frozen `W`. A frozen `b` is held inside one single-argument op whose backward yields the
/// gradient of `x` only; a trained `b` (BitFit) is the op's second argument, whose gradient (the column sums
/// of the output gradient) the same kernel computes.
pub fn frozen_affine(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match kernel_weight(x, weight) {
        Some(w) if bias.is_none_or(cpu::covers) => apply(x, w, bias),
        // Only f32 on the CPU has the kernel; elsewhere candle's ops compute the same values.
        _ => CandleProduct.affine(x, weight, bias),
    }
}

/// The weight as this crate's kernels take it, for an f32 CPU `x` (an input, or an output gradient) and an
/// f32 or bf16 CPU weight; `None` where only the reference product covers them.
pub(crate) fn kernel_weight(x: &Tensor, weight: &Tensor) -> Option<OpWeight> {
    if !cpu::covers(x) {
        None
    } else if crate::bf16::is_bf16_on_cpu(weight) {
        Some(OpWeight::Bf16(weight.detach()))
    } else if cpu::covers(weight) {
        Some(OpWeight::Dense(weight.detach()))
    } else {
        None
    }
}

/// The frozen weight an op holds: f32 values, blocks of a quantized format that [`crate::quantized`] walks,
/// or bf16 values that [`crate::bf16`] multiplies.
#[derive(Clone)]
pub(crate) enum OpWeight {
    Dense(Tensor),
    Quantized(QuantizedWeight),
    Bf16(Tensor),
}

impl OpWeight {
    /// `(out, in)`.
    pub(crate) fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            OpWeight::Dense(w) | OpWeight::Bf16(w) => w.dims2(),
            OpWeight::Quantized(q) => Ok(q.dims()),
        }
    }

    /// `[m, n]` rows of `x W^T (+ bias)`.
    pub(crate) fn affine_rows(
        &self,
        x: &[f32],
        bias: Option<&[f32]>,
        m: usize,
    ) -> candle_core::Result<Vec<f32>> {
        match self {
            OpWeight::Dense(w) => affine_rows(x, w, bias, m),
            OpWeight::Quantized(q) => crate::quantized::affine_rows(x, q, bias, m),
            OpWeight::Bf16(w) => bf16_affine_rows(x, w, bias, m),
        }
    }

    /// `dy W` for `dy` `[m, n]` into `out` `[m, k]`: onto what `out` holds where `onto`, else over it. A
    /// quantized weight is walked by [`crate::quantized::input_grad`] instead, and refused here.
    pub(crate) fn input_grad_into(
        &self,
        dy: &[f32],
        out: &mut [f32],
        m: usize,
        onto: bool,
    ) -> candle_core::Result<()> {
        let (n, k) = self.dims()?;
        match self {
            OpWeight::Dense(w) => cpu::with_values(w, |w| {
                cpu::matmul(
                    Mat::rows(dy, n),
                    Mat::rows(w, k),
                    out,
                    (m, k, n),
                    onto,
                    Threads::All,
                );
                Ok(())
            }),
            // The bf16 products always add onto `out`; a fresh `out` is zeros.
            OpWeight::Bf16(w) => {
                let kernel = crate::bf16::Bf16Kernel::detect();
                crate::bf16::with_bf16_values(w, |w| {
                    crate::bf16::input_product(kernel, dy, w, out, (m, n, k), Threads::All);
                    Ok(())
                })
            }
            OpWeight::Quantized(_) => {
                candle_core::bail!(
                    "input_grad_into: a quantized weight takes quantized::input_grad"
                )
            }
        }
    }

    /// `dy W`.
    fn input_grad(&self, grad_res: &Tensor) -> candle_core::Result<Tensor> {
        if let OpWeight::Quantized(q) = self {
            return crate::quantized::input_grad(grad_res, q);
        }
        let (n, k) = self.dims()?;
        let m = grad_res.elem_count() / n.max(1);
        let mut grad = vec![0f32; m * k];
        cpu::with_values(grad_res, |dy| self.input_grad_into(dy, &mut grad, m, false))?;
        let mut in_dims = grad_res.dims().to_vec();
        *in_dims.last_mut().expect("rank >= 1") = k;
        cpu::tensor(grad, &in_dims)
    }
}

/// `x W^T + b` as the op of `weight`: a frozen `b` is held inside a single-argument op, a trained one is the
/// op's second argument. `x` and a bias are f32 on the CPU.
pub(crate) fn apply(x: &Tensor, weight: OpWeight, bias: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match bias {
        Some(b) if b.track_op() => {
            let op = FrozenMatmulTrainedBias { weight };
            Ok(x.apply_op2(&b.contiguous()?, op)?)
        }
        _ => {
            let op = FrozenMatmul {
                weight,
                bias: bias.map(|b| b.detach()),
            };
            Ok(x.apply_op1(op)?)
        }
    }
}

/// `m` rows of `n` outputs, each starting as the bias (or zero): the products accumulate onto them.
pub(crate) fn bias_rows(bias: Option<&[f32]>, m: usize, n: usize) -> Vec<f32> {
    match bias {
        Some(b) => b.repeat(m),
        None => vec![0f32; m * n],
    }
}

/// The `[m, n]` rows of `x W^T (+ bias)` for `x` `[m, k]` and `W` `[n, k]`: each row starts as the bias (or
/// zero) and the product accumulates onto it, so there is no separate bias pass.
fn affine_rows(
    x: &[f32],
    weight: &Tensor,
    bias: Option<&[f32]>,
    m: usize,
) -> candle_core::Result<Vec<f32>> {
    let (n, k) = weight.dims2()?;
    let mut out = bias_rows(bias, m, n);
    cpu::with_values(weight, |w| {
        if m <= skinny::MAX_ROWS && !cfg!(feature = "openblas") {
            skinny::product(x, w, &mut out, (m, n, k), bias.is_some());
        } else {
            cpu::matmul(
                Mat::rows(x, k),
                Mat::transposed(w, k),
                &mut out,
                (m, n, k),
                bias.is_some(),
                Threads::All,
            );
        }
        Ok(())
    })?;
    Ok(out)
}

/// [`affine_rows`] for a bf16 `W`: `x` rounded to bf16, f32 sums onto the bias.
fn bf16_affine_rows(
    x: &[f32],
    weight: &Tensor,
    bias: Option<&[f32]>,
    m: usize,
) -> candle_core::Result<Vec<f32>> {
    let (n, k) = weight.dims2()?;
    let mut out = bias_rows(bias, m, n);
    let kernel = crate::bf16::Bf16Kernel::detect();
    crate::bf16::with_bf16_values(weight, |w| {
        crate::bf16::product(kernel, x, w, &mut out, (m, n, k), Threads::All);
        Ok(())
    })?;
    Ok(out)
}

/// Checks the input's last dimension against the weight; returns (rows, output dims).
pub(crate) fn affine_shape(
    layout: &Layout,
    weight: &OpWeight,
) -> candle_core::Result<(usize, Vec<usize>)> {
    let dims = layout.shape().dims();
    let k = *dims
        .last()
        .ok_or_else(|| candle_core::Error::Msg("frozen matmul of a scalar".into()))?;
    let (n, wk) = weight.dims()?;
    if wk != k {
        candle_core::bail!(
            "frozen matmul: input has {k} features, weight expects {wk} (weight is [{n}, {wk}])"
        );
    }
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = n;
    Ok((layout.shape().elem_count() / k.max(1), out_dims))
}

/// Column sums of `dy` `[m, n]`: the gradient of a bias broadcast over the rows. Blocks of rows are summed in
/// parallel and the block sums added in order, so the result does not depend on the thread count.
fn column_sums(grad_res: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    use rayon::prelude::*;
    const BLOCK_ROWS: usize = 32;
    let sums = cpu::with_values(grad_res, |dy| {
        let partial: Vec<Vec<f32>> = dy
            .par_chunks(BLOCK_ROWS * n)
            .map(|block| {
                let mut acc = vec![0f32; n];
                for row in block.chunks_exact(n) {
                    acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
                acc
            })
            .collect();
        let mut total = vec![0f32; n];
        for p in &partial {
            total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
        }
        Ok(total)
    })?;
    cpu::tensor(sums, &[n])
}

/// The op behind [`frozen_matmul`] with a frozen (or no) bias; holds the `[out, in]` weight and the bias.
struct FrozenMatmul {
    weight: OpWeight,
    bias: Option<Tensor>,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, out_dims) = affine_shape(layout, &self.weight)?;
        let x = cpu::slice(storage, layout)?;
        let out = match &self.bias {
            Some(b) => cpu::with_values(b, |b| self.weight.affine_rows(x, Some(b), m))?,
            None => self.weight.affine_rows(x, None, m)?,
        };
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.weight.input_grad(grad_res)?))
    }
}

/// The op of a frozen weight with a trained bias (BitFit): arguments `x` and the `[out]` bias.
struct FrozenMatmulTrainedBias {
    weight: OpWeight,
}

impl CustomOp2 for FrozenMatmulTrainedBias {
    fn name(&self) -> &'static str {
        "frozen-matmul-trained-bias"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        bias_storage: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, out_dims) = affine_shape(x_layout, &self.weight)?;
        let n = self.weight.dims()?.0;
        if bias_layout.shape().dims() != [n] {
            candle_core::bail!(
                "frozen matmul: the bias has shape {:?}, the weight needs [{n}]",
                bias_layout.shape().dims()
            );
        }
        let x = cpu::slice(x_storage, x_layout)?;
        let bias = cpu::slice(bias_storage, bias_layout)?;
        let out = self.weight.affine_rows(x, Some(bias), m)?;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = self.weight.dims()?.0;
        let dx = if x.track_op() {
            Some(self.weight.input_grad(grad_res)?)
        } else {
            None
        };
        let db = if bias.track_op() {
            Some(column_sums(grad_res, n)?)
        } else {
            None
        };
        Ok((dx, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use peft_core::compare::max_abs_diff;
    use peft_core::frozen::FrozenLinear;
    use rand::{Rng, SeedableRng};

    fn seeded(dims: &[usize], seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1f32..1.)).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// `t` rounded to bf16 and back: what the bf16 product multiplies.
    fn rounded(t: &Tensor) -> Tensor {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    /// A bf16 weight with an f32 input: the forward, the input gradient and a trained bias's gradient equal
    /// the composed candle form on the rounded operands, for the GEMM (18 rows) and the few-rows path (5).
    #[test]
    fn a_bf16_weight_runs_the_mixed_precision_product_forward_and_backward() {
        for (seed, (b, t, k, n)) in [(2, 9, 37, 50), (1, 5, 64, 33)].into_iter().enumerate() {
            let seed = 10 * seed as u64;
            let w = seeded(&[n, k], seed).to_dtype(DType::BF16).unwrap();
            let wf = w.to_dtype(DType::F32).unwrap();
            let frozen_bias = seeded(&[n], seed + 1);
            let x = Var::from_tensor(&seeded(&[b, t, k], seed + 2)).unwrap();
            let gy = seeded(&[b, t, n], seed + 3);
            // Sums of k (or n) products of magnitude below 1, in f32, here and in candle's product.
            let tol = 2.0 * (k.max(n) * k.max(n)) as f32 * f32::EPSILON;

            let lin = FrozenLinear::new(w.clone(), Some(frozen_bias.clone()), &FrozenGemm);
            let y = lin.forward(x.as_tensor()).unwrap();
            assert_eq!((y.dtype(), y.dims()), (DType::F32, &[b, t, n][..]));
            let reference = rounded(x.as_tensor())
                .broadcast_matmul(&wf.t().unwrap())
                .unwrap()
                .broadcast_add(&frozen_bias)
                .unwrap();
            let d = max_abs_diff(&y, &reference).unwrap();
            assert!(d < tol, "{b}x{t}x{k} -> {n}: forward differs by {d}");
            let unrounded = x
                .as_tensor()
                .broadcast_matmul(&wf.t().unwrap())
                .unwrap()
                .broadcast_add(&frozen_bias)
                .unwrap();
            let d = max_abs_diff(&y, &unrounded).unwrap();
            assert!(d > 10.0 * tol, "the input was not rounded to bf16 ({d})");

            let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = grads.get(x.as_tensor()).expect("input gradient");
            let expected = rounded(&gy).broadcast_matmul(&wf).unwrap();
            let d = max_abs_diff(gx, &expected).unwrap();
            assert!(d < tol, "{b}x{t}x{k} -> {n}: input gradient differs by {d}");
            assert!(grads.get(&w).is_none() && grads.get(&frozen_bias).is_none());

            let trained = Var::from_tensor(&frozen_bias).unwrap();
            let y = lin
                .forward_with_bias(x.as_tensor(), Some(trained.as_tensor()))
                .unwrap();
            let reference = rounded(x.as_tensor())
                .broadcast_matmul(&wf.t().unwrap())
                .unwrap()
                .broadcast_add(trained.as_tensor())
                .unwrap();
            assert!(max_abs_diff(&y, &reference).unwrap() < tol);
            let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let db = grads.get(trained.as_tensor()).expect("bias gradient");
            let d = max_abs_diff(db, &gy.sum((0, 1)).unwrap()).unwrap();
            assert!(d < 1e-5, "bias gradient differs by {d}");
            let d = max_abs_diff(grads.get(x.as_tensor()).unwrap(), &expected).unwrap();
            assert!(d < tol, "input gradient with a trained bias differs by {d}");
        }
    }

    #[test]
    fn matches_plain_matmul_and_gives_input_gradient_only() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (5, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 5, &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 4, 3), &dev).unwrap()).unwrap();
        let lin = FrozenLinear::new(w.clone(), Some(b.clone()), &FrozenGemm);
        let y = lin.forward(x.as_tensor()).unwrap();
        let reference = x
            .as_tensor()
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let diff = peft_core::compare::max_abs_diff(&y.clone(), &reference).unwrap();
        assert!(diff < 1e-5, "forward differs by {diff}");

        let gy = Tensor::randn(0f32, 1., (2, 4, 5), &dev).unwrap();
        let grads = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        let expected = gy.broadcast_matmul(&w).unwrap();
        let diff = peft_core::compare::max_abs_diff(gx, &expected).unwrap();
        assert!(diff < 1e-5, "input gradient differs by {diff}");
        assert!(grads.get(&w).is_none(), "frozen weight received a gradient");
        assert!(grads.get(&b).is_none(), "frozen bias received a gradient");
    }

    #[test]
    fn a_trained_bias_gets_the_column_sums_of_the_output_gradient() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (5, 3), &dev).unwrap();
        let lin = FrozenLinear::new(w.clone(), None, &FrozenGemm);
        // 70 rows: more than one block of rows in the column sums.
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 35, 3), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1., 5, &dev).unwrap()).unwrap();
        let gy = Tensor::randn(0f32, 1., (2, 35, 5), &dev).unwrap();
        let y = lin
            .forward_with_bias(x.as_tensor(), Some(b.as_tensor()))
            .unwrap();
        let reference = x
            .as_tensor()
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        assert!(peft_core::compare::max_abs_diff(&y, &reference).unwrap() < 1e-5);
        let grads = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let db = grads.get(b.as_tensor()).expect("bias gradient");
        let expected = gy.sum((0, 1)).unwrap();
        let diff = peft_core::compare::max_abs_diff(db, &expected).unwrap();
        assert!(diff < 1e-4, "bias gradient differs by {diff}");
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        let diff = peft_core::compare::max_abs_diff(gx, &gy.broadcast_matmul(&w).unwrap()).unwrap();
        assert!(diff < 1e-5, "input gradient differs by {diff}");
        // A frozen input with a trained bias: the bias still gets its gradient, the input none.
        let frozen_x = x.as_tensor().detach();
        let y = lin
            .forward_with_bias(&frozen_x, Some(b.as_tensor()))
            .unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&frozen_x).is_none());
        let db = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!(db.iter().all(|v| (v - 70.0).abs() < 1e-4), "{db:?}");
    }
}
