//! The method contract. A [`PeftMethod`] is a configuration (serde + typetag, tagged by HF PEFT's
//! `peft_type`, so that experiment files and `adapter_config.json` name it the same way and a third-party crate
//! can register a new one); building it against a frozen model yields an [`Adapter`]: trainable state plus the
//! [`Hooks`] it installs.
//!
//! A config states only what is its own: `build`, and where its common fields are. Copies with other common
//! fields or another size, and the prompt-learning answers, come from the trait's defaults.
//!
//! ```
//! use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
//! use peft_core::prompt_learning::PromptLearningConfig;
//! use peft_core::spec::ModelSpec;
//! use serde::{Deserialize, Serialize};
//!
//! /// A prompt-learning method reduced to its config.
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct ToyConfig {
//!     #[serde(flatten)]
//!     common: CommonConfig,
//!     #[serde(flatten)]
//!     prompt_learning: PromptLearningConfig,
//! }
//!
//! #[typetag::serde(name = "TOY")]
//! impl PeftMethod for ToyConfig {
//!     fn build(&self, _init: &mut InitCtx) -> peft_core::Result<Box<dyn Adapter>> {
//!         Err(peft_core::PeftError::Unsupported("a toy builds nothing".into()))
//!     }
//!     fn common(&self) -> &CommonConfig { &self.common }
//!     fn common_mut(&mut self) -> &mut CommonConfig { &mut self.common }
//!     fn prompt_learning(&self) -> Option<&PromptLearningConfig> { Some(&self.prompt_learning) }
//!     fn prompt_learning_mut(&mut self) -> Option<&mut PromptLearningConfig> {
//!         Some(&mut self.prompt_learning)
//!     }
//! }
//!
//! fn main() {
//!     let toy: Box<dyn PeftMethod> =
//!         serde_json::from_str(r#"{"peft_type": "TOY", "num_virtual_tokens": 4}"#).unwrap();
//!     assert!(toy.is_prompt_learning());
//!     assert_eq!(toy.size_knob(), Some("num_virtual_tokens"));
//!     let spec = ModelSpec::new("gpt2", 2, 32, 4, 4, 128, 64);
//!     let smallest = toy.with_size(0, &spec).unwrap(); // at least one virtual token
//!     assert_eq!(smallest.prompt_learning().unwrap().num_virtual_tokens, 1);
//!     let saved = toy.with_common(CommonConfig { inference_mode: true, ..toy.common().clone() });
//!     assert!(saved.common().inference_mode && !toy.common().inference_mode);
//!     assert_eq!(serde_json::to_value(&saved).unwrap()["num_virtual_tokens"], 4);
//!
//!     // An unknown tag is refused with the tags that are known.
//!     let err = serde_json::from_str::<Box<dyn PeftMethod>>(r#"{"peft_type": "NOPE"}"#).unwrap_err();
//!     assert!(err.to_string().contains("NOPE") && err.to_string().contains("TOY"));
//! }
//! ```

use std::collections::HashMap;
use std::fmt::Debug;

use candle_core::{Tensor, Var};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::{PeftError, Result};
use crate::head::ClassifierHead;
use crate::hooks::Hooks;
use crate::model::BaseModel;
use crate::prompt_learning::PromptLearningConfig;

/// Fields every HF PEFT config carries (`PeftConfig`), flattened into each method's config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommonConfig {
    /// The model the adapter was trained on; informational when loading (a different name is a warning).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// HF PEFT task type (`CAUSAL_LM`, `SEQ_CLS`, ...).
    #[serde(default)]
    pub task_type: Option<String>,
    /// Whether the adapter was saved for inference.
    #[serde(default)]
    pub inference_mode: bool,
    /// Revision of the base model.
    #[serde(default)]
    pub revision: Option<String>,
}

