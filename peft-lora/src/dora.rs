//! DoRA (Liu et al., 2024; `LoraConfig(use_dora = True)`): the adapted weight is split into a trained magnitude
//! per output feature and a direction, `W' = m / ||W + s B A||_row * (W + s B A)`, with the row norms treated
//! as a constant in the backward (the paper's section 4.3, as HF PEFT does). The magnitude `m` `[out]` starts
//! at the row norms of `W + s B A` (of `W` with the default init, where `B = 0`) and is saved under HF PEFT's
//! key `base_model.model.<module>.lora_magnitude_vector`.
//!
//! Forward, as HF PEFT's `DoraLinearVariant`: without dropout (or outside training)
//! `y = m/n * (W x + s B A x) + b`; with dropout `d(x)` on the LoRA path while training,
//! `y = W x + b + (m/n - 1) * W d(x) + m/n * s B A d(x)`, which costs one more frozen product.
//!
//! The norms are computed without materialising `B A`:
//! `||W_i + s (B A)_i||^2 = ||W_i||^2 + 2 s <(W A^T)_i, B_i> + s^2 <(B A A^T)_i, B_i>`, with `||W_i||^2` computed
//! once (the base weight is frozen). That reads `W` once (`W A^T`, `[out, r]`) and allocates nothing of
//! `[out, in]`; materialising writes and reads `[out, in]` twice more.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use peft_core::frozen::{CandleProduct, FrozenLinear};
//! use peft_lora::DoraLayer;
//! let dev = Device::Cpu;
//! let w = Tensor::new(&[[3f32, 4.], [0., 2.]], &dev).unwrap(); // rows of norm 5 and 2
//! let a = Tensor::zeros((1, 2), candle_core::DType::F32, &dev).unwrap();
//! let b = Tensor::zeros((2, 1), candle_core::DType::F32, &dev).unwrap();
//! let dora = DoraLayer::new(FrozenLinear::new(w, None, &CandleProduct), &a, &b, 2.0).unwrap();
//! assert_eq!(dora.magnitude().to_vec1::<f32>().unwrap(), vec![5.0, 2.0]);
//! assert_eq!(dora.weight_norm(&a, &b, 2.0).unwrap().to_vec1::<f32>().unwrap(), vec![5.0, 2.0]);
//! ```

use std::sync::Mutex;

use candle_core::{Tensor, Var};
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::LinearFn;
use peft_core::{PeftError, Result};

use crate::dropout::Dropout;

/// The DoRA part of one adapted module: the trained magnitude and what its forward needs of the frozen layer.
#[derive(Debug)]
pub struct DoraLayer {
    /// `lora_magnitude_vector` `[out]`.
    magnitude: Var,
    /// The frozen layer the adapter was built on (its tensors are shared, not copied).
    base: FrozenLinear,
    /// `||W_i||^2` per output row, in the magnitude's dtype: constant, as `W` is frozen.
    weight_sq_norms: Tensor,
    /// What merging added to the model's weight, subtracted again by unmerging (HF PEFT keeps the norm for the
    /// same reason: recomputed from the merged weight it would differ).
    merged_delta: Mutex<Option<Tensor>>,
}

impl DoraLayer {
    /// DoRA over the frozen layer `base`, with the magnitude initialised to the row norms of `W + scale B A`
    /// (`a` `[r, in]`, `b` `[out, r]`), as HF PEFT does after drawing the factors. The magnitude has the dtype
    /// of `a` (f32 in an adapter).
    pub fn new(base: FrozenLinear, a: &Tensor, b: &Tensor, scale: f64) -> Result<Self> {
        let dtype = a.dtype();
        let w = base.weight()?.detach().to_dtype(dtype)?;
        let weight_sq_norms = w.sqr()?.sum(1)?;
        let mut layer = DoraLayer {
            magnitude: Var::from_tensor(&weight_sq_norms.sqrt()?)?,
            base,
            weight_sq_norms,
            merged_delta: Mutex::new(None),
        };
        let initial = layer.weight_norm(a, b, scale)?;
        layer.magnitude = Var::from_tensor(&initial)?;
        Ok(layer)
    }

    /// The magnitude variable (`lora_magnitude_vector`, `[out]`).
    pub fn magnitude_var(&self) -> &Var {
        &self.magnitude
    }

    /// The frozen layer's own bias (what its product adds unless a trained bias replaces it).
    pub(crate) fn frozen_bias(&self) -> Option<&Tensor> {
        self.base.bias()
    }

    /// The magnitude's current values.
    pub fn magnitude(&self) -> &Tensor {
        self.magnitude.as_tensor()
    }

