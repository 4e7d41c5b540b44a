//! Gemma's RMS norm: `x / rms(x) * (1 + w)`, computed in f32, where `w` is the checkpoint's `weight` (zero
//! means the identity scale). LayerNorm tuning trains Hugging Face's `weight`, which is this raw `w`, so a
//! replacement weight from the hooks is used as `1 + w'` too.

use candle_core::Tensor;
use peft_core::hooks::Hooks;
use peft_core::spec::SiteId;

use crate::error::Result;
use crate::parts::RmsNorm;

/// A Gemma RMS norm whose weight a hook may replace (LayerNorm tuning) and to which a hook may add a bias
/// (BitFit), as [`RmsNorm`] allows.
#[derive(Debug, Clone)]
pub struct GemmaRmsNorm {
    /// The injection site.
    pub site: SiteId,
    /// The checkpoint's raw `w`.
    pub weight: Tensor,
    /// `1 + w`, computed once.
    scale: Tensor,
    /// Epsilon.
    pub eps: f64,
}

impl GemmaRmsNorm {
    /// Gemma's form of a norm the [`crate::parts::Loader`] registered (its weight is the raw `w`).
    pub fn new(norm: RmsNorm) -> Result<Self> {
        let scale = (&norm.weight + 1.0)?;
        Ok(GemmaRmsNorm {
            site: norm.site,
            weight: norm.weight,
            scale,
            eps: norm.eps,
        })
    }

    /// The normalised `x`, over its last dimension (any rank: the per-head q/k norms get `[B, H, T, D]`).
    pub fn forward(&self, x: &Tensor, hooks: &dyn Hooks) -> Result<Tensor> {
        let frozen = |x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>| {
            let y = match weight {
                // `+ 1` keeps the replacement's gradient: d(1 + w') / dw' = 1.
                Some(w) => peft_kernels::rms_norm(x, &(w + 1.0)?, self.eps)?,
                None => peft_kernels::rms_norm(x, &self.scale, self.eps)?,
            };
            Ok(match bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            })
        };
        Ok(hooks.norm(self.site, x, &frozen)?)
    }
}