/// Everything a method may use when it builds its adapter, without importing a model.
pub struct InitCtx<'a> {
    /// The frozen model (spec, token embeddings, parameters).
    pub model: &'a dyn BaseModel,
    /// The model's tokenizer, for text initialisations.
    pub tokenizer: Option<&'a tokenizers::Tokenizer>,
    /// Seeded generator for random initialisations: the same seed gives the same adapter.
    pub rng: StdRng,
}

/// A boxed copy of a method config: what makes `Box<dyn PeftMethod>` cloneable, and the trait's defaults able to
/// return changed copies. Every `Clone` config has it; nothing implements it by hand.
pub trait MethodClone {
    /// A copy of this config, boxed.
    fn clone_method(&self) -> Box<dyn PeftMethod>;
}

impl<T: PeftMethod + Clone + 'static> MethodClone for T {
    fn clone_method(&self) -> Box<dyn PeftMethod> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn PeftMethod> {
    fn clone(&self) -> Self {
        self.clone_method()
    }
}

/// A method's configuration; `build` makes the stateful adapter.
///
/// An implementation states `build` and where its [`CommonConfig`] is (`common`, `common_mut`); a
/// prompt-learning method also where its [`PromptLearningConfig`] is, which makes it answer
/// [`is_prompt_learning`](PeftMethod::is_prompt_learning) and sizes it by `num_virtual_tokens`. A method sized by
/// something else overrides [`size_knob`](PeftMethod::size_knob) and [`with_size`](PeftMethod::with_size).
#[typetag::serde(tag = "peft_type")]
pub trait PeftMethod: MethodClone + Debug + Send + Sync {
    /// Builds the adapter for `init.model`, with fresh (seeded) trainable parameters.
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>>;

    /// The common HF PEFT fields.
    fn common(&self) -> &CommonConfig;

    /// The common HF PEFT fields, to change.
    fn common_mut(&mut self) -> &mut CommonConfig;

    /// A copy of this config with the common fields replaced (used when saving).
    fn with_common(&self, common: CommonConfig) -> Box<dyn PeftMethod> {
        let mut copy = self.clone_method();
        *copy.common_mut() = common;
        copy
    }

    /// The fields HF PEFT's prompt-learning methods (prompt tuning, P-tuning, prefix tuning) share; `None` (the
    /// default) for any other method.
    fn prompt_learning(&self) -> Option<&PromptLearningConfig> {
        None
    }

    /// [`PeftMethod::prompt_learning`], to change.
    fn prompt_learning_mut(&mut self) -> Option<&mut PromptLearningConfig> {
        None
    }

    /// Whether this is one of HF PEFT's prompt-learning methods, whose saved keys carry no `base_model.model.`
    /// prefix.
    fn is_prompt_learning(&self) -> bool {
        self.prompt_learning().is_some()
    }

    /// The integer setting that sizes this method (`num_virtual_tokens`, `r`), for matching a parameter
    /// budget: `num_virtual_tokens` for a prompt-learning method, else `None` (a method of fixed size) unless
    /// overridden. The trainable count must grow with it.
    fn size_knob(&self) -> Option<&'static str> {
        self.prompt_learning().map(|_| "num_virtual_tokens")
    }

    /// This config with its [`PeftMethod::size_knob`] set to `size` (at least 1) for the model `spec`
    /// describes; `None` without a knob.
    fn with_size(&self, size: usize, spec: &crate::spec::ModelSpec) -> Option<Box<dyn PeftMethod>> {
        let _ = spec;
        self.prompt_learning()?;
        let mut copy = self.clone_method();
        copy.prompt_learning_mut()?.num_virtual_tokens = size.max(1);
        Some(copy)
    }

    /// Whether the method trains the base model's own weights (full fine-tuning): the model must then be
    /// loaded with trainable weights (`peft` does so for such a method).
    fn trains_base_weights(&self) -> bool {
        false
    }
}

