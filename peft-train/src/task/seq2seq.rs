//! Sequence-to-sequence language modelling for encoder-decoder models (T5): the source goes to the encoder,
//! the decoder is teacher-forced on the target shifted right behind the decoder start token (HF's
//! `shift_tokens_right`), and the loss is the cross-entropy over every target token (the eos included), with
//! logits computed only there. Evaluation adds greedy generation with the decoder cache and reports the exact
//! match of generated and reference targets.

use candle_core::Tensor;

use super::{cross_entropy, gather_rows, pad_batch, scalar, Evaluation, Outcomes, StepLoss, Task};
use peft_core::error::{PeftError, Result};
use peft_core::hooks::Hooks;

use super::Tuned;
use peft_core::model::BaseModel;

/// One source / target pair, as token ids (the target ends with the eos token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seq2SeqExample {
    /// Encoder input ids.
    pub input_ids: Vec<u32>,
    /// Target ids the decoder learns to produce.
    pub labels: Vec<u32>,
}

/// Seq2seq training over encoded examples.
pub struct Seq2Seq {
    train: Vec<Seq2SeqExample>,
    eval: Vec<Seq2SeqExample>,
    pad_id: u32,
    eos_id: Option<u32>,
}

impl Seq2Seq {
    /// A task over examples; `pad_id` pads both sides, `eos_id` stops generation in evaluation.
    pub fn new(
        train: Vec<Seq2SeqExample>,
        eval: Vec<Seq2SeqExample>,
        pad_id: u32,
        eos_id: Option<u32>,
    ) -> Result<Self> {
        for (set, rows) in [("train", &train), ("eval", &eval)] {
            if let Some(i) = rows
                .iter()
                .position(|e| e.input_ids.is_empty() || e.labels.is_empty())
            {
                return Err(PeftError::Data(format!(
                    "{set} example {i} has an empty source or target"
                )));
            }
        }
        Ok(Seq2Seq {
            train,
            eval,
            pad_id,
            eos_id,
        })
    }

    /// The decoder's final states at every target position of `examples` `[n, H]`, example by example,
    /// and those targets.
    fn target_states(
        &self,
        model: &dyn BaseModel,
        hooks: &dyn Hooks,
        examples: &[&Seq2SeqExample],
    ) -> Result<(Tensor, Vec<u32>)> {
        let ed = model.encoder_decoder().ok_or_else(|| {
            PeftError::Unsupported(format!(
                "the seq2seq task needs an encoder-decoder model (T5); {} is a {} model",
                model.spec().name_or_path,
                model.spec().architecture
            ))
        })?;
        let start = ed.decoder_start_token_id();
        let sources: Vec<&[u32]> = examples.iter().map(|e| e.input_ids.as_slice()).collect();
        let shifted: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| {
                std::iter::once(start)
                    .chain(e.labels[..e.labels.len() - 1].iter().copied())
                    .collect()
            })
            .collect();
        let shifted_refs: Vec<&[u32]> = shifted.iter().map(Vec::as_slice).collect();
        let decoder = pad_batch(&shifted_refs, self.pad_id, model.device())?;
        let batch = pad_batch(&sources, self.pad_id, model.device())?
            .with_decoder_input_ids(decoder.input_ids)?;
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        for (b, e) in examples.iter().enumerate() {
            for (t, &label) in e.labels.iter().enumerate() {
                positions.push((b, t));
                targets.push(label);
            }
        }
        let out = model.forward(&batch, hooks)?;
        Ok((
            gather_rows(&out.hidden, out.virtual_tokens, &positions)?,
            targets,
        ))
    }

    /// Summed loss and the number of target tokens over `examples`.
    fn summed_loss(
        &self,
        model: &dyn BaseModel,
        hooks: &dyn Hooks,
        examples: &[&Seq2SeqExample],
    ) -> Result<(Tensor, usize)> {
        let (hidden, targets) = self.target_states(model, hooks, examples)?;
        let logits = model.logits(&hidden)?;
        let n = targets.len();
        Ok(((cross_entropy(&logits, &targets)? * n as f64)?, n))
    }

    /// Each example's summed target loss, from one forward pass over `examples`.
    fn example_losses(
        &self,
        model: &dyn BaseModel,
        hooks: &dyn Hooks,
        examples: &[&Seq2SeqExample],
    ) -> Result<Vec<f64>> {
        let (hidden, targets) = self.target_states(model, hooks, examples)?;
        let mut from = 0;
        let mut sums = Vec::with_capacity(examples.len());
        for e in examples {
            let n = e.labels.len();
            let logits = model.logits(&hidden.narrow(0, from, n)?)?;
            sums.push(scalar(&cross_entropy(&logits, &targets[from..from + n])?)? * n as f64);
            from += n;
        }
        Ok(sums)
    }

    /// Greedy outputs for the evaluation sources (each cut at its eos), in batches of `batch_size`.
    pub fn predict(
        &self,
        model: &dyn BaseModel,
        hooks: &dyn Hooks,
        batch_size: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let longest = self.eval.iter().map(|e| e.labels.len()).max().unwrap_or(0);
        let mut out = Vec::with_capacity(self.eval.len());
        for chunk in self.eval.chunks(batch_size.max(1)) {
            let sources: Vec<&[u32]> = chunk.iter().map(|e| e.input_ids.as_slice()).collect();
            out.extend(crate::generate::greedy_seq2seq_batch(
                model,
                hooks,
                &sources,
                longest + 1,
                self.eos_id,
                self.pad_id,
            )?);
        }
        Ok(out)
    }
}

impl Task for Seq2Seq {
    fn name(&self) -> &str {
        "seq2seq"
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, model: &dyn BaseModel, tuned: &Tuned, indices: &[usize]) -> Result<StepLoss> {
        let hooks = tuned.hooks();
        let examples: Vec<&Seq2SeqExample> = indices.iter().map(|&i| &self.train[i]).collect();
        let (sum, n) = self.summed_loss(model, hooks, &examples)?;
        let tokens = examples
            .iter()
            .map(|e| e.input_ids.len() + e.labels.len())
            .sum();
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
        if self.eval.is_empty() {
            return Err(PeftError::Data("the evaluation set is empty".into()));
        }
        peft_core::grad::no_grad(|| {
            let mut loss_sums = Vec::with_capacity(self.eval.len());
            for chunk in self.eval.chunks(batch_size.max(1)) {
                let refs: Vec<&Seq2SeqExample> = chunk.iter().collect();
                loss_sums.extend(self.example_losses(model, hooks, &refs)?);
            }
            let predictions = self.predict(model, hooks, batch_size)?;
            let outcomes = Outcomes::Generated {
                loss_sums,
                tokens: self.eval.iter().map(|e| e.labels.len()).collect(),
                exact: predictions
                    .iter()
                    .zip(&self.eval)
                    .map(|(p, e)| p.as_slice() == e.labels.as_slice())
                    .collect(),
            };
            Ok(Evaluation {
                metrics: outcomes.metrics(),
                outcomes: Some(outcomes),
            })
        })
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
