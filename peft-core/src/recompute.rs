//! A residual block whose backward keeps only its input: `x + out(inner(x))`, where `inner` is recomputed in
//! the backward and `out` is a frozen projection whose input gradient is taken directly.
//!
//! candle keeps every op's inputs until the backward ends. An MLP block (norm, up / gate projections,
//! activation, down projection, residual add) therefore keeps five or six activations per layer, most of them
//! four times the hidden width, although its frozen products never need their inputs again. Run as one op, the
//! block keeps only `x`, which the residual stream keeps anyway; the backward runs `inner` once more from `x`
//! (for an MLP: the norm, the up and gate products and the activation, not the down product) and
//! differentiates it against `dy W_out`. The gradient of `x` equals the composed block's.
//!
//! Only `x` receives a gradient: `inner` must hold no trained parameter and `out` must be frozen. Models use
//! it where no hook touches the block's sites ([`crate::hooks::Hooks::touches`]) and fall back to the composed
//! block elsewhere, and in every case this function cannot run (no gradient to keep, not f32 on the CPU, a
//! trained `out`).
//!
//! ```
//! use std::sync::Arc;
//! use candle_core::{Device, Tensor, Var};
//! use peft_core::frozen::{CandleProduct, FrozenLinear};
//! use peft_core::recompute::{residual_recomputed, Inner};
//! let dev = Device::Cpu;
//! let up = FrozenLinear::new(Tensor::new(&[[1f32, 2.], [0., 1.], [-1., 1.]], &dev).unwrap(), None, &CandleProduct);
//! let down = FrozenLinear::new(Tensor::new(&[[1f32, 0., 2.], [0., 1., 1.]], &dev).unwrap(), None, &CandleProduct);
//! let inner: Inner = Arc::new(move |x: &Tensor| Ok(up.forward(x)?.relu()?));
//! let x = Var::new(&[[0.5f32, -1.], [2., 1.]], &dev).unwrap();
//! let y = residual_recomputed(x.as_tensor(), inner.clone(), &down).unwrap();
//! let composed = (x.as_tensor() + down.forward(&inner(x.as_tensor()).unwrap()).unwrap()).unwrap();
//! assert_eq!(y.to_vec2::<f32>().unwrap(), composed.to_vec2::<f32>().unwrap());
//! let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
//! let h = composed.sqr().unwrap().sum_all().unwrap().backward().unwrap();
//! let (a, b) = (g.get(x.as_tensor()).unwrap(), h.get(x.as_tensor()).unwrap());
//! assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
//! ```

use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};

use crate::error::{PeftError, Result};
use crate::frozen::FrozenLinear;
use crate::hooks::{Ctx, Hooks, KvPrefix, LayerFn, LinearFn, NormFn};
use crate::spec::SiteId;

/// The recomputed part of a block: frozen layers only, deterministic, so that the backward's run computes
/// what the forward's did.
pub type Inner = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// `x + out(inner(x))`, keeping only `x` for the backward (module docs). Where it cannot run as one op (no
/// gradient flows through `x`, `x` is not f32 on the CPU, `out` is trained) the block is composed as usual.
pub fn residual_recomputed(x: &Tensor, inner: Inner, out: &FrozenLinear) -> Result<Tensor> {
    let fused = x.track_op()
        && matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && !out.is_trained();
    if !fused {
        return Ok((x + out.forward(&inner(x)?)?)?);
    }
    // The values, computed with no graph: each intermediate is freed as soon as the next one exists.
    let detached = x.detach();
    let value = (&detached + out.forward(&inner(&detached)?)?)?;
    let op = ResidualRecomputed {
        value: PrecomputedValue::new(value, "recomputed block"),
        inner,
        out: out.clone(),
    };
    Ok(x.apply_op1(op)?)
}

/// The op: its argument is `x`; it hands out the value computed beforehand and recomputes in its backward.
struct ResidualRecomputed {
    value: PrecomputedValue,
    inner: Inner,
    out: FrozenLinear,
}

fn candle_error(e: PeftError) -> candle_core::Error {
    candle_core::Error::Msg(format!("recomputed block: {e}"))
}

