//! The frozen model contract: a spec, a forward pass that calls the [`Hooks`], and the pieces the tasks
//! need (token embeddings, the LM head) so that logits are computed only where a loss or prediction needs them.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use peft_core::model::Batch;
//! let ids = Tensor::new(&[[1u32, 2, 3], [4, 5, 0]], &Device::Cpu).unwrap();
//! let mask = Tensor::new(&[[1f32, 1., 1.], [1., 1., 0.]], &Device::Cpu).unwrap();
//! let batch = Batch::new(ids, mask).unwrap();
//! assert_eq!(batch.shape(), (2, 3));
//! ```

use candle_core::{DType, Device, Tensor};

use crate::error::{PeftError, Result};
use crate::frozen::FrozenLinear;
use crate::hooks::Hooks;
use crate::spec::{ModelSpec, SiteId};

/// A right-padded batch of token ids.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, seq]` u32 token ids.
    pub input_ids: Tensor,
    /// `[batch, seq]` f32, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
}

impl Batch {
    /// A batch from ids and a mask of the same shape.
    pub fn new(input_ids: Tensor, attention_mask: Tensor) -> Result<Self> {
        if input_ids.dims() != attention_mask.dims() || input_ids.rank() != 2 {
            return Err(PeftError::ShapeMismatch {
                what: "attention mask".into(),
                expected_from: "input ids".into(),
                expected: input_ids.dims().to_vec(),
                got_from: "attention mask".into(),
                got: attention_mask.dims().to_vec(),
            });
        }
        Ok(Batch {
            input_ids: input_ids.to_dtype(DType::U32)?,
            attention_mask: attention_mask.to_dtype(DType::F32)?,
        })
    }

    /// One unpadded sequence.
    pub fn single(ids: &[u32], device: &Device) -> Result<Self> {
        let input_ids = Tensor::new(ids, device)?.unsqueeze(0)?;
        let attention_mask = Tensor::ones((1, ids.len()), DType::F32, device)?;
        Ok(Batch {
            input_ids,
            attention_mask,
        })
    }

    /// `(batch, seq)`.
    pub fn shape(&self) -> (usize, usize) {
        self.input_ids.dims2().unwrap_or((0, 0))
    }
}

/// What a forward pass returns: final hidden states (after the last norm) for every position, virtual ones
/// included, so that the task picks the rows that need logits.
#[derive(Debug, Clone)]
pub struct Output {
    /// `[batch, virtual + seq, hidden]`.
    pub hidden: Tensor,
    /// Virtual tokens the hooks prepended; real token `t` sits at row `virtual_tokens + t`.
    pub virtual_tokens: usize,
}

/// A frozen model of the zoo.
pub trait BaseModel: Send + Sync {
    /// Shape and injection sites.
    fn spec(&self) -> &ModelSpec;

    /// The device the weights live on.
    fn device(&self) -> &Device;

    /// Word embeddings of `ids` (no positions), `[.., hidden]`: what prompt tuning's TEXT init copies.
    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor>;

    /// The forward pass with hooks.
    fn forward(&self, batch: &Batch, hooks: &dyn Hooks) -> Result<Output>;

    /// The LM head (`[vocab, hidden]`; tied to the word embeddings where the checkpoint ties them).
    fn lm_head(&self) -> &FrozenLinear;

    /// The frozen projection at a linear `site`.
    fn frozen_linear(&self, site: SiteId) -> Option<&FrozenLinear>;

    /// The frozen projection at a linear `site`, for merging an adapter's weight delta into it.
    fn frozen_linear_mut(&mut self, site: SiteId) -> Option<&mut FrozenLinear>;

    /// Every frozen parameter by its Hugging Face name, as loaded (for inspection and for methods that start from a
    /// frozen value, as BitFit does).
    fn parameters(&self) -> Vec<(String, Tensor)>;

    /// Logits over the whole vocabulary for `hidden` rows `[.., hidden]`.
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head().forward(hidden)
    }

    /// Logits of the given vocabulary rows only (verbalizer label words), `[.., rows]`.
    fn logits_of(&self, hidden: &Tensor, token_ids: &[u32]) -> Result<Tensor> {
        let head = self.lm_head();
        let ids = Tensor::new(token_ids, head.weight().device())?;
        let rows = FrozenLinear::new(
            head.weight().index_select(&ids, 0)?,
            head.bias().map(|b| b.index_select(&ids, 0)).transpose()?,
        );
        rows.forward(hidden)
    }
}
