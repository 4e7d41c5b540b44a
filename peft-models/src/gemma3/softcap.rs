//! Final logit soft-capping (`final_logit_softcapping`; None in Gemma-3 checkpoints, honoured where a config
//! sets it): `cap * tanh(logits / cap)` on the LM head's output, as `Gemma3ForCausalLM` applies it.
//!
//! `attn_logit_softcapping` is read but not applied: transformers' Gemma-3 attention does not pass it to its
//! attention function (unlike Gemma-2's), so a config that sets it computes the same logits as one that does
//! not, and so does this model.

use candle_core::Tensor;

use crate::error::Result;

/// `cap * tanh(x / cap)`.
pub fn softcap(x: &Tensor, cap: f64) -> Result<Tensor> {
    Ok(((x / cap)?.tanh()? * cap)?)
}
