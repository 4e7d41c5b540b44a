//! Classification by verbalizer: each class is a label word, scored by the frozen LM head at the answer
//! position (the last token of the prompt); the loss is the cross-entropy over the label words only, and only
//! those vocabulary rows are computed.

use candle_core::{DType, Tensor, D};

use super::examples::ClassExample;
use super::{cross_entropy, gather_rows, pad_batch, Evaluation, Outcomes, StepLoss, Task};
use peft_core::error::{PeftError, Result};
use peft_core::hooks::Hooks;

use super::Tuned;
use peft_core::model::BaseModel;

/// Verbalizer classification over encoded examples.
pub struct VerbalizerClassification {
    train: Vec<ClassExample>,
    eval: Vec<ClassExample>,
    label_token_ids: Vec<u32>,
    pad_id: u32,
}

impl VerbalizerClassification {
    /// A task over encoded train / evaluation examples whose labels index `label_token_ids`.
    pub fn new(
        train: Vec<ClassExample>,
        eval: Vec<ClassExample>,
        label_token_ids: Vec<u32>,
        pad_id: u32,
    ) -> Result<Self> {
        let words = format!("the verbalizer has {} label words", label_token_ids.len());
        check_class_examples(&train, &eval, label_token_ids.len(), &words)?;
        Ok(VerbalizerClassification {
            train,
            eval,
            label_token_ids,
            pad_id,
        })
    }

    /// Label-word logits `[n, classes]` for `examples`.
    pub fn label_logits(
        &self,
        model: &dyn BaseModel,
        hooks: &dyn Hooks,
        examples: &[&ClassExample],
    ) -> Result<Tensor> {
        let hidden = last_token_states(model, hooks, examples, self.pad_id)?;
        model.logits_of(&hidden, &self.label_token_ids)
    }

    /// Predicted class per evaluation example.
    pub fn predict(
        &self,
        model: &dyn BaseModel,
        hooks: &dyn Hooks,
        batch_size: usize,
    ) -> Result<Vec<usize>> {
        let mut preds = Vec::with_capacity(self.eval.len());
        for chunk in self.eval.chunks(batch_size.max(1)) {
            let refs: Vec<&ClassExample> = chunk.iter().collect();
            let logits = self.label_logits(model, hooks, &refs)?;
            preds.extend(
                logits
                    .argmax(D::Minus1)?
                    .to_vec1::<u32>()?
                    .into_iter()
                    .map(|p| p as usize),
            );
        }
        Ok(preds)
    }
}