/// A built method: named trainable variables, the tensors it saves, and its hooks.
pub trait Adapter: Hooks + Send + Sync {
    /// The configuration as it will be saved in `adapter_config.json` (model-derived fields filled in).
    fn config(&self) -> &dyn PeftMethod;

    /// The configuration to write into a saved adapter's `adapter_config.json`: [`Adapter::config`] unless the
    /// method changes it while training (AdaLoRA's final `rank_pattern`, which [`Adapter::tensors`] then
    /// follows).
    fn saved_config(&self) -> Box<dyn PeftMethod> {
        self.config().clone_method()
    }

    /// Trainable variables, named after their HF PEFT keys.
    fn trainable(&self) -> Vec<(String, Var)>;

    /// What gets saved in `adapter_model.safetensors`, by HF PEFT key.
    fn tensors(&self) -> Result<Vec<(String, Tensor)>>;

    /// Replaces the adapter's state by saved tensors; names the key and both shapes on a mismatch.
    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()>;

    /// A trained classification head the adapter carries (HF's `score` / `classifier`, saved with the adapter
    /// as HF PEFT's `modules_to_save` does), for tasks that classify from the final hidden state instead of a
    /// verbalizer. Models never call it (it is no injection site); tasks read it. `None` by default.
    fn classifier(&self) -> Option<ClassifierHead> {
        None
    }

    /// Trainable parameter count.
    fn num_trainable(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// What building the adapter decided beyond the config's words (biases added where the checkpoint has
    /// none, say), for the user to read; empty by default.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// A term the trainer adds to each training micro-batch's loss before weighing it, built from the trainable
    /// variables so that its gradient reaches them (AdaLoRA's orthogonality regulariser, as HF PEFT adds it to
    /// `outputs.loss` in training); evaluation never adds it. `None` by default.
    fn training_loss_term(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Called by the trainer after each optimiser step, the variables already updated: `step` counts the steps
    /// taken (1-based), `grads` are the gradients the step applied, in [`Adapter::trainable`]'s order (summed
    /// over micro-batches and ranks, then clipped). Every data-parallel rank makes the same call with the same
    /// gradients. For methods that change themselves while training (AdaLoRA's rank allocator, which HF PEFT
    /// has the user call as `update_and_allocate` between `optimizer.step()` and `zero_grad()`); nothing by
    /// default.
    fn after_optimizer_step(&self, step: usize, grads: &[Tensor]) -> Result<()> {
        let _ = (step, grads);
        Ok(())
    }

    /// What the method keeps across optimiser steps outside its trainable variables (AdaLoRA's sensitivity
    /// averages), by name: checkpoints save it, so that a resumed run ends where an uninterrupted one does.
    /// Empty by default.
    fn step_state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Restores what [`Adapter::step_state`] gave. The default, for methods that keep none, refuses any.
    fn load_step_state(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        match tensors.keys().next() {
            None => Ok(()),
            Some(key) => Err(PeftError::Unsupported(format!(
                "{} adapters keep no state between steps, but the checkpoint holds `{key}`: it was written by \
                 another method",
                self.config().typetag_name()
            ))),
        }
    }

    /// Folds the adapter into the frozen weights of `model` (LoRA's `merge`), after which its hooks add nothing.
    /// Methods that cannot be merged say so; merging twice is an error.
    fn merge_into(&self, model: &mut dyn BaseModel) -> Result<()> {
        let _ = model;
        Err(PeftError::Unsupported(format!(
            "{} adapters cannot be merged into the model's weights",
            self.config().typetag_name()
        )))
    }

    /// Undoes [`Adapter::merge_into`], restoring the frozen weights; an error when the adapter is not merged.
    fn unmerge_from(&self, model: &mut dyn BaseModel) -> Result<()> {
        let _ = model;
        Err(PeftError::Unsupported(format!(
            "{} adapters cannot be merged, so there is nothing to unmerge",
            self.config().typetag_name()
        )))
    }
}
