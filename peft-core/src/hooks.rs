//! Injection sites a frozen model calls during its forward pass. Every default is a no-op, so a method
//! implements only the sites it uses: prompt tuning the embeddings, prefix tuning the attention prefix,
//! LoRA / IA3 the linear projections, BitFit the biases, LayerNorm tuning the norms' weights (and biases).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use peft_core::hooks::{Ctx, Hooks, NoHooks};
//! let x = Tensor::zeros((1, 3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let mut ctx = Ctx::new(Tensor::ones((1, 3), candle_core::DType::F32, &Device::Cpu).unwrap());
//! let y = NoHooks.embeddings(x, &mut ctx).unwrap();
//! assert_eq!(y.dims(), &[1, 3, 4]);
//! assert_eq!(ctx.virtual_tokens, 0);
//! ```

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::frozen::FrozenLinear;
use crate::spec::SiteId;

/// What the prompt methods change besides the embeddings: the attention mask and the count of virtual tokens
/// prepended to the sequence (whose labels are -100, as HF PEFT does).
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `[batch, seq]` f32, 1 for tokens to attend to, 0 for padding; virtual tokens get 1.
    pub attention_mask: Tensor,
    /// Virtual tokens prepended to the input embeddings by [`Hooks::embeddings`].
    pub virtual_tokens: usize,
}

impl Ctx {
    /// A context over a `[batch, seq]` attention mask (any dtype; stored as f32).
    pub fn new(attention_mask: Tensor) -> Self {
        let attention_mask = attention_mask
            .to_dtype(DType::F32)
            .unwrap_or(attention_mask);
        Ctx {
            attention_mask,
            virtual_tokens: 0,
        }
    }

    /// Prepends `n` virtual tokens: the mask gains `n` leading ones.
    pub fn prepend_virtual_tokens(&mut self, n: usize) -> Result<()> {
        let (b, _) = self.attention_mask.dims2()?;
        let ones = Tensor::ones((b, n), DType::F32, self.attention_mask.device())?;
        self.attention_mask = Tensor::cat(&[&ones, &self.attention_mask], 1)?;
        self.virtual_tokens += n;
        Ok(())
    }
}

/// Key/value prefixes for one layer's attention (prefix tuning, P-tuning v2).
#[derive(Debug, Clone)]
pub struct KvPrefix {
    /// `[batch, kv_heads, prefix_len, head_dim]`.
    pub key: Tensor,
    /// `[batch, kv_heads, prefix_len, head_dim]`.
    pub value: Tensor,
}

impl KvPrefix {
    /// Number of prefix positions.
    pub fn len(&self) -> usize {
        self.key.dims().get(2).copied().unwrap_or(0)
    }

    /// True when the prefix has no positions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Injection sites of a frozen model's forward pass; every method is a no-op by default.
pub trait Hooks: Send + Sync {
    /// Called with the token embeddings `[batch, seq, hidden]` before the first layer. A prompt method
    /// returns longer embeddings and records the virtual tokens in `ctx`.
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let _ = ctx;
        Ok(x)
    }

    /// Key/value prefix for the self-attention of `layer`. The model prepends it to the keys and values,
    /// lets every query see it, and offsets the positions of real tokens by its length.
    fn attention_prefix(&self, layer: usize, ctx: &Ctx) -> Result<Option<KvPrefix>> {
        let _ = (layer, ctx);
        Ok(None)
    }

