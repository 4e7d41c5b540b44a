//! Token classification (named entities, parts of speech): the adapter's trained head
//! ([`Adapter::classifier`](peft_core::method::Adapter::classifier), read through [`super::Tuned`], as HF's
//! `*ForTokenClassification` applies `classifier` to every final state) labels each token; the loss is the cross-entropy over labelled tokens (-100 elsewhere: sub-word continuations,
//! special tokens, virtual tokens), with the head applied only there.

use candle_core::{DType, Tensor, D};

use super::classify::macro_f1;
use super::{cross_entropy, gather_rows, pad_batch, scalar, Metrics, StepLoss, Task};
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

    fn evaluate(&self, model: &dyn BaseModel, tuned: &Tuned, batch_size: usize) -> Result<Metrics> {
        if self.eval.is_empty() {
            return Err(PeftError::Data("the evaluation set is empty".into()));
        }
        peft_core::grad::no_grad(|| {
            let k = self.num_labels;
            let mut confusion = vec![vec![0usize; k]; k];
            let (mut loss_sum, mut n) = (0f64, 0usize);
            for chunk in self.eval.chunks(batch_size.max(1)) {
                let refs: Vec<&TokenExample> = chunk.iter().collect();
                if !any_labelled(&refs) {
                    continue;
                }
                let (logits, targets) = self.token_logits(model, tuned, &refs)?;
                loss_sum += scalar(&cross_entropy(&logits, &targets)?)? * targets.len() as f64;
                n += targets.len();
                let preds = logits
                    .argmax(D::Minus1)?
                    .to_dtype(DType::U32)?
                    .to_vec1::<u32>()?;
                for (p, t) in preds.iter().zip(&targets) {
                    confusion[*t as usize][*p as usize] += 1;
                }
            }
            if n == 0 {
                return Err(PeftError::Data(
                    "the evaluation set has no labelled tokens (every label is -100)".into(),
                ));
            }
            let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
            let mut m = Metrics::new();
            m.insert("accuracy".into(), correct as f64 / n as f64);
            m.insert("loss".into(), loss_sum / n as f64);
            m.insert("macro_f1".into(), macro_f1(&confusion));
            Ok(m)
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