impl Task for VerbalizerClassification {
    fn name(&self) -> &str {
        "classification"
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, model: &dyn BaseModel, tuned: &Tuned, indices: &[usize]) -> Result<StepLoss> {
        let hooks = tuned.hooks();
        let examples: Vec<&ClassExample> = indices.iter().map(|&i| &self.train[i]).collect();
        let logits = self.label_logits(model, hooks, &examples)?;
        let targets: Vec<u32> = examples.iter().map(|e| e.label as u32).collect();
        let tokens = examples.iter().map(|e| e.input_ids.len()).sum();
        Ok(StepLoss {
            loss: cross_entropy(&logits, &targets)?,
            terms: targets.len(),
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
        ("accuracy", true)
    }

    fn eval_inputs(&self, n: usize) -> Vec<Vec<u32>> {
        self.eval
            .iter()
            .take(n)
            .map(|e| e.input_ids.clone())
            .collect()
    }
}

impl VerbalizerClassification {
    /// Evaluation body; batches are formed over examples sorted by length, so that little is padded.
    fn evaluate_tracked(
        &self,
        model: &dyn BaseModel,
        hooks: &dyn Hooks,
        batch_size: usize,
    ) -> Result<Evaluation> {
        classification_outcomes(
            &self.eval,
            self.label_token_ids.len(),
            batch_size,
            |chunk| self.label_logits(model, hooks, chunk),
        )
    }
}

/// Accuracy, loss, macro-F1 and Matthews correlation of class `logits_of` over `examples`, with each
/// example's outcome (in `examples`' order), from batches of examples sorted by length (so that little is
/// padded).
pub(super) fn classification_outcomes(
    examples: &[ClassExample],
    classes: usize,
    batch_size: usize,
    logits_of: impl Fn(&[&ClassExample]) -> Result<Tensor>,
) -> Result<Evaluation> {
    if examples.is_empty() {
        return Err(PeftError::Data("the evaluation set is empty".into()));
    }
    let n = examples.len();
    let (mut predictions, mut losses) = (vec![0u32; n], vec![0f64; n]);
    let by_length = sorted_by_length(examples);
    for chunk in by_length.chunks(batch_size.max(1)) {
        let logits = logits_of(&chunk.iter().map(|(_, e)| *e).collect::<Vec<_>>())?
            .detach()
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        for (row, (i, e)) in logits.iter().zip(chunk) {
            predictions[*i] = arg_max(row) as u32;
            losses[*i] = row_cross_entropy(row, e.label);
        }
    }
    let outcomes = Outcomes::Classes {
        classes,
        labels: examples.iter().map(|e| e.label as u32).collect(),
        predictions,
        losses,
    };
    Ok(Evaluation {
        metrics: outcomes.metrics(),
        outcomes: Some(outcomes),
    })
}

/// The first index of the largest value (as `argmax` picks it).
pub(super) fn arg_max(row: &[f64]) -> usize {
    let mut best = 0;
    for (c, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = c;
        }
    }
    best
}

/// `-log softmax(row)[label]`, computed stably in f64.
pub(super) fn row_cross_entropy(row: &[f64], label: usize) -> f64 {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
    log_sum - row[label]
}

/// Refuses examples whose label index is not below `classes` (`has` says what sets the count, for the
/// message) and examples without tokens.
pub(super) fn check_class_examples(
    train: &[ClassExample],
    eval: &[ClassExample],
    classes: usize,
    has: &str,
) -> Result<()> {
    for (set, rows) in [("train", train), ("eval", eval)] {
        if let Some((i, e)) = rows.iter().enumerate().find(|(_, e)| e.label >= classes) {
            return Err(PeftError::Data(format!(
                "{set} example {i} has label index {} but {has}",
                e.label
            )));
        }
        if let Some(i) = rows.iter().position(|e| e.input_ids.is_empty()) {
            return Err(PeftError::Data(format!("{set} example {i} has no tokens")));
        }
    }
    Ok(())
}

/// Final hidden states `[n, hidden]` of each example's last real token (the answer position of a verbalizer,
/// the pooled state of a head), from one right-padded forward pass.
pub(super) fn last_token_states(
    model: &dyn BaseModel,
    hooks: &dyn Hooks,
    examples: &[&ClassExample],
    pad_id: u32,
) -> Result<Tensor> {
    let rows: Vec<&[u32]> = examples.iter().map(|e| e.input_ids.as_slice()).collect();
    let batch = pad_batch(&rows, pad_id, model.device())?;
    let out = model.forward(&batch, hooks)?;
    let last: Vec<(usize, usize)> = rows
        .iter()
        .enumerate()
        .map(|(b, r)| (b, r.len() - 1))
        .collect();
    gather_rows(&out.hidden, out.virtual_tokens, &last)
}

/// `examples` with their indices, ordered by token count (stable), for batches with little padding.
fn sorted_by_length(examples: &[ClassExample]) -> Vec<(usize, &ClassExample)> {
    let mut refs: Vec<(usize, &ClassExample)> = examples.iter().enumerate().collect();
    refs.sort_by_key(|(_, e)| e.input_ids.len());
    refs
}

/// Macro-averaged F1 from a confusion matrix `[true][predicted]`.
pub(crate) fn macro_f1(confusion: &[Vec<usize>]) -> f64 {
    let k = confusion.len();
    let mut sum = 0.0;
    for (c, row) in confusion.iter().enumerate() {
        let tp = row[c] as f64;
        let predicted: usize = confusion.iter().map(|r| r[c]).sum();
        let actual: usize = row.iter().sum();
        let denom = predicted as f64 + actual as f64;
        sum += if denom > 0.0 { 2.0 * tp / denom } else { 0.0 };
    }
    sum / k.max(1) as f64
}

/// Matthews correlation coefficient from a confusion matrix `[true][predicted]`, in its multi-class form
/// (Gorodkin's R_K, as scikit-learn's `matthews_corrcoef` computes it): 0 where a marginal is constant.
pub(crate) fn matthews(confusion: &[Vec<usize>]) -> f64 {
    let k = confusion.len();
    let total: f64 = confusion.iter().flatten().sum::<usize>() as f64;
    let correct: f64 = (0..k).map(|c| confusion[c][c]).sum::<usize>() as f64;
    let actual: Vec<f64> = confusion
        .iter()
        .map(|r| r.iter().sum::<usize>() as f64)
        .collect();
    let predicted: Vec<f64> = (0..k)
        .map(|c| confusion.iter().map(|r| r[c]).sum::<usize>() as f64)
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let cov_tp = correct * total - dot(&actual, &predicted);
    let cov_pp = total * total - dot(&predicted, &predicted);
    let cov_tt = total * total - dot(&actual, &actual);
    if cov_pp == 0.0 || cov_tt == 0.0 {
        return 0.0;
    }
    cov_tp / (cov_tt * cov_pp).sqrt()
}

#[cfg(test)]
mod tests {
    use super::{macro_f1, matthews};

    #[test]
    fn matthews_of_known_confusions() {
        // Binary: tp 3, fn 1, fp 1, tn 1 -> (3*1 - 1*1) / sqrt(4*4*2*2) = 0.25.
        assert!((matthews(&[vec![1, 1], vec![1, 3]]) - 0.25).abs() < 1e-12);
        // Perfect, inverted, and constant predictions.
        assert!((matthews(&[vec![2, 0], vec![0, 3]]) - 1.0).abs() < 1e-12);
        assert!((matthews(&[vec![0, 2], vec![3, 0]]) + 1.0).abs() < 1e-12);
        assert_eq!(matthews(&[vec![2, 0], vec![3, 0]]), 0.0);
        // Three classes: sklearn.metrics.matthews_corrcoef([0,0,1,1,2,2], [0,1,1,2,2,0]) = 0.25.
        let c = vec![vec![1, 1, 0], vec![0, 1, 1], vec![1, 0, 1]];
        assert!((matthews(&c) - 0.25).abs() < 1e-12, "{}", matthews(&c));
    }

    #[test]
    fn macro_f1_of_a_known_confusion() {
        // class 0: tp 3, fp 1, fn 1 -> f1 0.75; class 1: tp 1, fp 1, fn 1 -> f1 0.5
        let f1 = macro_f1(&[vec![3, 1], vec![1, 1]]);
        assert!((f1 - 0.625).abs() < 1e-12);
    }
}
