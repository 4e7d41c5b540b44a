//! The mixed-precision form of a recomputed MLP block: `x + out(act(wide_1(n), .., wide_k(n)))` with
//! `n = norm(x)`, as one op that keeps `x` and the wide products' outputs rounded to bf16, as
//! `torch.autocast` keeps a bf16 linear layer's output for the backward.
//!
//! [`peft_core::recompute::residual_recomputed`] keeps only `x` and runs the norm, the wide products and the
//! activation again in the backward: two more products per LLaMA layer, about a fifth of a step. With the
//! frozen weights in bf16 the products are what the step is made of, so this form keeps their outputs instead
//! (half the bytes of f32) and runs again only what is cheap: the norm and the activation. For SmolLM2 at
//! 8 x 128 tokens it keeps 8.7 MB of a layer's 24 (the composed block's). The forward's value is the composed
//! block's, computed from the f32 products; the backward differentiates the activation at the bf16-rounded
//! products, so the input gradient is the composed one's to about bf16's precision (2^-9 of each input of
//! the activation).
//!
//! ```
//! use std::sync::Arc;
//! use candle_core::{DType, Device, Tensor, Var};
//! use peft_core::frozen::FrozenLinear;
//! use peft_core::recompute::Inner;
//! use peft_kernels::frozen::FrozenGemm;
//! use peft_kernels::{residual_kept_bf16, Activation};
//! let dev = Device::Cpu;
//! let bf16 = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
//! let up = Tensor::new(&[[1f32, 2.], [0., 1.], [-1., 1.]], &dev).unwrap();
//! let up = FrozenLinear::new(bf16(up), None, &FrozenGemm);
//! let down = Tensor::new(&[[1f32, 0., 2.], [0., 1., 1.]], &dev).unwrap();
//! let down = FrozenLinear::new(bf16(down), None, &FrozenGemm);
//! let norm: Inner = Arc::new(|x: &Tensor| Ok(x.affine(0.5, 0.0)?));
//! let act: Activation = Arc::new(|wide: &[Tensor]| Ok(wide[0].relu()?));
//! let x = Var::new(&[[0.5f32, -1.], [2., 1.]], &dev).unwrap();
//! let y = residual_kept_bf16(x.as_tensor(), norm.clone(), &[up.clone()], act.clone(), &down).unwrap();
//! let n = norm(x.as_tensor()).unwrap();
//! let composed = (x.as_tensor() + down.forward(&act(&[up.forward(&n).unwrap()]).unwrap()).unwrap()).unwrap();
//! assert_eq!(y.to_vec2::<f32>().unwrap(), composed.to_vec2::<f32>().unwrap());
//! let g = y.sum_all().unwrap().backward().unwrap();
//! let h = composed.sum_all().unwrap().backward().unwrap();
//! let (a, b) = (g.get(x.as_tensor()).unwrap(), h.get(x.as_tensor()).unwrap());
//! assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
//! ```

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, Var};
use peft_core::frozen::FrozenLinear;
use peft_core::recompute::{backward_seeded, Inner, PrecomputedValue};
use peft_core::{PeftError, Result};

use crate::bf16::{round_to_bf16, widen_to_f32};
use crate::cpu;

/// The activation of a kept block, from the wide products' outputs to the out product's input (LLaMA's
/// `silu(gate) * up`, GPT-2's GELU of its one product): elementwise, no trained parameter.
pub type Activation = Arc<dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync>;

