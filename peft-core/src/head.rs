//! A trained sequence-classification head carried by an adapter, as HF PEFT's `modules_to_save` carries
//! `score` / `classifier` for `SEQ_CLS` tasks: [`WithClassifier`] wraps any adapter, adds the head's variables
//! to its trainable set, saves them under HF PEFT's key and hands the head to tasks through
//! [`Hooks::classifier`](crate::hooks::Hooks::classifier).
//!
//! ```
//! use peft_core::head::head_key;
//! assert_eq!(head_key("score", true), "base_model.score.weight");
//! assert_eq!(head_key("score", false), "base_model.model.score.weight");
//! ```

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use rand_distr::{Distribution, Normal};

use crate::error::{PeftError, Result};
use crate::hooks::{ClassifierHead, Ctx, Hooks, KvPrefix, LinearFn};
use crate::method::{Adapter, InitCtx, PeftMethod};
use crate::model::BaseModel;
use crate::spec::SiteId;

/// HF PEFT's task type for sequence classification.
pub const SEQ_CLS: &str = "SEQ_CLS";

/// The saved key of a head module's weight: prompt-learning methods wrap the model directly
/// (`base_model.<module>`), the others through a tuner model (`base_model.model.<module>`).
pub fn head_key(module: &str, prompt_learning: bool) -> String {
    if prompt_learning {
        format!("base_model.{module}.weight")
    } else {
        format!("base_model.model.{module}.weight")
    }
}

/// An adapter plus a trained linear head over the pooled final hidden state.
pub struct WithClassifier {
    inner: Box<dyn Adapter>,
    config: Box<dyn PeftMethod>,
    weight: Var,
    key: String,
}

impl WithClassifier {
    /// Wraps `inner` with a fresh `[num_labels, hidden]` head, initialised N(0, 0.02) as transformers
    /// initialises `score` (no bias, as GPT-2 and LLaMA heads have none).
    pub fn new(inner: Box<dyn Adapter>, num_labels: usize, init: &mut InitCtx) -> Result<Self> {
        if num_labels < 2 {
            return Err(PeftError::Config(format!(
                "a classification head needs at least 2 labels, got {num_labels}"
            )));
        }
        let hidden = init.model.spec().hidden_size;
        let normal = Normal::new(0f32, 0.02).expect("valid std");
        let values: Vec<f32> = (0..num_labels * hidden)
            .map(|_| normal.sample(&mut init.rng))
            .collect();
        let weight = Tensor::from_vec(values, (num_labels, hidden), init.model.device())?;
        Self::with_weight(inner, weight)
    }

    /// Wraps `inner` around a head weight read from a saved adapter.
    pub fn with_weight(inner: Box<dyn Adapter>, weight: Tensor) -> Result<Self> {
        let mut common = inner.config().common().clone();
        common.task_type = Some(SEQ_CLS.into());
        let config = inner.config().with_common(common);
        let key = head_key("score", config.is_prompt_learning());
        Ok(WithClassifier {
            inner,
            config,
            weight: Var::from_tensor(&weight.to_dtype(DType::F32)?)?,
            key,
        })
    }

    /// Finds a saved head among `tensors` (a key ending in `score.weight` or `classifier.weight`).
    pub fn saved_head(tensors: &HashMap<String, Tensor>) -> Option<Tensor> {
        tensors
            .iter()
            .find(|(k, _)| k.ends_with(".score.weight") || k.ends_with(".classifier.weight"))
            .map(|(_, t)| t.clone())
    }

    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }
}

impl Hooks for WithClassifier {
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.inner.embeddings(x, ctx)
    }

    fn attention_prefix(&self, layer: usize, ctx: &Ctx) -> Result<Option<KvPrefix>> {
        self.inner.attention_prefix(layer, ctx)
    }

    fn linear(&self, site: SiteId, x: &Tensor, next: &LinearFn) -> Result<Tensor> {
        self.inner.linear(site, x, next)
    }

    fn bias(&self, site: SiteId) -> Option<Tensor> {
        self.inner.bias(site)
    }

    fn classifier(&self) -> Option<ClassifierHead> {
        Some(ClassifierHead {
            weight: crate::grad::param(&self.weight),
            bias: None,
        })
    }
}

impl Adapter for WithClassifier {
    fn config(&self) -> &dyn PeftMethod {
        self.config.as_ref()
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        let mut vars = self.inner.trainable();
        vars.push((self.key.clone(), self.weight.clone()));
        vars
    }

    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut tensors = self.inner.tensors()?;
        tensors.push((self.key.clone(), self.weight.as_tensor().clone()));
        Ok(tensors)
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.inner.load_tensors(tensors)?;
        let saved = Self::saved_head(tensors).ok_or_else(|| {
            PeftError::Config(format!(
                "the adapter has no classification head (`{}`)",
                self.key
            ))
        })?;
        if saved.dims() != self.weight.dims() {
            return Err(PeftError::ShapeMismatch {
                what: self.key.clone(),
                expected_from: "the classification head".into(),
                expected: self.weight.dims().to_vec(),
                got_from: "the saved adapter".into(),
                got: saved.dims().to_vec(),
            });
        }
        self.weight.set(&saved.to_dtype(DType::F32)?)?;
        Ok(())
    }

    fn notes(&self) -> Vec<String> {
        self.inner.notes()
    }

    fn merge_into(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.inner.merge_into(model)
    }

    fn unmerge_from(&self, model: &mut dyn BaseModel) -> Result<()> {
        self.inner.unmerge_from(model)
    }
}
