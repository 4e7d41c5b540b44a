//! Token classification (named entities, parts of speech): the adapter's trained head
//! ([`Adapter::classifier`](peft_core::method::Adapter::classifier), read through [`super::Tuned`], as HF's
//! `*ForTokenClassification` applies `classifier` to every final state) labels each token; the loss is the cross-entropy over labelled tokens (-100 elsewhere: sub-word continuations,
//! special tokens, virtual tokens), with the head applied only there.

use candle_core::{DType, Tensor};

use super::classify::{arg_max, row_cross_entropy};
use super::{cross_entropy, gather_rows, pad_batch, Evaluation, Outcomes, StepLoss, Task};
use peft_core::error::{PeftError, Result};

use super::Tuned;
use peft_core::model::BaseModel;

/// A token-classification example: ids and one label per id (a class index, or -100 for no label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Class index per token; -100 excludes a token.
    pub labels: Vec<i64>,
}

/// Token classification over encoded examples.
pub struct TokenClassification {
    train: Vec<TokenExample>,
    eval: Vec<TokenExample>,
    num_labels: usize,
    pad_id: u32,
}

impl TokenClassification {
    /// A task over `num_labels` classes.
    pub fn new(
        train: Vec<TokenExample>,
        eval: Vec<TokenExample>,
        num_labels: usize,
        pad_id: u32,
    ) -> Result<Self> {
        for (set, rows) in [("train", &train), ("eval", &eval)] {
            for (i, e) in rows.iter().enumerate() {
                if e.labels.len() != e.input_ids.len() {
                    return Err(PeftError::Data(format!(
                        "{set} example {i}: {} labels for {} tokens",
                        e.labels.len(),
                        e.input_ids.len()
                    )));
                }
                if let Some(l) = e
                    .labels
                    .iter()
                    .find(|&&l| l != -100 && (l < 0 || l as usize >= num_labels))
                {
                    return Err(PeftError::Data(format!(
                        "{set} example {i} has label {l}, outside the {num_labels} classes (-100 means no label)"
                    )));
                }
            }
        }
        Ok(TokenClassification {
            train,
            eval,
            num_labels,
            pad_id,
        })
    }

    /// Class logits `[n, num_labels]` of every labelled token of `examples`, and their labels.
    pub fn token_logits(
        &self,
        model: &dyn BaseModel,
        tuned: &Tuned,
        examples: &[&TokenExample],
    ) -> Result<(Tensor, Vec<u32>)> {
        let head = tuned.classifier().ok_or_else(|| {
            PeftError::Unsupported(
                "token classification needs a trained head: wrap the adapter in \
                 peft_core::head::WithClassifier (the CLI does so for `kind = \"token-classification\"`)"
                    .into(),
            )
        })?;
        if head.weight.dim(0)? != self.num_labels {
            return Err(PeftError::ShapeMismatch {
                what: "classification head".into(),
                expected_from: "the task's classes".into(),
                expected: vec![self.num_labels, model.spec().hidden_size],
                got_from: "the adapter".into(),
                got: head.weight.dims().to_vec(),
            });
        }
        let rows: Vec<&[u32]> = examples.iter().map(|e| e.input_ids.as_slice()).collect();
        let batch = pad_batch(&rows, self.pad_id, model.device())?;
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (b, e) in examples.iter().enumerate() {
            for (t, &l) in e.labels.iter().enumerate() {
                if l >= 0 {
                    positions.push((b, t));
                    targets.push(l as u32);
                }
            }
        }
        if targets.is_empty() {
            return Err(PeftError::Data(
                "a batch has no labelled tokens (every label is -100)".into(),
            ));
        }
        let out = model.forward(&batch, tuned.hooks())?;
        let states = gather_rows(&out.hidden, out.virtual_tokens, &positions)?;
        Ok((head.forward(&states)?, targets))
    }
}

/// Whether any token of `examples` has a label.
fn any_labelled(examples: &[&TokenExample]) -> bool {
    examples.iter().any(|e| e.labels.iter().any(|&l| l >= 0))
}

impl Task for TokenClassification {
    fn name(&self) -> &str {
        "token-classification"
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, model: &dyn BaseModel, tuned: &Tuned, indices: &[usize]) -> Result<StepLoss> {
        let examples: Vec<&TokenExample> = indices.iter().map(|&i| &self.train[i]).collect();
        let tokens = examples.iter().map(|e| e.input_ids.len()).sum();
        if !any_labelled(&examples) {
            return StepLoss::without_terms(model.device(), tokens);
        }
        let (logits, targets) = self.token_logits(model, tuned, &examples)?;
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
        if self.eval.is_empty() {
            return Err(PeftError::Data("the evaluation set is empty".into()));
        }
        peft_core::grad::no_grad(|| {
            let n = self.eval.len();
            let (mut labels, mut predictions) = (vec![Vec::new(); n], vec![Vec::new(); n]);
            let mut loss_sums = vec![0f64; n];
            for (c, chunk) in self.eval.chunks(batch_size.max(1)).enumerate() {
                let refs: Vec<&TokenExample> = chunk.iter().collect();
                if !any_labelled(&refs) {
                    continue;
                }
                let (logits, targets) = self.token_logits(model, tuned, &refs)?;
                let rows = logits.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
                // token_logits lists the labelled tokens example by example, in order.
                let mut token = 0;
                for (j, e) in chunk.iter().enumerate() {
                    let i = c * batch_size.max(1) + j;
                    for _ in e.labels.iter().filter(|&&l| l >= 0) {
                        let label = targets[token];
                        labels[i].push(label);
                        predictions[i].push(arg_max(&rows[token]) as u32);
                        loss_sums[i] += row_cross_entropy(&rows[token], label as usize);
                        token += 1;
                    }
                }
            }
            if labels.iter().all(Vec::is_empty) {
                return Err(PeftError::Data(
                    "the evaluation set has no labelled tokens (every label is -100)".into(),
                ));
            }
            let outcomes = Outcomes::TokenClasses {
                classes: self.num_labels,
                labels,
                predictions,
                loss_sums,
            };
            Ok(Evaluation {
                metrics: outcomes.metrics(),
                outcomes: Some(outcomes),
            })
        })
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