/// `x + out(activation(wide(norm(x))))`, keeping `x` and the wide outputs in bf16 (module docs). Where it
/// cannot run as one op (no gradient flows through `x`, `x` is not f32 on the CPU, a product is trained) the
/// block is composed as usual.
pub fn residual_kept_bf16(
    x: &Tensor,
    norm: Inner,
    wide: &[FrozenLinear],
    activation: Activation,
    out: &FrozenLinear,
) -> Result<Tensor> {
    let fused =
        x.track_op() && cpu::covers(x) && !out.is_trained() && wide.iter().all(|w| !w.is_trained());
    if !fused {
        let n = norm(x)?;
        let products = wide
            .iter()
            .map(|w| w.forward(&n))
            .collect::<Result<Vec<_>>>()?;
        return Ok((x + out.forward(&activation(&products)?)?)?);
    }
    // The values, computed with no graph; only the bf16 copies of the wide outputs outlive this call.
    let detached = x.detach();
    let n = norm(&detached)?;
    let products = wide
        .iter()
        .map(|w| w.forward(&n))
        .collect::<Result<Vec<_>>>()?;
    drop(n);
    let kept = products
        .iter()
        .map(round_to_bf16)
        .collect::<Result<Vec<_>>>()?;
    let value = (&detached + out.forward(&activation(&products)?)?)?;
    drop(products);
    let op = KeptBf16 {
        value: PrecomputedValue::new(value, "kept bf16 block"),
        kept,
        norm,
        wide: wide.to_vec(),
        activation,
        out: out.clone(),
    };
    Ok(x.apply_op1(op)?)
}

/// The op: its argument is `x`; it hands out the value computed beforehand and holds the bf16 wide outputs
/// for its backward.
struct KeptBf16 {
    value: PrecomputedValue,
    kept: Vec<Tensor>,
    norm: Inner,
    wide: Vec<FrozenLinear>,
    activation: Activation,
    out: FrozenLinear,
}

fn candle_error(e: PeftError) -> candle_core::Error {
    candle_core::Error::Msg(format!("kept bf16 block: {e}"))
}

impl KeptBf16 {
    /// The gradient of `n = norm(x)`: the activation differentiated at the kept outputs, then each wide
    /// product's input gradient.
    fn normed_grad(&self, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad_act = self.out.input_grad(grad_res)?;
        let inputs = self
            .kept
            .iter()
            .map(|k| Ok(Var::from_tensor(&widen_to_f32(k)?)?))
            .collect::<Result<Vec<_>>>()?;
        let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let grads = backward_seeded(&(self.activation)(&tensors)?, grad_act)?;
        let mut total: Option<Tensor> = None;
        for (w, input) in self.wide.iter().zip(&inputs) {
            if let Some(g) = grads.get(input.as_tensor()) {
                let part = w.input_grad(g)?;
                total = Some(match total {
                    Some(t) => (t + part)?,
                    None => part,
                });
            }
        }
        Ok(total)
    }
}

