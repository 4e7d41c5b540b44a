//! The start of every forward pass: word embeddings looked up, the embedding hook applied (virtual tokens),
//! the per-layer key/value prefixes collected, and the whole checked against the model's context.
//!
//! ```
//! use peft_core::hooks::NoHooks;
//! use peft_core::model::{BaseModel, Batch};
//! let model = peft_models::tiny::llama(0);
//! let batch = Batch::single(&[1, 2, 3], &candle_core::Device::Cpu).unwrap();
//! let out = model.forward(&batch, &NoHooks).unwrap();
//! assert_eq!(out.hidden.dims(), &[1, 3, model.spec().hidden_size]);
//! ```

use candle_core::{DType, Tensor};
use peft_core::hooks::{Ctx, Hooks};
use peft_core::model::Batch;
use peft_core::quantized::QuantizedWeight;

use crate::attention::PrefixMasks;
use crate::error::{ModelError, Result};

/// A `[vocab, hidden]` table rows are looked up in.
pub(crate) trait Rows {
    /// `(vocab, hidden)`.
    fn dims2(&self) -> Result<(usize, usize)>;
    /// The rows `ids` (a flat u32 tensor), `[ids, hidden]`.
    fn select(&self, ids: &Tensor) -> Result<Tensor>;
}

impl Rows for Tensor {
    fn dims2(&self) -> Result<(usize, usize)> {
        Ok(Tensor::dims2(self)?)
    }

    fn select(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.index_select(ids, 0)?)
    }
}

/// A token embedding table, dense or kept in its GGUF block format (then a lookup dequantizes only the rows it
/// reads, and a tied LM head runs on the same blocks).
#[derive(Debug, Clone)]
pub enum TokenTable {
    /// An f32 (or trained) table.
    Dense(Tensor),
    /// A table kept quantized.
    Quantized(QuantizedWeight),
}

impl TokenTable {
    /// The dense table, where it is one.
    pub fn dense(&self) -> Option<&Tensor> {
        match self {
            TokenTable::Dense(t) => Some(t),
            TokenTable::Quantized(_) => None,
        }
    }
}

impl Rows for TokenTable {
    fn dims2(&self) -> Result<(usize, usize)> {
        match self {
            TokenTable::Dense(t) => Ok(t.dims2()?),
            TokenTable::Quantized(q) => Ok(q.dims()),
        }
    }

    fn select(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            TokenTable::Dense(t) => Ok(t.index_select(ids, 0)?),
            TokenTable::Quantized(q) => Ok(q.select_rows(&ids.to_vec1::<u32>()?)?),
        }
    }
}

/// Word embeddings of `ids` (any shape) from a `[vocab, hidden]` table, checking the ids against the vocabulary.
pub(crate) fn lookup(table: &(impl Rows + ?Sized), ids: &Tensor) -> Result<Tensor> {
    let (vocab, hidden) = table.dims2()?;
    let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
    if flat.elem_count() > 0 {
        let max = flat.max(0)?.to_scalar::<u32>()? as usize;
        if max >= vocab {
            return Err(ModelError::Config(format!(
                "token id {max} is outside the vocabulary of {vocab} tokens"
            )));
        }
    }
    let mut dims = ids.dims().to_vec();
    dims.push(hidden);
    Ok(table.select(&flat)?.reshape(dims)?)
}

/// What enters the first layer.
pub(crate) struct Embedded {
    /// `[batch, virtual + seq, hidden]`: word embeddings after the embedding hook, no positions yet.
    pub x: Tensor,
    /// The attention mask (virtual tokens included) and the count of virtual tokens.
    pub ctx: Ctx,
    /// Every layer's key/value prefix and attention bias.
    pub masks: PrefixMasks,
    /// Position of the first (virtual or real) token: the key/value prefix length.
    pub start: usize,
}

/// Looks up `batch`'s word embeddings in `table`, runs the embedding hook, collects the prefixes of
/// `layers` layers, and refuses a sequence longer than `max_positions` (named `limit_name` in the error, as
/// the model's config calls it).
pub(crate) fn embed(
    table: &(impl Rows + ?Sized),
    batch: &Batch,
    hooks: &dyn Hooks,
    layers: usize,
    max_positions: usize,
    limit_name: &str,
) -> Result<Embedded> {
    let mut ctx = Ctx::new(batch.attention_mask.clone());
    // Prompt tuning sees the word embeddings alone: positions are added over the whole sequence after.
    let x = hooks.embeddings(lookup(table, &batch.input_ids)?, &mut ctx)?;
    let seq = x.dim(1)?;
    let masks = PrefixMasks::collect(hooks, layers, &ctx, seq)?;
    let start = masks.prefix_len();
    if start + seq > max_positions {
        return Err(ModelError::Config(format!(
            "{} positions (prefix {start} + {seq} tokens) exceed {limit_name} {max_positions}",
            start + seq
        )));
    }
    Ok(Embedded {
        x,
        ctx,
        masks,
        start,
    })
}
