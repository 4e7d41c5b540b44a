//! Causal language modelling: next-token cross-entropy where labels are not -100, with logits computed only
//! at those positions (HF's shift: the hidden state at `t` predicts the label at `t + 1`).

use candle_core::Tensor;

use super::examples::LmExample;
use super::{cross_entropy, gather_rows, pad_batch, scalar, Evaluation, Outcomes, StepLoss, Task};
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
        let (positions, targets) = predicted_tokens(examples);
        if targets.is_empty() {
            return Ok((
                Tensor::zeros((), candle_core::DType::F32, model.device())?,
                0,
            ));
        }
        let out = model.forward(&self.batch_of(model, examples)?, hooks)?;
        let hidden = gather_rows(&out.hidden, out.virtual_tokens, &positions)?;
        let n = targets.len();
        Ok(((head_loss(model, &hidden, &targets)? * n as f64)?, n))
    }

    /// Each example's summed loss and predicted-token count, from one forward pass over `examples`.
    fn example_losses(
        &self,
        model: &dyn BaseModel,
        hooks: &dyn Hooks,
        examples: &[&LmExample],
    ) -> Result<Vec<(f64, usize)>> {
        let (positions, targets) = predicted_tokens(examples);
        let mut sums = vec![(0.0, 0); examples.len()];
        if targets.is_empty() {
            return Ok(sums);
        }
        let out = model.forward(&self.batch_of(model, examples)?, hooks)?;
        let mut from = 0;
        while from < positions.len() {
            let row = positions[from].0;
            let to = from + positions[from..].iter().take_while(|p| p.0 == row).count();
            let hidden = gather_rows(&out.hidden, out.virtual_tokens, &positions[from..to])?;
            let n = to - from;
            let mean = scalar(&head_loss(model, &hidden, &targets[from..to])?.detach())?;
            sums[row] = (mean * n as f64, n);
            from = to;
        }
        Ok(sums)
    }

    fn batch_of(
        &self,
        model: &dyn BaseModel,
        examples: &[&LmExample],
    ) -> Result<peft_core::model::Batch> {
        let rows: Vec<&[u32]> = examples.iter().map(|e| e.input_ids.as_slice()).collect();
        pad_batch(&rows, self.pad_id, model.device())
    }
}

/// The (row, position) pairs whose hidden state predicts a label, row by row, and those labels (HF's shift:
/// position `t` predicts the label at `t + 1`).
fn predicted_tokens(examples: &[&LmExample]) -> (Vec<(usize, usize)>, Vec<u32>) {
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
    (positions, targets)
}

/// Mean next-token cross-entropy of `hidden` rows against `targets` through the model's LM head.
fn head_loss(model: &dyn BaseModel, hidden: &Tensor, targets: &[u32]) -> Result<Tensor> {
    match model.lm_head() {
        // `logits` is this head's product: fused with the loss, the full logits never exist (nor, for a
        // head kept quantized, its f32 weight).
        Some(head) if head.bias().is_none() && !head.is_trained() => {
            match head.quantized_weight() {
                Some(q) => peft_kernels::linear_cross_entropy_quantized(hidden, q, targets),
                // The stored weight itself: a bf16 head (mixed precision) multiplies in bf16, where
                // `weight()` would widen a copy of it.
                None => match head.dense_weight() {
                    Some(w) => peft_kernels::linear_cross_entropy(hidden, w, targets),
                    None => peft_kernels::linear_cross_entropy(hidden, &head.weight()?, targets),
                },
            }
        }
        _ => cross_entropy(&model.logits(hidden)?, targets),
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

    fn evaluate_outcomes(
        &self,
        model: &dyn BaseModel,
        tuned: &Tuned,
        batch_size: usize,
    ) -> Result<Evaluation> {
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
    ) -> Result<Evaluation> {
        if self.eval.is_empty() {
            return Err(PeftError::Data("the evaluation set is empty".into()));
        }
        let (mut loss_sums, mut tokens) = (Vec::new(), Vec::new());
        for chunk in self.eval.chunks(batch_size.max(1)) {
            let refs: Vec<&LmExample> = chunk.iter().collect();
            for (sum, n) in self.example_losses(model, hooks, &refs)? {
                loss_sums.push(sum);
                tokens.push(n);
            }
        }
        if tokens.iter().sum::<usize>() == 0 {
            return Err(PeftError::Data(
                "the evaluation set has no labelled tokens (every label is -100)".into(),
            ));
        }
        let outcomes = Outcomes::Tokens { loss_sums, tokens };
        Ok(Evaluation {
            metrics: outcomes.metrics(),
            outcomes: Some(outcomes),
        })
    }
}
