//! HF PEFT's `PromptTuningConfig` (`peft_type = "PROMPT_TUNING"`): field names, defaults, and the model-derived
//! fields filled in when the adapter is built.
//!
//! ```
//! use peft_core::method::PeftMethod;
//! use peft_prompt::{PromptTuningConfig, PromptTuningInit};
//! let cfg: PromptTuningConfig = serde_json::from_str(r#"{"num_virtual_tokens": 8}"#).unwrap();
//! assert_eq!(cfg, PromptTuningConfig::new(8, PromptTuningInit::Random));
//! assert_eq!(cfg.size_knob(), Some("num_virtual_tokens"));
//! ```

use candle_core::{DType, Tensor, Var};
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::prompt_learning::{default_task_type, PromptLearningConfig};
use peft_core::Result;
use serde::{Deserialize, Serialize};

use super::adapter::PromptTuning;
use super::init::{initial_prompt, PromptTuningInit};

/// HF PEFT's `PromptTuningConfig`: same field names, defaults and meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptTuningConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Fields every HF PEFT prompt-learning config has (`num_virtual_tokens`, required; the rest filled from
    /// the model, `token_dim` being its hidden size).
    #[serde(flatten)]
    pub prompt_learning: PromptLearningConfig,
    /// Initialisation: `RANDOM` (default), `TEXT` or `SAMPLE_VOCAB`.
    #[serde(default)]
    pub prompt_tuning_init: PromptTuningInit,
    /// Text whose token embeddings initialise the prompt (`TEXT` init).
    #[serde(default)]
    pub prompt_tuning_init_text: Option<String>,
    /// Tokenizer used for `TEXT` init; HF PEFT requires it, here the model's own tokenizer is used.
    #[serde(default)]
    pub tokenizer_name_or_path: Option<String>,
    /// Arguments HF PEFT passes to its tokenizer; kept for round trips.
    #[serde(default)]
    pub tokenizer_kwargs: Option<serde_json::Value>,
    /// Extra modules HF PEFT trains and saves; not supported here (must be empty).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

impl PromptTuningConfig {
    /// A config with `n` virtual tokens and the given initialisation; the task type is the model's default when
    /// built.
    pub fn new(n: usize, init: PromptTuningInit) -> Self {
        PromptTuningConfig {
            common: CommonConfig::default(),
            prompt_learning: PromptLearningConfig::new(n),
            prompt_tuning_init: init,
            prompt_tuning_init_text: None,
            tokenizer_name_or_path: None,
            tokenizer_kwargs: None,
            modules_to_save: None,
        }
    }

    /// Total virtual tokens (`num_virtual_tokens x num_transformer_submodules`).
    pub fn total_virtual_tokens(&self) -> usize {
        self.prompt_learning.total_virtual_tokens()
    }
}

#[typetag::serde(name = "PROMPT_TUNING")]
impl PeftMethod for PromptTuningConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        let spec = init.model.spec();
        self.prompt_learning
            .check_prompt_for(spec, "prompt-tuning")?;
        // HF PEFT lists the classification head of a SEQ_CLS adapter here; the head travels as WithClassifier.
        peft_core::head::check_modules_to_save(
            self.modules_to_save.as_ref(),
            self.common.task_type.as_deref(),
            "prompt tuning",
        )?;
        let mut config = self.clone();
        if config.common.task_type.is_none() {
            config.common.task_type = Some(default_task_type(init.model).into());
        }
        config.prompt_learning.fill_from(
            spec,
            spec.hidden_size,
            spec.num_heads,
            config.common.task_type.as_deref(),
        )?;
        if config.prompt_tuning_init == PromptTuningInit::Text
            && config.tokenizer_name_or_path.is_none()
        {
            config.tokenizer_name_or_path = Some(spec.name_or_path.clone());
        }
        let (total, dim) = (config.total_virtual_tokens(), spec.hidden_size);
        let values = if config.common.inference_mode {
            // HF PEFT skips initialisation for an adapter loaded for inference: its tensors come from the file.
            Tensor::zeros((total, dim), DType::F32, init.model.device())?
        } else {
            initial_prompt(
                config.prompt_tuning_init,
                config.prompt_tuning_init_text.as_deref(),
                init,
                total,
                dim,
            )?
        };
        Ok(Box::new(PromptTuning::new(
            config,
            Var::from_tensor(&values)?,
        )))
    }

    peft_core::prompt_learning_accessors!();
}
