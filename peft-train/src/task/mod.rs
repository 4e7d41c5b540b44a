//! What the shared trainer optimises and how it is evaluated. A [`Task`] owns its encoded train and
//! evaluation examples; the trainer only picks which training examples form a micro-batch, so every method
//! sees the same data in the same order.
//!
//! ```
//! use peft_train::task::cross_entropy;
//! use candle_core::{Device, Tensor};
//! let logits = Tensor::new(&[[0f32, 0.], [10., 0.]], &Device::Cpu).unwrap();
//! let loss = cross_entropy(&logits, &[1, 0]).unwrap().to_scalar::<f32>().unwrap();
//! assert!((loss - (2f32.ln() + 4.54e-5) / 2.).abs() < 1e-4);
//! ```

mod causal_lm;
mod classify;
mod examples;
mod head_classify;
mod outcomes;
mod seq2seq;
mod token_classify;
mod tuned;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

pub use causal_lm::CausalLm;
pub use classify::VerbalizerClassification;
pub use examples::{ClassExample, LmExample};
pub use head_classify::HeadClassification;
pub use outcomes::{Evaluation, Outcomes};
pub use seq2seq::{Seq2Seq, Seq2SeqExample};
pub use token_classify::{TokenClassification, TokenExample};
pub use tuned::Tuned;

use peft_core::error::Result;
use peft_core::model::{BaseModel, Batch};

/// Named evaluation results (`accuracy`, `loss`, `perplexity`, ...).
pub type Metrics = BTreeMap<String, f64>;

/// The loss of one micro-batch, how many terms it averages and how many tokens it covered (for tokens/s).
pub struct StepLoss {
    /// Scalar mean loss, differentiable with respect to the adapter.
    pub loss: Tensor,
    /// How many terms `loss` is the mean of (target tokens, or examples): data-parallel ranks weigh their
    /// shards' losses by it, so that the mean over a sharded micro-batch equals the mean over the whole one.
    pub terms: usize,
    /// Real (non-padding) input tokens in the micro-batch.
    pub tokens: usize,
}

impl StepLoss {
    /// The loss of examples with nothing to learn from (every label -100), as a data-parallel rank's shard
    /// of a micro-batch can be: a constant zero with no terms, to which the trainer adds no gradient.
    pub fn without_terms(device: &candle_core::Device, tokens: usize) -> Result<Self> {
        Ok(StepLoss {
            loss: Tensor::zeros((), candle_core::DType::F32, device)?,
            terms: 0,
            tokens,
        })
    }
}

/// A training objective with its data and its evaluation.
pub trait Task: Send + Sync {
    /// Short name for logs (`classification`, `causal-lm`).
    fn name(&self) -> &str;

    /// Number of training examples.
    fn train_len(&self) -> usize;

    /// Mean loss over the training examples at `indices`. Examples without a single loss term (every label
    /// -100) give [`StepLoss::without_terms`], not an error: under data parallelism they may be one rank's
    /// whole shard, and the trainer refuses a micro-batch only when no rank has a term.
    fn loss(&self, model: &dyn BaseModel, tuned: &Tuned, indices: &[usize]) -> Result<StepLoss>;

    /// Metrics over the evaluation examples, in batches of `batch_size`. A task implements this or
    /// [`evaluate_outcomes`](Task::evaluate_outcomes) (each defaults to the other).
    fn evaluate(&self, model: &dyn BaseModel, tuned: &Tuned, batch_size: usize) -> Result<Metrics> {
        Ok(self.evaluate_outcomes(model, tuned, batch_size)?.metrics)
    }

    /// [`evaluate`](Task::evaluate) with each example's outcome where the task keeps them (every built-in
    /// task does), for intervals and paired tests over the same dev examples.
    fn evaluate_outcomes(
        &self,
        model: &dyn BaseModel,
        tuned: &Tuned,
        batch_size: usize,
    ) -> Result<Evaluation> {
        Ok(Evaluation {
            metrics: self.evaluate(model, tuned, batch_size)?,
            outcomes: None,
        })
    }

    /// The metric that selects the best checkpoint, and whether higher is better.
    fn primary_metric(&self) -> (&'static str, bool);

    /// The token ids of the first `n` evaluation inputs as the model reads them (prompts, sources, blocks),
    /// for timing inference; empty where a task has none to offer.
    fn eval_inputs(&self, n: usize) -> Vec<Vec<u32>> {
        let _ = n;
        Vec::new()
    }
}

/// Mean cross-entropy of `logits` `[n, classes]` against `targets` (class indices).
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    peft_kernels::cross_entropy(logits, targets)
}

/// Right-pads `rows` of token ids with `pad_id` into a [`Batch`].
pub fn pad_batch(rows: &[&[u32]], pad_id: u32, device: &Device) -> Result<Batch> {
    crate::data::PaddedIds::pad(rows, pad_id)?.to_batch(device)
}

/// Rows `positions` (pairs of batch row, position in the real sequence) of the hidden states `[B, S, H]`,
/// shifted past the `virtual_tokens` the hooks prepended: `[n, H]`.
pub fn gather_rows(
    hidden: &Tensor,
    virtual_tokens: usize,
    positions: &[(usize, usize)],
) -> Result<Tensor> {
    let (_, s, h) = hidden.dims3()?;
    let flat: Vec<u32> = positions
        .iter()
        .map(|&(b, t)| (b * s + virtual_tokens + t) as u32)
        .collect();
    let idx = Tensor::new(flat, hidden.device())?;
    Ok(hidden.reshape(((), h))?.index_select(&idx, 0)?)
}

/// Scalar value of a one-element tensor as f64.
pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}
