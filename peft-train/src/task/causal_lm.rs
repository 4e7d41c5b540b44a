//! Causal language modelling: next-token cross-entropy where labels are not -100, with logits computed only
//! at those positions (HF's shift: the hidden state at `t` predicts the label at `t + 1`).

use candle_core::Tensor;

use super::examples::LmExample;
use super::{cross_entropy, gather_rows, pad_batch, scalar, Metrics, StepLoss, Task};
use peft_core::error::{PeftError, Result};
use peft_core::hooks::Hooks;

use super::Tuned;
use peft_core::model::BaseModel;

/// Causal-LM training over encoded examples.
pub struct CausalLm {
    train: Vec<LmExample>,
    eval: Vec<LmExample>,
    pad_id: u32,
}

impl CausalLm {
    /// A task over examples whose `labels` align with `input_ids` (-100 where no loss).
    pub fn new(train: Vec<LmExample>, eval: Vec<LmExample>, pad_id: u32) -> Result<Self> {
        for (set, rows) in [("train", &train), ("eval", &eval)] {
            for (i, e) in rows.iter().enumerate() {
                if e.labels.len() != e.input_ids.len() {
                    return Err(PeftError::Data(format!(
                        "{set} example {i}: {} labels for {} tokens",
                        e.labels.len(),
                        e.input_ids.len()
                    )));
                }
            }
        }
        Ok(CausalLm {
            train,
            eval,
            pad_id,
        })
    }

    /// Summed loss and the number of predicted tokens over `examples` (a constant zero and 0 when no label
    /// is set: no forward pass).
    fn summed_loss(
        &self,
        model: &dyn BaseModel,
        hooks: &dyn Hooks,
        examples: &[&LmExample],
    ) -> Result<(Tensor, usize)> {
        let rows: Vec<&[u32]> = examples.iter().map(|e| e.input_ids.as_slice()).collect();
        let batch = pad_batch(&rows, self.pad_id, model.device())?;
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        for (b, e) in examples.iter().enumerate() {
            for t in 0..e.input_ids.len().saturating_sub(1) {
                let label = e.labels[t + 1];
                if label >= 0 {
                    positions.push((b, t));
                    targets.push(label as u32);
                }
            }
        }
        if targets.is_empty() {
            return Ok((
                Tensor::zeros((), candle_core::DType::F32, model.device())?,
                0,
            ));
        }
        let out = model.forward(&batch, hooks)?;
        let hidden = gather_rows(&out.hidden, out.virtual_tokens, &positions)?;
        let loss = match model.lm_head() {
            // `logits` is this head's product: fused with the loss, the full logits never exist (nor, for a
            // head kept quantized, its f32 weight).
            Some(head) if head.bias().is_none() && !head.is_trained() => {
                match head.quantized_weight() {
                    Some(q) => peft_kernels::linear_cross_entropy_quantized(&hidden, q, &targets)?,
                    None => peft_kernels::linear_cross_entropy(&hidden, &head.weight()?, &targets)?,
                }
            }
            _ => cross_entropy(&model.logits(&hidden)?, &targets)?,
        };
        let n = targets.len();
        Ok(((loss * n as f64)?, n))
    }
}

impl Task for CausalLm {
    fn name(&self) -> &str {
        "causal-lm"
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, model: &dyn BaseModel, tuned: &Tuned, indices: &[usize]) -> Result<StepLoss> {
        let hooks = tuned.hooks();
        let examples: Vec<&LmExample> = indices.iter().map(|&i| &self.train[i]).collect();
        let (sum, n) = self.summed_loss(model, hooks, &examples)?;
        let tokens = examples.iter().map(|e| e.input_ids.len()).sum();
        if n == 0 {
            return StepLoss::without_terms(model.device(), tokens);
        }
        Ok(StepLoss {
            loss: (sum / n as f64)?,
            terms: n,
            tokens,
        })
    }

    fn evaluate(&self, model: &dyn BaseModel, tuned: &Tuned, batch_size: usize) -> Result<Metrics> {
        let hooks = tuned.hooks();
        peft_core::grad::no_grad(|| self.evaluate_tracked(model, hooks, batch_size))
    }

    fn primary_metric(&self) -> (&'static str, bool) {
        ("loss", false)
    }

    fn eval_inputs(&self, n: usize) -> Vec<Vec<u32>> {
        self.eval
            .iter()
            .take(n)
            .map(|e| e.input_ids.clone())
            .collect()
    }
}

impl CausalLm {
    /// Evaluation body (run with gradients off).
    fn evaluate_tracked(
        &self,
        model: &dyn BaseModel,
        hooks: &dyn Hooks,
        batch_size: usize,
    ) -> Result<Metrics> {
        if self.eval.is_empty() {
            return Err(PeftError::Data("the evaluation set is empty".into()));
        }
        let (mut total, mut count) = (0f64, 0usize);
        for chunk in self.eval.chunks(batch_size.max(1)) {
            let refs: Vec<&LmExample> = chunk.iter().collect();
            let (sum, n) = self.summed_loss(model, hooks, &refs)?;
            total += scalar(&sum.detach())?;
            count += n;
        }
        if count == 0 {
            return Err(PeftError::Data(
                "the evaluation set has no labelled tokens (every label is -100)".into(),
            ));
        }
        let loss = total / count as f64;
        let mut m = Metrics::new();
        m.insert("loss".into(), loss);
        m.insert("perplexity".into(), loss.exp());
        Ok(m)
    }
}
