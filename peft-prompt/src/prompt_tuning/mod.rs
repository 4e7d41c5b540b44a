//! Prompt tuning (Lester et al., 2021): `num_virtual_tokens` trainable embeddings prepended to the input
//! embeddings. Virtual tokens get attention-mask 1 and no loss, as HF PEFT does; saved as `prompt_embeddings`
//! `[num_virtual_tokens * num_transformer_submodules, token_dim]`.
//!
//! ```
//! use peft_core::method::PeftMethod;
//! peft_prompt::register(); // links this crate's typetag registrations into the doctest
//! let cfg: Box<dyn PeftMethod> = serde_json::from_str(
//!     r#"{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 20, "prompt_tuning_init": "RANDOM"}"#).unwrap();
//! assert_eq!(cfg.prompt_learning().unwrap().num_virtual_tokens, 20);
//! ```

mod adapter;
mod config;
mod init;

pub use adapter::PromptTuning;
pub use config::PromptTuningConfig;
pub use init::PromptTuningInit;