impl CustomOp1 for ResidualRecomputed {
    fn name(&self) -> &'static str {
        "residual-recomputed"
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
        // d/dh <out(h), dy> = dy W_out: the down product's input gradient, without running that product again.
        let grad_inner = self.out.input_grad(grad_res).map_err(candle_error)?;
        let x = Var::from_tensor(&arg.detach())?;
        let inner = (self.inner)(x.as_tensor()).map_err(candle_error)?;
        let grads = backward_seeded(&inner, grad_inner)?;
        Ok(Some(match grads.get(x.as_tensor()) {
            Some(through_inner) => (through_inner + grad_res)?,
            None => grad_res.clone(),
        }))
    }
}

/// A residual block's value computed with no graph before its op exists, handed out by the op's one forward
/// call: how the recomputed blocks attach a value to their input as one node that keeps only that input.
pub struct PrecomputedValue {
    value: Mutex<Option<Tensor>>,
    what: &'static str,
}

impl PrecomputedValue {
    /// `value`, for the op that `what` names in its errors.
    pub fn new(value: Tensor, what: &'static str) -> Self {
        PrecomputedValue {
            value: Mutex::new(Some(value)),
            what,
        }
    }

    /// The value as the op's f32 output for an input of `layout` (a residual block keeps the shape); an error
    /// on a second call.
    pub fn hand_out(&self, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let what = self.what;
        let value = self
            .value
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{what}: a poisoned lock")))?
            .take()
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("{what}: the op ran its forward twice"))
            })?;
        if value.dims() != layout.shape().dims() {
            candle_core::bail!(
                "{what}: the block gives {:?} for an input of {:?}; a residual block keeps the shape",
                value.dims(),
                layout.shape().dims()
            );
        }
        let values = value.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(values), layout.shape().clone()))
    }
}

/// The backward of `output` seeded with `grad` at it, where candle's own starts from a one at a scalar: no
/// product with `grad` and no sum to differentiate, which would cost five passes over the widest tensor. For
/// ops that run part of their backward through candle's autodiff (the recomputed blocks).
pub fn backward_seeded(output: &Tensor, grad: Tensor) -> candle_core::Result<GradStore> {
    output.apply_op1(SeedGradient { grad })?.backward()
}

/// Hooks that run `inner` unchanged but say that they touch every site, so that the models compose every
/// block and keep its activations: the training setting `recompute_mlp = false`, for those who trade the
/// memory for the step time the recomputation costs.
pub struct KeepActivations<'a>(pub &'a dyn Hooks);

impl Hooks for KeepActivations<'_> {
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.0.embeddings(x, ctx)
    }

    fn attention_prefix(&self, layer: usize, ctx: &Ctx) -> Result<Option<KvPrefix>> {
        self.0.attention_prefix(layer, ctx)
    }

    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        self.0.linear(site, x, next)
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        self.0.bias(site)
    }

    fn norm_weight(&self, site: SiteId) -> Option<Tensor> {
        self.0.norm_weight(site)
    }

    fn project(&self, site: SiteId, x: &Tensor, frozen: &FrozenLinear) -> Result<Tensor> {
        self.0.project(site, x, frozen)
    }

    fn norm(&self, site: SiteId, x: &Tensor, frozen: &NormFn) -> Result<Tensor> {
        self.0.norm(site, x, frozen)
    }

    fn touches(&self, _site: SiteId) -> bool {
        true
    }

    fn layers(&self, count: usize, x: Tensor, layer: &mut LayerFn) -> Result<Tensor> {
        self.0.layers(count, x, layer)
    }
}

/// Starts a backward at its argument with a given gradient: its forward gives one zero (the root candle's
/// backward seeds with a one), its backward hands out `grad` whatever comes from above.
struct SeedGradient {
    grad: Tensor,
}

