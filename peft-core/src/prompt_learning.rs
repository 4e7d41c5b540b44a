//! What the prompt-learning methods (prompt tuning, P-tuning, prefix tuning) share: the fields of HF PEFT's
//! `PromptLearningConfig` ([`PromptLearningConfig`], flattened into each method's config), and what they resolve
//! the same way from the model: the task type an adapter records when its config names none, and HF PEFT's
//! `num_transformer_submodules` (2 for a `SEQ_2_SEQ_LM` adapter on an encoder-decoder, else 1).
//!
//! An encoder-decoder prompt adapter holds twice the virtual tokens (HF PEFT's table has
//! `num_virtual_tokens x 2` rows) but feeds only the first `num_virtual_tokens` to the encoder; a prefix adapter
//! gives decoder layer `i` the key/value rows of layer slot `2i mod num_layers`, which is where HF PEFT's
//! reshaping of the duplicated prefix puts them.
//!
//! ```
//! use peft_core::prompt_learning::{decoder_prefix_slot, transformer_submodules, PromptLearningConfig, SEQ_2_SEQ_LM};
//! use peft_core::spec::ModelSpec;
//! let mut t5 = ModelSpec::new("t5", 4, 32, 4, 4, 128, 512);
//! t5.is_encoder_decoder = true;
//! assert_eq!(transformer_submodules(&t5, None, Some(SEQ_2_SEQ_LM)).unwrap(), 2);
//! let gpt2 = ModelSpec::new("gpt2", 2, 32, 4, 4, 128, 64);
//! assert!(transformer_submodules(&gpt2, Some(2), Some("CAUSAL_LM")).is_err());
//! assert_eq!((0..4).map(|i| decoder_prefix_slot(i, 4, 2)).collect::<Vec<_>>(), [0, 2, 0, 2]);
//!
//! // The shared fields read and write under HF PEFT's keys; the model fills in what the config leaves unset.
//! let mut shared: PromptLearningConfig = serde_json::from_str(r#"{"num_virtual_tokens": 3}"#).unwrap();
//! shared.fill_from(&t5, 32, 4, Some(SEQ_2_SEQ_LM)).unwrap();
//! assert_eq!((shared.token_dim, shared.num_layers, shared.total_virtual_tokens()), (Some(32), Some(4), 6));
//! assert_eq!(serde_json::to_value(&shared).unwrap()["num_transformer_submodules"], 2);
//! ```

use crate::error::{PeftError, Result};
use crate::model::BaseModel;
use crate::spec::ModelSpec;
use serde::{Deserialize, Serialize};

/// The fields of HF PEFT's `PromptLearningConfig` that prompt tuning, P-tuning and prefix tuning share, with its
/// keys and defaults; each method's config flattens it (`#[serde(flatten)]`) after the [`CommonConfig`], so that
/// `adapter_config.json` reads and writes exactly as HF PEFT's. HF's `modules_to_save`, also a field of its
/// `PromptLearningConfig`, stays in each method's config, last, where this workspace has always written it.
///
/// [`CommonConfig`]: crate::method::CommonConfig
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptLearningConfig {
    /// Number of virtual tokens (required).
    pub num_virtual_tokens: usize,
    /// Width of a virtual token; filled from the model: its hidden size for a prompt, the key/value width
    /// (`num_key_value_heads x head_dim`) for a prefix.
    #[serde(default)]
    pub token_dim: Option<usize>,
    /// 1 for one transformer stack, 2 for an encoder-decoder's encoder and decoder; filled from the model (see
    /// [`transformer_submodules`]).
    #[serde(default)]
    pub num_transformer_submodules: Option<usize>,
    /// Attention heads of the model (its key/value heads for a prefix); filled from the model.
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    /// Layers of the model; filled from the model.
    #[serde(default)]
    pub num_layers: Option<usize>,
}

impl PromptLearningConfig {
    /// `num_virtual_tokens` virtual tokens, every model-derived field unset.
    pub fn new(num_virtual_tokens: usize) -> Self {
        PromptLearningConfig {
            num_virtual_tokens,
            token_dim: None,
            num_transformer_submodules: None,
            num_attention_heads: None,
            num_layers: None,
        }
    }

