//! The residual MLP blocks of the decoders, `x + down(act(up(norm(x))))` (GPT-2) and
//! `x + down(silu(gate(norm(x))) * up(norm(x)))` (LLaMA), run as one recomputed op
//! ([`peft_core::recompute`]) where no hook touches the block and a gradient flows: the backward then keeps
//! only `x` instead of the normed input, the wide intermediates and the down product's output (for SmolLM2 at
//! 8 x 128 tokens, 24 MB of each layer's 45), and runs the norm, the up (and gate) products and the activation
//! once more. With the frozen weights in bf16 (mixed precision), where the products are most of the step, the
//! block instead keeps its up (and gate) products' outputs rounded to bf16 and runs again only the norm and
//! the activation ([`peft_kernels::residual_kept_bf16`]). Everywhere else (an adapter on one of the block's
//! projections or its norm, full fine-tuning, evaluation) the block is composed as before, through the hooks.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use peft_core::hooks::{Ctx, Hooks};
//! use peft_core::model::{BaseModel, Batch};
//! use peft_core::spec::SiteId;
//! // Scales the embeddings by a trained scalar; `recompute` says whether the hooks leave the projections alone.
//! struct Scale { s: Var, recompute: bool }
//! impl Hooks for Scale {
//!     fn embeddings(&self, x: Tensor, _: &mut Ctx) -> peft_core::Result<Tensor> {
//!         Ok(x.broadcast_mul(self.s.as_tensor())?)
//!     }
//!     fn touches(&self, _: SiteId) -> bool { !self.recompute }
//! }
//! let model = peft_models::tiny::llama(0);
//! let batch = Batch::single(&[1, 2, 3], model.device()).unwrap();
//! let s = Var::new(&[1.5f32], &Device::Cpu).unwrap();
//! let grad = |recompute| {
//!     let out = model.forward(&batch, &Scale { s: s.clone(), recompute }).unwrap();
//!     let grads = out.hidden.sqr().unwrap().sum_all().unwrap().backward().unwrap();
//!     grads.get(s.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0]
//! };
//! let (recomputed, composed) = (grad(true), grad(false));
//! assert!((recomputed - composed).abs() <= 1e-4 * composed.abs());
//! ```

use std::sync::Arc;

use candle_core::Tensor;
use peft_core::hooks::{Hooks, NoHooks};
use peft_core::recompute::{residual_recomputed, Inner};
use peft_kernels::{residual_kept_bf16, Activation as KeptActivation};

use crate::error::Result;
use crate::parts::{Activation, LayerNorm, Projection, RmsNorm};

/// Whether the block may run recomputed: a gradient flows through `x`, no hook touches any of its sites and
/// none of its frozen tensors is trained.
fn recomputable(
    x: &Tensor,
    hooks: &dyn Hooks,
    norm: (peft_core::spec::SiteId, &Tensor),
    projections: &[&Projection],
) -> bool {
    x.track_op()
        && !hooks.touches(norm.0)
        && !norm.1.track_op()
        && projections
            .iter()
            .all(|p| !hooks.touches(p.site) && !p.linear.is_trained())
}

/// Whether the wide products' weights are bf16 (mixed precision): then the block keeps their outputs in bf16
/// and recomputes only the norm and the activation ([`peft_kernels::residual_kept_bf16`]) instead of running
/// the products again.
fn in_bf16(wide: &[&Projection]) -> bool {
    wide.iter().all(|p| {
        p.linear
            .dense_weight()
            .is_some_and(|w| w.dtype() == candle_core::DType::BF16)
    })
}

/// LLaMA's block: `x + down(silu(gate(n)) * up(n))` with `n = norm(x)`.
pub(crate) fn gated(
    x: &Tensor,
    norm: &RmsNorm,
    gate: &Projection,
    up: &Projection,
    down: &Projection,
    hooks: &dyn Hooks,
) -> Result<Tensor> {
    if !recomputable(x, hooks, (norm.site, &norm.weight), &[gate, up, down]) {
        let normed = norm.forward(x, hooks)?;
        let inner =
            peft_kernels::silu_mul(&gate.forward(&normed, hooks)?, &up.forward(&normed, hooks)?)?;
        return Ok((x + down.forward(&inner, hooks)?)?);
    }
    if in_bf16(&[gate, up]) {
        let norm = norm.clone();
        let norm: Inner = Arc::new(move |x: &Tensor| Ok(norm.forward(x, &NoHooks)?));
        let activation: KeptActivation =
            Arc::new(|wide: &[Tensor]| peft_kernels::silu_mul(&wide[0], &wide[1]));
        let wide = [gate.linear.clone(), up.linear.clone()];
        return Ok(residual_kept_bf16(
            x,
            norm,
            &wide,
            activation,
            &down.linear,
        )?);
    }
    let (norm, gate, up) = (norm.clone(), gate.linear.clone(), up.linear.clone());
    let inner: Inner = Arc::new(move |x: &Tensor| {
        let normed = norm.forward(x, &NoHooks)?;
        peft_kernels::silu_mul(&gate.forward(&normed)?, &up.forward(&normed)?)
    });
    Ok(residual_recomputed(x, inner, &down.linear)?)
}

/// GPT-2's block: `x + proj(act(fc(norm(x))))`.
pub(crate) fn plain(
    x: &Tensor,
    norm: &LayerNorm,
    fc: &Projection,
    activation: Activation,
    proj: &Projection,
    hooks: &dyn Hooks,
) -> Result<Tensor> {
    let norm_bias_trained = norm.bias.as_ref().is_some_and(Tensor::track_op);
    if norm_bias_trained || !recomputable(x, hooks, (norm.site, &norm.weight), &[fc, proj]) {
        let normed = norm.forward(x, hooks)?;
        let inner = activation.apply(&fc.forward(&normed, hooks)?)?;
        return Ok((x + proj.forward(&inner, hooks)?)?);
    }
    if in_bf16(&[fc]) {
        let norm = norm.clone();
        let norm: Inner = Arc::new(move |x: &Tensor| Ok(norm.forward(x, &NoHooks)?));
        let kept_activation: KeptActivation =
            Arc::new(move |wide: &[Tensor]| Ok(activation.apply(&wide[0])?));
        return Ok(residual_kept_bf16(
            x,
            norm,
            std::slice::from_ref(&fc.linear),
            kept_activation,
            &proj.linear,
        )?);
    }
    let (norm, fc) = (norm.clone(), fc.linear.clone());
    let inner: Inner = Arc::new(move |x: &Tensor| {
        let normed = norm.forward(x, &NoHooks)?;
        Ok(activation.apply(&fc.forward(&normed)?)?)
    });
    Ok(residual_recomputed(x, inner, &proj.linear)?)
}