    /// `||W + scale B A||` per output row `[out]`, detached, in the magnitude's dtype, without forming `B A`.
    pub fn weight_norm(&self, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
        let dtype = self.weight_sq_norms.dtype();
        let a = a.detach().to_dtype(dtype)?;
        let b = b.detach().to_dtype(dtype)?;
        let w = self.base.weight()?.detach().to_dtype(dtype)?;
        // <W_i, (B A)_i> = <(W A^T)_i, B_i>; ||(B A)_i||^2 = <(B (A A^T))_i, B_i>.
        let cross = w.matmul(&a.t()?)?.mul(&b)?.sum(1)?;
        let gram = a.matmul(&a.t()?)?;
        let lora_sq = b.matmul(&gram)?.mul(&b)?.sum(1)?;
        let sq =
            ((&self.weight_sq_norms + (cross * (2.0 * scale))?)? + (lora_sq * (scale * scale))?)?;
        // Rounding can leave a tiny negative where the row is (nearly) zero.
        Ok(sq.relu()?.sqrt()?)
    }

    /// The adapted module's output for input `x`: `next(x)` is the frozen projection below (`W x + b`, `b` the
    /// `bias` it used, trained or frozen), `a`, `b_factor` and `scale` the LoRA factors (already read for the
    /// forward, so tracked while training), `dropout` the LoRA path's dropout.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        next: &LinearFn,
        factors: (&Tensor, &Tensor, f64),
        bias: Option<&Tensor>,
        dropout: &Dropout,
    ) -> Result<Tensor> {
        let (a, b_factor, scale) = factors;
        let norm = self.weight_norm(a, b_factor, scale)?;
        let magnitude = peft_core::grad::param(&self.magnitude);
        let ratio = magnitude.div(&norm)?.to_dtype(x.dtype())?;
        let y = next(x)?;
        let dropping = dropout.p() > 0.0 && peft_core::grad::enabled();
        if dropping {
            // HF PEFT recomputes the base product on the dropped-out input: y + (m/n - 1) W d + m/n s B A d.
            let d = dropout.apply(x)?;
            let wd = self.base.forward_with_bias(&d, None)?;
            let update = (&wd + peft_kernels::low_rank(&d, a, b_factor, scale)?)?;
            return Ok(((y + peft_kernels::column_scale(&update, &ratio, None)?)? - wd)?);
        }
        // m/n (W x + b + s B A x) + (1 - m/n) b = m/n (W x + s B A x) + b, rescaled and shifted in one op.
        let adapted = (y + peft_kernels::low_rank(x, a, b_factor, scale)?)?;
        let shift = match bias {
            Some(bias) => {
                let bias = bias.to_dtype(x.dtype())?;
                Some((&bias - bias.mul(&ratio)?)?)
            }
            None => None,
        };
        peft_kernels::column_scale(&adapted, &ratio, shift.as_ref())
    }

    /// `m / ||W + delta||_row * (W + delta) - W` for the frozen weight `weight` and LoRA's `delta = s B A`: what
    /// merging adds to `weight` (HF PEFT computes the norm from the weight it merges into). Remembered for
    /// [`DoraLayer::take_merged_delta`].
    pub(crate) fn merge_delta(&self, weight: &Tensor, delta: &Tensor) -> Result<Tensor> {
        let dtype = self.weight_sq_norms.dtype();
        let w = weight.detach().to_dtype(dtype)?;
        let merged = (&w + delta.detach().to_dtype(dtype)?)?;
        let norm = merged.sqr()?.sum_keepdim(1)?.sqrt()?;
        let ratio = self
            .magnitude
            .as_tensor()
            .detach()
            .unsqueeze(1)?
            .div(&norm)?;
        let added = (merged.broadcast_mul(&ratio)? - w)?;
        *self.lock() = Some(added.clone());
        Ok(added)
    }

    /// What the last merge added, forgotten here (unmerging subtracts it).
    pub(crate) fn take_merged_delta(&self) -> Result<Tensor> {
        self.lock().take().ok_or_else(|| {
            PeftError::Unsupported(
                "this DoRA layer was not merged, so there is nothing to unmerge".into(),
            )
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Tensor>> {
        self.merged_delta.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use peft_core::frozen::CandleProduct;
    use rand::SeedableRng;

    fn randn(shape: &[usize], std: f64, dtype: DType) -> Tensor {
        Tensor::randn(0f64, std, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn max_abs(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// A random layer `[out = 6, in = 5]` with a bias, rank-2 factors, and DoRA over it (magnitude moved off its
    /// initial value so that m/n is not one).
    fn case(dtype: DType) -> (DoraLayer, Var, Var, Tensor) {
        let w = randn(&[6, 5], 1.0, dtype);
        let bias = randn(&[6], 1.0, dtype);
        let a = Var::from_tensor(&randn(&[2, 5], 0.5, dtype)).unwrap();
        let b = Var::from_tensor(&randn(&[6, 2], 0.5, dtype)).unwrap();
        let frozen = FrozenLinear::new(w, Some(bias.clone()), &CandleProduct);
        let dora = DoraLayer::new(frozen, a.as_tensor(), b.as_tensor(), 1.5).unwrap();
        let moved = (dora.magnitude() * 1.3).unwrap();
        dora.magnitude.set(&moved).unwrap();
        (dora, a, b, bias)
    }

    #[test]
    fn the_norm_equals_the_materialised_one_and_the_magnitude_starts_there() {
        let (dora, a, b, _) = case(DType::F64);
        let w = dora.base.weight().unwrap();
        let direct = (w + (b.as_tensor().matmul(a.as_tensor()).unwrap() * 1.5).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .sum(1)
            .unwrap()
            .sqrt()
            .unwrap();
        let ours = dora.weight_norm(a.as_tensor(), b.as_tensor(), 1.5).unwrap();
        assert!(max_abs(&(&ours - &direct).unwrap()) < 1e-12);
        // New layers start with m = the norm (1.3x here only because `case` moved it).
        let start = (dora.magnitude() / 1.3).unwrap();
        assert!(max_abs(&(start - direct).unwrap()) < 1e-12);
    }

    #[test]
    fn the_output_is_the_rescaled_adapted_layer_and_merging_gives_it() {
        let (dora, a, b, bias) = case(DType::F64);
        let x = randn(&[3, 5], 1.0, DType::F64);
        let base = dora.base.clone();
        let next = |x: &Tensor| base.forward(x);
        let off = Dropout::new(0.0, rand::rngs::StdRng::seed_from_u64(0));
        let y = dora
            .forward(
                &x,
                &next,
                (a.as_tensor(), b.as_tensor(), 1.5),
                Some(&bias),
                &off,
            )
            .unwrap();
        let delta = (b.as_tensor().matmul(a.as_tensor()).unwrap() * 1.5).unwrap();
        let added = dora.merge_delta(&base.weight().unwrap(), &delta).unwrap();
        let merged = FrozenLinear::new(
            (base.weight().unwrap() + added).unwrap(),
            Some(bias),
            &CandleProduct,
        );
        let expected = merged.forward(&x).unwrap();
        assert!(max_abs(&(&y - &expected).unwrap()) < 1e-12);
        // Not the plain LoRA output.
        let lora = (base.forward(&x).unwrap() + x.matmul(&delta.t().unwrap()).unwrap()).unwrap();
        assert!(max_abs(&(&y - lora).unwrap()) > 1e-2);
        assert!(dora.take_merged_delta().is_ok() && dora.take_merged_delta().is_err());
    }

    /// Sum of `y * r` for a fixed random `r`: a scalar whose gradient is `r` pulled back.
    fn loss(y: &Tensor, r: &Tensor) -> f64 {
        y.mul(r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Central differences of `f` along every entry of `t`.
    fn finite_differences(t: &Tensor, f: &dyn Fn(&Tensor) -> f64) -> Vec<f64> {
        let flat: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-6;
        (0..flat.len())
            .map(|i| {
                let mut plus = flat.clone();
                plus[i] += eps;
                let mut minus = flat.clone();
                minus[i] -= eps;
                let at = |v: Vec<f64>| f(&Tensor::from_vec(v, t.shape(), t.device()).unwrap());
                (at(plus) - at(minus)) / (2.0 * eps)
            })
            .collect()
    }

    fn assert_close(what: &str, analytic: &Tensor, numeric: &[f64]) {
        let analytic: Vec<f64> = analytic.flatten_all().unwrap().to_vec1().unwrap();
        for (i, (g, n)) in analytic.iter().zip(numeric).enumerate() {
            assert!(
                (g - n).abs() < 1e-6 * (1.0 + n.abs()),
                "{what}[{i}]: autograd {g}, finite differences {n}"
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences_with_the_norm_held_constant() {
        let (dora, a, b, bias) = case(DType::F64);
        let x = Var::from_tensor(&randn(&[3, 5], 1.0, DType::F64)).unwrap();
        let r = randn(&[3, 6], 1.0, DType::F64);
        let base = dora.base.clone();
        let next = |x: &Tensor| base.forward(x);
        let off = Dropout::new(0.0, rand::rngs::StdRng::seed_from_u64(0));
        let y = dora
            .forward(
                x.as_tensor(),
                &next,
                (a.as_tensor(), b.as_tensor(), 1.5),
                Some(&bias),
                &off,
            )
            .unwrap();
        let grads = y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();

        // The magnitude and the input do not enter the norm: differences of the forward itself.
        let through_forward = |x: &Tensor, a: &Tensor, b: &Tensor| {
            loss(
                &dora
                    .forward(x, &next, (a, b, 1.5), Some(&bias), &off)
                    .unwrap(),
                &r,
            )
        };
        let numeric = finite_differences(x.as_tensor(), &|x| {
            through_forward(x, a.as_tensor(), b.as_tensor())
        });
        assert_close("x", grads.get(x.as_tensor()).unwrap(), &numeric);
        let m0 = dora.magnitude().copy().unwrap();
        let numeric = finite_differences(&m0, &|m| {
            dora.magnitude.set(m).unwrap();
            through_forward(x.as_tensor(), a.as_tensor(), b.as_tensor())
        });
        dora.magnitude.set(&m0).unwrap();
        assert_close("magnitude", grads.get(dora.magnitude()).unwrap(), &numeric);

        // The factors: differences of m/n0 (W x + s B A x) + b with n0 the norm at the current factors, which
        // the backward treats as a constant.
        let n0 = dora.weight_norm(a.as_tensor(), b.as_tensor(), 1.5).unwrap();
        let ratio = (dora.magnitude() / &n0).unwrap();
        let held = |a: &Tensor, b: &Tensor| {
            let adapted = (base.weight().unwrap() + (b.matmul(a).unwrap() * 1.5).unwrap()).unwrap();
            let y = x
                .as_tensor()
                .matmul(&adapted.t().unwrap())
                .unwrap()
                .broadcast_mul(&ratio)
                .unwrap();
            loss(&y.broadcast_add(&bias).unwrap(), &r)
        };
        let numeric = finite_differences(a.as_tensor(), &|a| held(a, b.as_tensor()));
        assert_close("lora_A", grads.get(a.as_tensor()).unwrap(), &numeric);
        let numeric = finite_differences(b.as_tensor(), &|b| held(a.as_tensor(), b));
        assert_close("lora_B", grads.get(b.as_tensor()).unwrap(), &numeric);
        // And that is not the gradient of the function with the norm moving along: the detachment is real.
        let moving = finite_differences(b.as_tensor(), &|b| {
            through_forward(x.as_tensor(), a.as_tensor(), b)
        });
        let analytic: Vec<f64> = grads
            .get(b.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let gap = analytic
            .iter()
            .zip(&moving)
            .map(|(g, n)| (g - n).abs())
            .fold(0.0, f64::max);
        assert!(gap > 1e-3, "the norm received a gradient (gap {gap})");
    }

    #[test]
    fn with_dropout_the_base_path_sees_the_undropped_input() {
        let (dora, a, b, bias) = case(DType::F64);
        let x = randn(&[4, 5], 1.0, DType::F64);
        let base = dora.base.clone();
        let next = |x: &Tensor| base.forward(x);
        // The same mask is drawn by a twin generator below.
        let dropout = Dropout::new(0.5, rand::rngs::StdRng::seed_from_u64(3));
        let twin = Dropout::new(0.5, rand::rngs::StdRng::seed_from_u64(3));
        let y = dora
            .forward(
                &x,
                &next,
                (a.as_tensor(), b.as_tensor(), 1.5),
                Some(&bias),
                &dropout,
            )
            .unwrap();
        let d = twin.apply(&x).unwrap();
        let ratio = (dora.magnitude()
            / dora.weight_norm(a.as_tensor(), b.as_tensor(), 1.5).unwrap())
        .unwrap();
        let wd = d.matmul(&base.weight().unwrap().t().unwrap()).unwrap();
        let lora = (d
            .matmul(&a.as_tensor().t().unwrap())
            .unwrap()
            .matmul(&b.as_tensor().t().unwrap())
            .unwrap()
            * 1.5)
            .unwrap();
        let expected = ((base.forward(&x).unwrap()
            + (wd.broadcast_mul(&(&ratio - 1.0).unwrap()).unwrap()))
        .unwrap()
            + lora.broadcast_mul(&ratio).unwrap())
        .unwrap();
        assert!(max_abs(&(&y - expected).unwrap()) < 1e-12);
        // Under no_grad (evaluation) dropout is off: the plain DoRA output.
        let eval = peft_core::grad::no_grad(|| {
            dora.forward(
                &x,
                &next,
                (a.as_tensor(), b.as_tensor(), 1.5),
                Some(&bias),
                &dropout,
            )
            .unwrap()
        });
        assert!(max_abs(&(&y - eval).unwrap()) > 1e-3);
    }
}