    /// Total virtual tokens (`num_virtual_tokens x num_transformer_submodules`).
    pub fn total_virtual_tokens(&self) -> usize {
        self.num_virtual_tokens * self.num_transformer_submodules.unwrap_or(1)
    }

    /// Refuses a config without virtual tokens.
    pub fn check_num_virtual_tokens(&self) -> Result<()> {
        if self.num_virtual_tokens == 0 {
            return Err(PeftError::Config(
                "num_virtual_tokens must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Refuses what a prompt of `method` (prompt tuning, P-tuning: "the {method} config" in the error) cannot be
    /// built from for a model of this `spec`: no virtual tokens, or a declared `token_dim` other than the model's
    /// hidden size, since a virtual token stands where a token embedding would.
    pub fn check_prompt_for(&self, spec: &ModelSpec, method: &str) -> Result<()> {
        self.check_num_virtual_tokens()?;
        match self.token_dim {
            Some(dim) if dim != spec.hidden_size => Err(PeftError::ShapeMismatch {
                what: "token_dim".into(),
                expected_from: format!("model {} (hidden size)", spec.name_or_path),
                expected: vec![spec.hidden_size],
                got_from: format!("the {method} config"),
                got: vec![dim],
            }),
            _ => Ok(()),
        }
    }

    /// Fills the model-derived fields for a model of this `spec`, as HF PEFT does: `token_dim` and
    /// `num_attention_heads` as the method counts them, the model's layers, and `num_transformer_submodules`
    /// (the declared value, checked, or the default for `task_type`).
    pub fn fill_from(
        &mut self,
        spec: &ModelSpec,
        token_dim: usize,
        num_attention_heads: usize,
        task_type: Option<&str>,
    ) -> Result<()> {
        self.num_transformer_submodules = Some(transformer_submodules(
            spec,
            self.num_transformer_submodules,
            task_type,
        )?);
        self.token_dim = Some(token_dim);
        self.num_attention_heads = Some(num_attention_heads);
        self.num_layers = Some(spec.num_layers);
        Ok(())
    }
}

/// HF PEFT's task type for sequence-to-sequence language modelling.
pub const SEQ_2_SEQ_LM: &str = "SEQ_2_SEQ_LM";

/// The task type an adapter records when its config names none: `SEQ_2_SEQ_LM` on an encoder-decoder,
/// `CAUSAL_LM` on a model with an LM head, `FEATURE_EXTRACTION` on an encoder without one.
pub fn default_task_type(model: &dyn BaseModel) -> &'static str {
    default_task_type_of(model.spec(), model.lm_head().is_some())
}

/// [`default_task_type`] from a spec and whether the model has an LM head.
pub fn default_task_type_of(spec: &ModelSpec, has_lm_head: bool) -> &'static str {
    if spec.is_encoder_decoder {
        SEQ_2_SEQ_LM
    } else if has_lm_head {
        "CAUSAL_LM"
    } else {
        "FEATURE_EXTRACTION"
    }
}

/// `num_transformer_submodules` for a model: the declared value, checked, or HF PEFT's default (2 for a
/// `SEQ_2_SEQ_LM` task, else 1).
pub fn transformer_submodules(
    spec: &ModelSpec,
    declared: Option<usize>,
    task_type: Option<&str>,
) -> Result<usize> {
    let default = if spec.is_encoder_decoder && task_type == Some(SEQ_2_SEQ_LM) {
        2
    } else {
        1
    };
    match declared.unwrap_or(default) {
        1 => Ok(1),
        2 if spec.is_encoder_decoder => Ok(2),
        2 => Err(PeftError::Config(format!(
            "num_transformer_submodules = 2 is for encoder-decoder models; {} is not one (use 1)",
            spec.architecture
        ))),
        s => Err(PeftError::Config(format!(
            "num_transformer_submodules = {s}: it is 1 (one transformer stack) or 2 (encoder and decoder)"
        ))),
    }
}

/// The layer slot of a prefix adapter that feeds the self-attention of (decoder) layer `layer`.
pub fn decoder_prefix_slot(layer: usize, num_layers: usize, submodules: usize) -> usize {
    if submodules == 2 && num_layers > 0 {
        (2 * layer) % num_layers
    } else {
        layer
    }
}

/// Writes the four prompt-learning answers of [`PeftMethod`](crate::method::PeftMethod) (`common`,
/// `common_mut`, `prompt_learning`, `prompt_learning_mut`) for a config whose fields are named `common`
/// ([`CommonConfig`](crate::method::CommonConfig)) and `prompt_learning` ([`PromptLearningConfig`]), as every
/// prompt-learning config in this workspace names them; invoke it inside the `impl PeftMethod` block.
///
/// ```
/// use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
/// use peft_core::prompt_learning::PromptLearningConfig;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct ToyPrompt {
///     #[serde(flatten)]
///     common: CommonConfig,
///     #[serde(flatten)]
///     prompt_learning: PromptLearningConfig,
/// }
///
/// #[typetag::serde(name = "TOY_PROMPT")]
/// impl PeftMethod for ToyPrompt {
///     fn build(&self, _init: &mut InitCtx) -> peft_core::Result<Box<dyn Adapter>> {
///         Err(peft_core::PeftError::Unsupported("a toy builds nothing".into()))
///     }
///     peft_core::prompt_learning_accessors!();
/// }
///
/// let mut toy: Box<dyn PeftMethod> =
///     serde_json::from_str(r#"{"peft_type": "TOY_PROMPT", "num_virtual_tokens": 4}"#).unwrap();
/// assert_eq!(toy.prompt_learning().unwrap().num_virtual_tokens, 4);
/// toy.prompt_learning_mut().unwrap().num_virtual_tokens = 2;
/// toy.common_mut().inference_mode = true;
/// let saved = serde_json::to_value(&toy).unwrap();
/// assert_eq!((saved["num_virtual_tokens"].as_u64(), saved["inference_mode"].as_bool()), (Some(2), Some(true)));
/// ```
#[macro_export]
macro_rules! prompt_learning_accessors {
    () => {
        fn common(&self) -> &$crate::method::CommonConfig {
            &self.common
        }

        fn common_mut(&mut self) -> &mut $crate::method::CommonConfig {
            &mut self.common
        }

        fn prompt_learning(&self) -> Option<&$crate::prompt_learning::PromptLearningConfig> {
            Some(&self.prompt_learning)
        }

        fn prompt_learning_mut(
            &mut self,
        ) -> Option<&mut $crate::prompt_learning::PromptLearningConfig> {
            Some(&mut self.prompt_learning)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_is_as_wide_as_the_hidden_size() {
        let mut spec = ModelSpec::new("gpt2", 2, 32, 4, 4, 128, 64);
        spec.name_or_path = "tiny".into();
        let mut cfg = PromptLearningConfig::new(3);
        assert!(cfg.check_prompt_for(&spec, "P-tuning").is_ok());
        cfg.token_dim = Some(32);
        assert!(cfg.check_prompt_for(&spec, "P-tuning").is_ok());
        cfg.token_dim = Some(576);
        match cfg.check_prompt_for(&spec, "P-tuning").unwrap_err() {
            PeftError::ShapeMismatch {
                what,
                expected_from,
                expected,
                got_from,
                got,
            } => {
                assert_eq!(
                    (what.as_str(), expected_from.as_str(), got_from.as_str()),
                    (
                        "token_dim",
                        "model tiny (hidden size)",
                        "the P-tuning config"
                    )
                );
                assert_eq!((expected, got), (vec![32], vec![576]));
            }
            other => panic!("expected a shape mismatch, got {other}"),
        }
        let none = PromptLearningConfig::new(0);
        let err = none.check_prompt_for(&spec, "prompt tuning").unwrap_err();
        assert!(err.to_string().contains("num_virtual_tokens"), "{err}");
    }
}
