//! P-tuning (Liu et al., 2021, "GPT Understands, Too"): virtual-token embeddings produced by a trainable
//! [`PromptEncoder`] (an MLP or a bidirectional LSTM over an embedding table) and prepended to the input
//! embeddings, as HF PEFT's `PromptEncoderConfig` (`peft_type` `P_TUNING`) does.
//!
//! While training, the encoder's parameters train (named as in the torch module's state dict:
//! `embedding.weight`, `mlp_head.0.weight`, ...). Saving writes what HF PEFT writes: only the encoder's output,
//! `prompt_embeddings` `[num_virtual_tokens, token_dim]`. An adapter loaded for inference (`inference_mode`
//! true, as every saved adapter is) has no encoder and prepends those embeddings directly, as HF PEFT does.
//! Trainer checkpoints keep the encoder itself (the trainer saves the trainable variables by name), so a stopped
//! run resumes exactly.
//!
//! ```
//! use peft_core::method::PeftMethod;
//! peft_prompt::register(); // links this crate's typetag registrations into the doctest
//! let cfg: Box<dyn PeftMethod> = serde_json::from_str(
//!     r#"{"peft_type": "P_TUNING", "num_virtual_tokens": 4, "encoder_reparameterization_type": "MLP"}"#).unwrap();
//! assert!(cfg.is_prompt_learning());
//! ```

mod adapter;
mod config;
mod prompt_encoder;

pub use adapter::PTuning;
pub use config::PromptEncoderConfig;
pub use prompt_encoder::{PromptEncoder, PromptEncoderReparameterizationType};
