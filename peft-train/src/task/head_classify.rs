//! Classification by a trained head: the model's pooled state ([`BaseModel::pooled`]: the last real token's
//! final state for decoders, as transformers' `*ForSequenceClassification` decoders pool, BERT's pooler over
//! the first position) goes through the adapter's classifier
//! ([`Adapter::classifier`](peft_core::method::Adapter::classifier), see [`peft_core::head::WithClassifier`]);
//! the loss is the cross-entropy over classes.
//! This is how P-tuning v2 classifies, and any method can be trained this way.

use candle_core::Tensor;

use super::classify::{check_class_examples, classification_outcomes};
use super::examples::ClassExample;
use super::pad_batch;
use super::{cross_entropy, Evaluation, StepLoss, Task};
use peft_core::error::{PeftError, Result};

use super::Tuned;
use peft_core::model::BaseModel;

/// Head classification over encoded examples (labels are class indices).
pub struct HeadClassification {
    train: Vec<ClassExample>,
    eval: Vec<ClassExample>,
    num_labels: usize,
    pad_id: u32,
}

impl HeadClassification {
    /// A task over `num_labels` classes.
    pub fn new(
        train: Vec<ClassExample>,
        eval: Vec<ClassExample>,
        num_labels: usize,
        pad_id: u32,
    ) -> Result<Self> {
        let has = format!("the head has {num_labels} classes");
        check_class_examples(&train, &eval, num_labels, &has)?;
        Ok(HeadClassification {
            train,
            eval,
            num_labels,
            pad_id,
        })
    }

    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// Class logits `[n, num_labels]` for `examples`.
    pub fn class_logits(
        &self,
        model: &dyn BaseModel,
        tuned: &Tuned,
        examples: &[&ClassExample],
    ) -> Result<Tensor> {
        let head = tuned.classifier().ok_or_else(|| {
            PeftError::Unsupported(
                "this task classifies with a trained head, but the adapter has none: wrap it in \
                 peft_core::head::WithClassifier (the CLI does so for `kind = \"classification-head\"`)"
                    .into(),
            )
        })?;
        let classes = head.weight.dim(0)?;
        if classes != self.num_labels {
            return Err(PeftError::ShapeMismatch {
                what: "classification head".into(),
                expected_from: "the task's classes".into(),
                expected: vec![self.num_labels, model.spec().hidden_size],
                got_from: "the adapter".into(),
                got: head.weight.dims().to_vec(),
            });
        }
        let rows: Vec<&[u32]> = examples.iter().map(|e| e.input_ids.as_slice()).collect();
        let mut batch = pad_batch(&rows, self.pad_id, model.device())?;
        if examples.iter().any(|e| !e.token_type_ids.is_empty()) {
            // Sentence pairs: segment ids padded with 0, as the padding tokens' own.
            let mut types = Vec::with_capacity(examples.len());
            for (i, e) in examples.iter().enumerate() {
                match e.token_type_ids.len() {
                    0 => types.push(vec![0; e.input_ids.len()]),
                    n if n == e.input_ids.len() => types.push(e.token_type_ids.clone()),
                    n => {
                        return Err(PeftError::Data(format!(
                            "example {i} has {n} token type ids for {} tokens",
                            e.input_ids.len()
                        )))
                    }
                }
            }
            let rows: Vec<&[u32]> = types.iter().map(Vec::as_slice).collect();
            batch = batch.with_token_type_ids(pad_batch(&rows, 0, model.device())?.input_ids)?;
        }
        let out = model.forward(&batch, tuned.hooks())?;
        head.forward(&model.pooled(&out, &batch, tuned.hooks())?)
    }
}

impl Task for HeadClassification {
    fn name(&self) -> &str {
        "classification-head"
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, model: &dyn BaseModel, tuned: &Tuned, indices: &[usize]) -> Result<StepLoss> {
        let examples: Vec<&ClassExample> = indices.iter().map(|&i| &self.train[i]).collect();
        let logits = self.class_logits(model, tuned, &examples)?;
        let targets: Vec<u32> = examples.iter().map(|e| e.label as u32).collect();
        Ok(StepLoss {
            loss: cross_entropy(&logits, &targets)?,
            terms: targets.len(),
            tokens: examples.iter().map(|e| e.input_ids.len()).sum(),
        })
    }

    fn evaluate_outcomes(
        &self,
        model: &dyn BaseModel,
        tuned: &Tuned,
        batch_size: usize,
    ) -> Result<Evaluation> {
        peft_core::grad::no_grad(|| {
            classification_outcomes(&self.eval, self.num_labels, batch_size, |chunk| {
                self.class_logits(model, tuned, chunk)
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