    /// A frozen projection at `site`, as middleware: `next` computes the projection below this method (the
    /// frozen layer, with any replacement bias from [`Hooks::bias`], or the next adapter of a stack). LoRA
    /// returns `next(x) + delta(x)`, IA3 `next(x) * l` or `next(x * l)`; the default is `next(x)`.
    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        let _ = site;
        next(x)
    }

    /// A trainable bias that replaces the frozen bias at `site` (a linear or a norm site).
    fn bias(&self, site: SiteId) -> Option<Tensor> {
        let _ = site;
        None
    }

    /// A trainable scale that replaces the frozen weight of the norm at `site` (`[dim]`, LayerNorm's or RMS
    /// norm's elementwise weight; LayerNorm tuning). Linear sites never ask: their weights change through
    /// [`Hooks::linear`].
    fn norm_weight(&self, site: SiteId) -> Option<Tensor> {
        let _ = site;
        None
    }

    /// The whole projection at `site`: the frozen layer with any replacement bias from [`Hooks::bias`],
    /// wrapped by [`Hooks::linear`]. Methods implement those two; this is overridden only by hooks that must
    /// see the frozen layer itself (a batch whose rows use different adapters runs the frozen product once for
    /// every row, then each adapter on its rows).
    fn project(&self, site: SiteId, x: &Tensor, frozen: &FrozenLinear) -> Result<Tensor> {
        project_through_linear(self, site, x, frozen)
    }

    /// The whole norm at `site`: the frozen norm run with the replacement weight from [`Hooks::norm_weight`]
    /// and bias from [`Hooks::bias`]. Overridden, as [`Hooks::project`] is, only by hooks whose rows differ.
    fn norm(&self, site: SiteId, x: &Tensor, frozen: &NormFn) -> Result<Tensor> {
        frozen(x, self.norm_weight(site).as_ref(), self.bias(site).as_ref())
    }

    /// Whether these hooks may change what the model computes at `site`: through [`Hooks::linear`],
    /// [`Hooks::bias`], [`Hooks::norm_weight`], [`Hooks::project`] or [`Hooks::norm`]. Where every site of a
    /// block answers `false`, the model may run the block's frozen layers as one op that keeps only its input
    /// for the backward and recomputes the rest there ([`crate::recompute`]), so an adapter's own inputs would
    /// never be seen. The default, `true`, is always safe: hooks that do not answer keep the plain path.
    /// Methods that steer only the embeddings or the attention prefix, or only some projections, answer for
    /// the sites they leave alone.
    fn touches(&self, site: SiteId) -> bool {
        let _ = site;
        true
    }

    /// The model's stack of `count` layers on `x`, where `layer(i, h)` runs layer `i` on `h`. The default runs
    /// them in order; gradient checkpointing ([`crate::checkpoint`]) overrides it, keeping only each layer's
    /// input and running the layer again in the backward. Methods never override it.
    fn layers(&self, count: usize, x: Tensor, layer: &mut LayerFn) -> Result<Tensor> {
        let mut h = x;
        for i in 0..count {
            h = layer(i, &h)?;
        }
        Ok(h)
    }
}

/// One layer of a model's stack, as [`Hooks::layers`] calls it: `(layer index, input) -> output`.
pub type LayerFn<'a> = dyn FnMut(usize, &Tensor) -> Result<Tensor> + 'a;

/// The frozen norm below a [`Hooks::norm`] call: `(x, replacement weight, replacement bias)`, each `None`
/// for the frozen one.
pub type NormFn<'a> = dyn Fn(&Tensor, Option<&Tensor>, Option<&Tensor>) -> Result<Tensor> + 'a;

/// The projection below a [`Hooks::linear`] call.
pub type LinearFn<'a> = dyn Fn(&Tensor) -> Result<Tensor> + 'a;

/// Runs the frozen projection `frozen` at `site` through the hooks: the frozen layer (with a replacement bias
/// where [`Hooks::bias`] gives one) wrapped by [`Hooks::linear`]. Models call this for every projection.
pub fn apply_linear(
    hooks: &dyn Hooks,
    site: SiteId,
    x: &Tensor,
    frozen: &FrozenLinear,
) -> Result<Tensor> {
    hooks.project(site, x, frozen)
}

/// [`Hooks::project`]'s default, for hooks that override it for some sites and want it for the rest: the
/// frozen layer with the replacement bias from [`Hooks::bias`], wrapped by [`Hooks::linear`].
pub fn project_through_linear<H: Hooks + ?Sized>(
    hooks: &H,
    site: SiteId,
    x: &Tensor,
    frozen: &FrozenLinear,
) -> Result<Tensor> {
    let bias = hooks.bias(site);
    let base = |x: &Tensor| match &bias {
        Some(b) => frozen.forward_with_bias(x, Some(b)),
        None => frozen.forward(x),
    };
    hooks.linear(site, x, &base)
}

/// Sequence positions the hooks add in front of the real tokens (virtual tokens plus any key/value prefix),
/// found by running them on a one-token probe: the model's context must hold these and the prompt together.
pub fn positions_taken(
    hooks: &dyn Hooks,
    hidden_size: usize,
    device: &candle_core::Device,
) -> Result<usize> {
    let probe = Tensor::zeros((1, 1, hidden_size), DType::F32, device)?;
    let mut ctx = Ctx::new(Tensor::ones((1, 1), DType::F32, device)?);
    hooks.embeddings(probe, &mut ctx)?;
    let prefix = hooks
        .attention_prefix(0, &ctx)?
        .map(|p| p.len())
        .unwrap_or(0);
    Ok(ctx.virtual_tokens + prefix)
}

/// The hooks of the bare frozen model.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn touches(&self, _site: SiteId) -> bool {
        false
    }
}