impl CustomOp1 for KeptBf16 {
    fn name(&self) -> &'static str {
        "residual-kept-bf16"
    }

    fn cpu_fwd(
        &self,
        _storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.value.hand_out(layout)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some(grad_normed) = self.normed_grad(grad_res).map_err(candle_error)? else {
            return Ok(Some(grad_res.clone()));
        };
        let x = Var::from_tensor(&arg.detach())?;
        let normed = (self.norm)(x.as_tensor()).map_err(candle_error)?;
        let grads = backward_seeded(&normed, grad_normed)?;
        Ok(Some(match grads.get(x.as_tensor()) {
            Some(through_block) => (through_block + grad_res)?,
            None => grad_res.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frozen::FrozenGemm;
    use candle_core::{DType, Device};
    use peft_core::compare::{max_abs_diff, max_rel_diff};

    fn random(dims: (usize, usize), seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let values: Vec<f32> = (0..dims.0 * dims.1)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }

    fn bf16_linear(dims: (usize, usize), seed: u64) -> FrozenLinear {
        let w = random(dims, seed).to_dtype(DType::BF16).unwrap();
        FrozenLinear::new(w, None, &FrozenGemm)
    }

    /// LLaMA's block in bf16: an RMS norm, gate and up, `silu(gate) * up`, down.
    fn gated(hidden: usize, width: usize) -> (Inner, Vec<FrozenLinear>, Activation, FrozenLinear) {
        let norm: Inner = Arc::new(|x: &Tensor| {
            let scale = x.sqr()?.mean_keepdim(1)?.affine(1.0, 1e-5)?.sqrt()?;
            Ok(x.broadcast_div(&scale)?)
        });
        let wide = vec![
            bf16_linear((width, hidden), 1),
            bf16_linear((width, hidden), 2),
        ];
        let act: Activation = Arc::new(|w: &[Tensor]| crate::silu_mul(&w[0], &w[1]));
        (norm, wide, act, bf16_linear((hidden, width), 3))
    }

    fn composed(
        x: &Tensor,
        (norm, wide, act, out): &(Inner, Vec<FrozenLinear>, Activation, FrozenLinear),
        rounded: bool,
    ) -> Tensor {
        let n = norm(x).unwrap();
        let products: Vec<Tensor> = wide
            .iter()
            .map(|w| {
                let p = w.forward(&n).unwrap();
                if rounded {
                    // Rounded as a value, passed through as a gradient: what the op's backward sees.
                    let r = p
                        .detach()
                        .to_dtype(DType::BF16)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap();
                    (&p + (r - p.detach()).unwrap()).unwrap()
                } else {
                    p
                }
            })
            .collect();
        (x + out.forward(&act(&products).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn values_equal_the_composed_block_and_gradients_its_bf16_rounded_form() {
        let block = gated(16, 40);
        let x = Var::from_tensor(&random((6, 16), 7)).unwrap();
        let weights = random((6, 16), 8);
        // Linear in `y`, so that the gradient arriving at the block does not depend on its value (the rounded
        // composed block below has a slightly different one).
        let loss = |y: &Tensor| (y * &weights).unwrap().sum_all().unwrap();
        let (norm, wide, act, out) = block.clone();
        let y = residual_kept_bf16(x.as_tensor(), norm, &wide, act, &out).unwrap();
        let exact = composed(x.as_tensor(), &block, false);
        assert_eq!(max_abs_diff(&y, &exact).unwrap(), 0.0, "same values");
        let g = loss(&y).backward().unwrap();
        let ours = g.get(x.as_tensor()).unwrap();
        let scale = max_abs_diff(ours, &ours.zeros_like().unwrap()).unwrap();
        assert!(scale > 0.1, "the gradient is not trivially zero");
        // Against the composed block whose products are rounded as the op keeps them: equal but for the order
        // of sums.
        let want = loss(&composed(x.as_tensor(), &block, true))
            .backward()
            .unwrap();
        let rel = max_rel_diff(ours, want.get(x.as_tensor()).unwrap()).unwrap();
        assert!(
            rel <= 1e-5,
            "{rel} of the scale from the rounded composed block"
        );
        // Against the exact composed block: within bf16's precision, and not equal (the rounding is real).
        let exact_grad = loss(&exact).backward().unwrap();
        let rel = max_rel_diff(ours, exact_grad.get(x.as_tensor()).unwrap()).unwrap();
        assert!(
            rel > 0.0 && rel <= 2e-2,
            "{rel} of the scale from the exact block"
        );
    }

    #[test]
    fn without_a_gradient_or_with_a_trained_product_the_block_is_composed() {
        let block = gated(8, 24);
        let (norm, wide, act, out) = block.clone();
        let x = random((3, 8), 9);
        let y = residual_kept_bf16(&x, norm.clone(), &wide, act.clone(), &out).unwrap();
        assert!(!y.track_op());
        assert_eq!(max_abs_diff(&y, &composed(&x, &block, false)).unwrap(), 0.0);

        let w = Var::from_tensor(&random((8, 24), 10)).unwrap();
        let trained = FrozenLinear::new(w.as_tensor().clone(), None, &FrozenGemm);
        let x = Var::from_tensor(&random((3, 8), 11)).unwrap();
        let y = residual_kept_bf16(x.as_tensor(), norm, &wide, act, &trained).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(
            grads.get(w.as_tensor()).is_some(),
            "full fine-tuning's weight is trained"
        );
    }
}
