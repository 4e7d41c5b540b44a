//! HF PEFT's `PromptEncoderConfig` (`peft_type = "P_TUNING"`): field names, defaults, the checks made before
//! anything is allocated, and the model-derived fields filled in when the adapter is built.
//!
//! ```
//! use peft_prompt::{PromptEncoderConfig, PromptEncoderReparameterizationType};
//! let cfg: PromptEncoderConfig = serde_json::from_str(
//!     r#"{"num_virtual_tokens": 4, "encoder_reparameterization_type": "LSTM"}"#).unwrap();
//! assert_eq!(cfg, PromptEncoderConfig::new(4, PromptEncoderReparameterizationType::Lstm));
//! assert_eq!((cfg.encoder_num_layers, cfg.encoder_hidden_size), (2, None));
//! ```

use candle_core::{DType, Var};
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::prompt_learning::{default_task_type, PromptLearningConfig};
use peft_core::{PeftError, Result};
use serde::{Deserialize, Serialize};

use super::adapter::{PTuning, Prompt};
use super::prompt_encoder::{PromptEncoder, PromptEncoderReparameterizationType};

/// HF PEFT's `PromptEncoderConfig`: same field names, defaults and meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptEncoderConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Fields every HF PEFT prompt-learning config has (`num_virtual_tokens`, required; the rest filled from
    /// the model, `token_dim` being its hidden size).
    #[serde(flatten)]
    pub prompt_learning: PromptLearningConfig,
    /// The encoder: `MLP` (default) or `LSTM`.
    #[serde(default)]
    pub encoder_reparameterization_type: PromptEncoderReparameterizationType,
    /// Hidden size of the encoder; `None` becomes `token_dim` when the adapter is built, as HF PEFT fills it.
    #[serde(default)]
    pub encoder_hidden_size: Option<usize>,
    /// LSTM layers (default 2); the MLP always has three linear layers and ignores this, as HF PEFT does.
    #[serde(default = "default_encoder_num_layers")]
    pub encoder_num_layers: usize,
    /// Dropout between LSTM layers (default 0.0). HF PEFT's MLP has no dropout; a non-zero value is refused for
    /// training an LSTM encoder here.
    #[serde(default)]
    pub encoder_dropout: f64,
    /// Extra modules HF PEFT trains and saves; not supported here (must be empty).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

fn default_encoder_num_layers() -> usize {
    2
}

impl PromptEncoderConfig {
    /// A config with `n` virtual tokens and the given encoder, every other field at HF PEFT's default.
    pub fn new(n: usize, encoder: PromptEncoderReparameterizationType) -> Self {
        PromptEncoderConfig {
            common: CommonConfig::default(),
            prompt_learning: PromptLearningConfig::new(n),
            encoder_reparameterization_type: encoder,
            encoder_hidden_size: None,
            encoder_num_layers: default_encoder_num_layers(),
            encoder_dropout: 0.0,
            modules_to_save: None,
        }
    }

    /// Total virtual tokens (`num_virtual_tokens x num_transformer_submodules`).
    pub fn total_virtual_tokens(&self) -> usize {
        self.prompt_learning.total_virtual_tokens()
    }

    /// Refuses what cannot be built for a model of this spec, before anything is allocated.
    fn validate(&self, spec: &peft_core::spec::ModelSpec) -> Result<()> {
        self.prompt_learning.check_prompt_for(spec, "P-tuning")?;
        // HF PEFT lists the classification head of a SEQ_CLS adapter here; the head travels as WithClassifier.
        peft_core::head::check_modules_to_save(
            self.modules_to_save.as_ref(),
            self.common.task_type.as_deref(),
            "P-tuning",
        )?;
        if self.encoder_hidden_size == Some(0) {
            return Err(PeftError::Config(
                "encoder_hidden_size must be at least 1 (or left out: it then equals token_dim)"
                    .into(),
            ));
        }
        if !(0.0..1.0).contains(&self.encoder_dropout) {
            return Err(PeftError::Config(format!(
                "encoder_dropout must be in [0, 1), got {}",
                self.encoder_dropout
            )));
        }
        let lstm =
            self.encoder_reparameterization_type == PromptEncoderReparameterizationType::Lstm;
        if lstm && !self.common.inference_mode && self.encoder_dropout != 0.0 {
            return Err(PeftError::Unsupported(format!(
                "encoder_dropout = {} between LSTM layers is not supported here; use 0.0 (HF PEFT's default)",
                self.encoder_dropout
            )));
        }
        Ok(())
    }
}

#[typetag::serde(name = "P_TUNING")]
impl PeftMethod for PromptEncoderConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        let spec = init.model.spec();
        self.validate(spec)?;
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
        config.encoder_hidden_size = Some(self.encoder_hidden_size.unwrap_or(spec.hidden_size));
        let (total, dim) = (config.total_virtual_tokens(), spec.hidden_size);
        let device = init.model.device().clone();
        let prompt = if config.common.inference_mode {
            // HF PEFT builds no encoder for an adapter loaded for inference: the file holds its output.
            Prompt::Saved(Var::zeros((total, dim), DType::F32, &device)?)
        } else {
            Prompt::Encoder(PromptEncoder::new(
                config.encoder_reparameterization_type,
                total,
                dim,
                config.encoder_hidden_size.unwrap_or(dim),
                config.encoder_num_layers,
                &mut init.rng,
                &device,
            )?)
        };
        Ok(Box::new(PTuning::new(config, prompt)))
    }

    peft_core::prompt_learning_accessors!();
}