impl CustomOp1 for SeedGradient {
    fn name(&self) -> &'static str {
        "seed-gradient"
    }

    fn cpu_fwd(
        &self,
        _storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if self.grad.dims() != layout.shape().dims() {
            candle_core::bail!(
                "recomputed block: a gradient of {:?} for an output of {:?}",
                self.grad.dims(),
                layout.shape().dims()
            );
        }
        Ok((CpuStorage::F32(vec![0.0]), Shape::from(())))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        _grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.grad.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{max_abs_diff, max_rel_diff};
    use crate::frozen::CandleProduct;

    fn random(dims: (usize, usize), seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let values: Vec<f32> = (0..dims.0 * dims.1)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }

    /// A gated MLP as LLaMA's: `down(silu(gate(x)) * up(x))`, written with candle's ops.
    fn gated(hidden: usize, width: usize) -> (Inner, FrozenLinear) {
        let gate = FrozenLinear::new(random((width, hidden), 1), None, &CandleProduct);
        let up = FrozenLinear::new(random((width, hidden), 2), None, &CandleProduct);
        let bias = random((1, hidden), 4).squeeze(0).unwrap();
        let down = FrozenLinear::new(random((hidden, width), 3), Some(bias), &CandleProduct);
        let inner: Inner = Arc::new(move |x: &Tensor| {
            let scale = x.sqr()?.mean_keepdim(1)?.affine(1.0, 1e-5)?.sqrt()?;
            let normed = x.broadcast_div(&scale)?;
            Ok((gate.forward(&normed)?.silu()? * up.forward(&normed)?)?)
        });
        (inner, down)
    }

    #[test]
    fn values_and_input_gradients_equal_the_composed_block() {
        let (inner, down) = gated(6, 10);
        let x = Var::from_tensor(&random((5, 6), 7)).unwrap();
        let weights = random((5, 6), 8);
        let loss = |y: &Tensor| (y * &weights).unwrap().sqr().unwrap().sum_all().unwrap();
        let y = residual_recomputed(x.as_tensor(), inner.clone(), &down).unwrap();
        let composed =
            (x.as_tensor() + down.forward(&inner(x.as_tensor()).unwrap()).unwrap()).unwrap();
        assert_eq!(max_abs_diff(&y, &composed).unwrap(), 0.0, "same values");
        let g = loss(&y).backward().unwrap();
        let h = loss(&composed).backward().unwrap();
        let (a, b) = (g.get(x.as_tensor()).unwrap(), h.get(x.as_tensor()).unwrap());
        let scale = max_abs_diff(b, &b.zeros_like().unwrap()).unwrap();
        assert!(scale > 0.1, "the gradient is not trivially zero");
        let rel = max_rel_diff(a, b).unwrap();
        assert!(
            rel <= 1e-5,
            "input gradients differ by {rel} of their scale"
        );
    }

    #[test]
    fn keep_activations_touches_every_site_and_passes_the_rest_through() {
        use crate::hooks::NoHooks;
        use crate::spec::SiteId;
        let kept = KeepActivations(&NoHooks);
        assert!(!NoHooks.touches(SiteId(3)));
        assert!(
            kept.touches(SiteId(3)),
            "the wrapper keeps every block composed"
        );
        let x = random((2, 4), 12);
        let mut ctx = Ctx::new(Tensor::ones((2, 1), DType::F32, &Device::Cpu).unwrap());
        let y = kept.embeddings(x.unsqueeze(1).unwrap(), &mut ctx).unwrap();
        assert_eq!(
            y.squeeze(1).unwrap().to_vec2::<f32>().unwrap(),
            x.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn without_a_gradient_to_keep_the_block_is_composed() {
        let (inner, down) = gated(4, 8);
        let x = random((3, 4), 9);
        let y = residual_recomputed(&x, inner, &down).unwrap();
        assert!(!y.track_op());
        assert_eq!(y.dims(), &[3, 4]);
    }

    #[test]
    fn a_trained_output_projection_keeps_its_gradient() {
        let (inner, _) = gated(4, 8);
        let w = Var::from_tensor(&random((4, 8), 10)).unwrap();
        let down = FrozenLinear::new(w.as_tensor().clone(), None, &CandleProduct);
        let x = Var::from_tensor(&random((3, 4), 11)).unwrap();
        let y = residual_recomputed(x.as_tensor(), inner, &down).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(
            grads.get(w.as_tensor()).is_some(),
            "full fine-tuning's weight is trained"
        );
    }
}
