//! Prompt methods with HF PEFT's configurations and file format: prompt tuning (Lester et al., 2021), whose
//! virtual-token embeddings train directly, and P-tuning (Liu et al., 2021), whose embeddings are the output of
//! a trainable prompt encoder (an MLP or a bidirectional LSTM) and are saved as that output. Both configs
//! flatten peft-core's `PromptLearningConfig` (HF PEFT's shared prompt-learning fields).
//!
//! Layout: `prompt_tuning/` and `p_tuning/` each hold a `config.rs` (the serde config and its `PeftMethod`
//! impl) and an `adapter.rs` (the built adapter and its hooks), with prompt tuning's initialisations in
//! `prompt_tuning/init.rs` and P-tuning's encoder network in `p_tuning/prompt_encoder.rs`;
//! `virtual_tokens.rs` is what both do alike (prepend the prompt, save and load `prompt_embeddings`).
//!
//! ```
//! use peft_prompt::{PromptEncoderConfig, PromptEncoderReparameterizationType, PromptTuningConfig, PromptTuningInit};
//! use peft_core::method::{InitCtx, PeftMethod};
//! use rand::SeedableRng;
//! let cfg: Box<dyn PeftMethod> = serde_json::from_str(
//!     r#"{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 20, "prompt_tuning_init": "RANDOM"}"#).unwrap();
//! assert!(format!("{cfg:?}").contains("num_virtual_tokens: 20"));
//! let direct = PromptTuningConfig::new(8, PromptTuningInit::Random);
//! assert_eq!(direct.prompt_learning.num_virtual_tokens, 8);
//!
//! // P-tuning: HF's `encoder_hidden_size` defaults to the model's hidden size when the adapter is built.
//! let p_tuning: Box<dyn PeftMethod> = serde_json::from_str(
//!     r#"{"peft_type": "P_TUNING", "num_virtual_tokens": 4, "encoder_reparameterization_type": "MLP"}"#).unwrap();
//! assert!(p_tuning.is_prompt_learning());
//! let model = peft_models::tiny::gpt2(0); // hidden size 32
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = p_tuning.build(&mut init).unwrap();
//! // embedding 4x32 + Linear(32, 32) three times, as HF PEFT counts the trainable parameters.
//! assert_eq!(adapter.num_trainable(), 4 * 32 + 3 * (32 * 32 + 32));
//! assert_eq!(adapter.tensors().unwrap()[0].0, "prompt_embeddings");
//! let lstm = PromptEncoderConfig::new(4, PromptEncoderReparameterizationType::Lstm);
//! assert_eq!(lstm.encoder_num_layers, 2);
//! ```

mod p_tuning;
mod prompt_tuning;
mod virtual_tokens;

pub use p_tuning::{
    PTuning, PromptEncoder, PromptEncoderConfig, PromptEncoderReparameterizationType,
};
pub use prompt_tuning::{PromptTuning, PromptTuningConfig, PromptTuningInit};

/// Makes sure this crate's methods are linked (and so registered with typetag) into a binary that names no
/// other item of it.
pub fn register() {}
