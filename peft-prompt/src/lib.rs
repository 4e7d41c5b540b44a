//! Prompt methods: prompt tuning (Lester et al., 2021), with HF PEFT's configuration and file format.
//!
//! ```
//! use peft_prompt::{PromptTuningConfig, PromptTuningInit};
//! use peft_core::method::PeftMethod;
//! let cfg: Box<dyn PeftMethod> = serde_json::from_str(
//!     r#"{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 20, "prompt_tuning_init": "RANDOM"}"#).unwrap();
//! assert!(format!("{cfg:?}").contains("num_virtual_tokens: 20"));
//! let direct = PromptTuningConfig::new(8, PromptTuningInit::Random);
//! assert_eq!(direct.num_virtual_tokens, 8);
//! ```

mod prompt_tuning;

pub use prompt_tuning::{PromptTuning, PromptTuningConfig, PromptTuningInit};

/// Makes sure this crate's methods are linked (and so registered with typetag) into a binary that names no
/// other item of it.
pub fn register() {}
