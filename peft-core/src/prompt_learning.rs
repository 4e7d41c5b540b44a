//! What the prompt-learning methods (prompt tuning, P-tuning, prefix tuning) resolve the same way from the
//! model: the task type an adapter records when its config names none, and HF PEFT's
//! `num_transformer_submodules` (2 for a `SEQ_2_SEQ_LM` adapter on an encoder-decoder, else 1).
//!
//! An encoder-decoder prompt adapter holds twice the virtual tokens (HF PEFT's table has
//! `num_virtual_tokens x 2` rows) but feeds only the first `num_virtual_tokens` to the encoder; a prefix adapter
//! gives decoder layer `i` the key/value rows of layer slot `2i mod num_layers`, which is where HF PEFT's
//! reshaping of the duplicated prefix puts them.
//!
//! ```
//! use peft_core::prompt_learning::{decoder_prefix_slot, transformer_submodules, SEQ_2_SEQ_LM};
//! use peft_core::spec::ModelSpec;
//! let mut t5 = ModelSpec::new("t5", 4, 32, 4, 4, 128, 512);
//! t5.is_encoder_decoder = true;
//! assert_eq!(transformer_submodules(&t5, None, Some(SEQ_2_SEQ_LM)).unwrap(), 2);
//! let gpt2 = ModelSpec::new("gpt2", 2, 32, 4, 4, 128, 64);
//! assert!(transformer_submodules(&gpt2, Some(2), Some("CAUSAL_LM")).is_err());
//! assert_eq!((0..4).map(|i| decoder_prefix_slot(i, 4, 2)).collect::<Vec<_>>(), [0, 2, 0, 2]);
//! ```

use crate::error::{PeftError, Result};
use crate::model::BaseModel;
use crate::spec::ModelSpec;

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
