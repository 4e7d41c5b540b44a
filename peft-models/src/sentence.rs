//! Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2 (`minilm-l6`): the mean of
//! the final token states over each row's real (non-padding) tokens, L2-normalised.
//!
//! ```
//! use peft_core::hooks::NoHooks;
//! use peft_core::model::Batch;
//! use peft_models::sentence::sentence_embedding;
//! let model = peft_models::bert::tiny(0);
//! let batch = Batch::single(&[2, 7, 9, 3], &candle_core::Device::Cpu).unwrap();
//! let e = sentence_embedding(&model, &batch, &NoHooks).unwrap();
//! assert_eq!(e.dims(), &[1, 32]);
//! let norm = e.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
//! assert!((norm - 1.0).abs() < 1e-5);
//! ```

use candle_core::{DType, Tensor};
use peft_core::hooks::Hooks;
use peft_core::model::{BaseModel, Batch};

use crate::error::Result;

/// `[batch, hidden]` unit-length embeddings of `batch`: `model`'s final states (through `hooks`) averaged over
/// the positions where the batch's attention mask is 1 (sentence-transformers' mean pooling: the sum over real
/// tokens divided by their count, at least 1e-9), then divided by their L2 norm (at least 1e-12, as
/// `torch.nn.functional.normalize`). Virtual tokens a prompt method prepends are not averaged: the pooling covers
/// the batch's own tokens.
pub fn sentence_embedding(
    model: &dyn BaseModel,
    batch: &Batch,
    hooks: &dyn Hooks,
) -> Result<Tensor> {
    let out = model.forward(batch, hooks)?;
    let (_, seq) = batch.shape();
    let hidden = out.hidden.narrow(1, out.virtual_tokens, seq)?;
    let mask = batch.attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    Ok(mean.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use peft_core::hooks::NoHooks;

    #[test]
    fn padding_does_not_change_the_embedding() {
        let m = crate::bert::tiny(1);
        let dev = m.device().clone();
        let ids = Tensor::new(&[[2u32, 8, 9, 10, 3], [2, 8, 3, 0, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]], &dev).unwrap();
        let batched = sentence_embedding(&m, &Batch::new(ids, mask).unwrap(), &NoHooks).unwrap();
        let single =
            sentence_embedding(&m, &Batch::single(&[2, 8, 3], &dev).unwrap(), &NoHooks).unwrap();
        let diff =
            peft_core::compare::max_abs_diff(&batched.narrow(0, 1, 1).unwrap(), &single).unwrap();
        assert!(diff < 1e-5, "{diff}");
        // The mean, not the first token: a different last token moves the embedding.
        let other =
            sentence_embedding(&m, &Batch::single(&[2, 8, 4], &dev).unwrap(), &NoHooks).unwrap();
        assert!(peft_core::compare::max_abs_diff(&other, &single).unwrap() > 1e-3);
    }
}
