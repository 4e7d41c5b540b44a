//! The method contract. A [`PeftMethod`] is a configuration (serde + typetag, tagged by HF PEFT's
//! `peft_type`, so that experiment files and `adapter_config.json` name it the same way and a third-party crate
//! can register a new one); building it against a frozen model yields an [`Adapter`]: trainable state plus the
//! [`Hooks`] it installs.
//!
//! ```
//! use peft_core::method::PeftMethod;
//! // An unknown tag is refused with the tags that are known (none are linked into this doctest).
//! let err = serde_json::from_str::<Box<dyn PeftMethod>>(r#"{"peft_type": "NOPE"}"#).unwrap_err();
//! assert!(err.to_string().contains("NOPE"));
//! ```

use std::collections::HashMap;
use std::fmt::Debug;

use candle_core::{Tensor, Var};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::{PeftError, Result};
use crate::hooks::Hooks;
use crate::model::BaseModel;

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

/// A method's configuration; `build` makes the stateful adapter.
#[typetag::serde(tag = "peft_type")]
pub trait PeftMethod: Debug + Send + Sync {
    /// Builds the adapter for `init.model`, with fresh (seeded) trainable parameters.
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>>;

    /// The common HF PEFT fields.
    fn common(&self) -> &CommonConfig;

    /// A copy of this config with the common fields replaced (used when saving).
    fn with_common(&self, common: CommonConfig) -> Box<dyn PeftMethod>;

    /// Whether this is one of HF PEFT's prompt-learning methods (prompt tuning, P-tuning, prefix tuning),
    /// whose saved keys carry no `base_model.model.` prefix.
    fn is_prompt_learning(&self) -> bool {
        false
    }

    /// The integer setting that sizes this method (`num_virtual_tokens`, `r`), for matching a parameter
    /// budget; `None` (the default) for a method of fixed size. The trainable count must grow with it.
    fn size_knob(&self) -> Option<&'static str> {
        None
    }

    /// This config with its [`PeftMethod::size_knob`] set to `size` (at least 1) for the model `spec`
    /// describes; `None` without a knob.
    fn with_size(&self, size: usize, spec: &crate::spec::ModelSpec) -> Option<Box<dyn PeftMethod>> {
        let _ = (size, spec);
        None
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

    /// Trainable variables, named after their HF PEFT keys.
    fn trainable(&self) -> Vec<(String, Var)>;

    /// What gets saved in `adapter_model.safetensors`, by HF PEFT key.
    fn tensors(&self) -> Result<Vec<(String, Tensor)>>;

    /// Replaces the adapter's state by saved tensors; names the key and both shapes on a mismatch.
    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()>;

    /// Trainable parameter count.
    fn num_trainable(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// What building the adapter decided beyond the config's words (biases added where the checkpoint has
    /// none, say), for the user to read; empty by default.
    fn notes(&self) -> Vec<String> {
        Vec::new()
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
