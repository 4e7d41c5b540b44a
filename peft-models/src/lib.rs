//! The frozen model zoo: GPT-2, LLaMA, OPT, BERT and T5 with Hugging Face parameter names, and their loaders.
//!
//! ```
//! let cfg: peft_models::config::Gpt2Config = serde_json::from_str("{}").unwrap();
//! assert_eq!(cfg.n_embd, 768);
//! ```

pub mod attention;
pub mod bert;
pub mod config;
pub mod config_checks;
mod decoding;
mod embedding;
pub mod error;
pub mod folder;
pub mod gemma3;
pub mod gguf;
pub mod gguf_gemma3;
pub mod gguf_layout;
pub mod gguf_metadata;
pub mod gguf_tokenizer;
pub mod gpt2;
pub mod hub;
pub mod llama;
pub mod loaded;
mod mlp_block;
pub mod opt;
pub mod parts;
pub mod random;
pub mod resolve;
pub mod rope;
pub mod sentence;
pub mod t5;
pub mod tensor_usage;
pub mod tiny;
pub mod weights;
pub mod zoo;

pub use error::{ModelError, Result};
pub use folder::load_folder;
pub use gemma3::Gemma3;
pub use gpt2::Gpt2;
pub use llama::Llama;
pub use loaded::{LoadOptions, LoadedModel};
