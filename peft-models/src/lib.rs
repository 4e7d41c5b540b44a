//! The frozen model zoo: GPT-2 and LLaMA with Hugging Face parameter names, and their loaders.
//!
//! ```
//! let cfg: peft_models::config::Gpt2Config = serde_json::from_str("{}").unwrap();
//! assert_eq!(cfg.n_embd, 768);
//! ```

pub mod config;
pub mod error;
pub mod loaded;
pub mod weights;

pub use error::{ModelError, Result};
pub use loaded::LoadedModel;
