//! Prefix tuning (Li & Liang, 2021) and P-tuning v2 (Liu et al., 2022), with HF PEFT's configuration
//! (`PrefixTuningConfig`, `peft_type = "PREFIX_TUNING"`) and file format.
//!
//! The adapter gives every layer's self-attention `num_virtual_tokens` trainable key/value positions
//! through [`Hooks::attention_prefix`](peft_core::hooks::Hooks::attention_prefix); the model prepends them to
//! its keys and values, lets every token see them and starts the real tokens' positions after them (as HF's
//! `past_key_values`). The prefix of every layer is cut out of one flat row per virtual token in HF PEFT's
//! layout ([`layout`]); under grouped-query attention it has the model's key/value heads, as in HF PEFT.
//!
//! **P-tuning v2** is not a separate type, in HF PEFT or here: it is prefix tuning without reparameterisation
//! (`prefix_projection = false`), made by [`PrefixTuningConfig::p_tuning_v2`]. For classification with a
//! trained head, wrap the adapter in `peft_core::head::WithClassifier`.
//!
//! With `prefix_projection = true` the prefix comes out of a two-layer MLP while training; as in HF PEFT, the
//! MLP is folded away when saving (`prompt_embeddings` holds its output), and a saved adapter loads folded.
//!
//! Layout: `config.rs` (the serde config, flattening peft-core's `PromptLearningConfig`, and its `PeftMethod`
//! impl), `adapter.rs` (the built adapter and its hook), `encoder.rs` (the folded or projected prefix) and
//! `layout.rs` (where each layer's keys and values sit in a flat prefix row).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use peft_core::hooks::{Ctx, Hooks};
//! use peft_core::method::{InitCtx, PeftMethod};
//! use peft_core::model::BaseModel;
//! use peft_prefix::PrefixTuningConfig;
//! use rand::SeedableRng;
//!
//! let model = peft_models::tiny::llama(0); // 2 layers, 4 heads sharing 2 key/value heads of dimension 8
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = PrefixTuningConfig::p_tuning_v2(5).build(&mut init).unwrap();
//! // HF PEFT's parameter count: 5 virtual tokens x 2 layers x (key + value) x (2 kv heads x 8).
//! assert_eq!(adapter.num_trainable(), 5 * 2 * 2 * 16);
//! let ctx = Ctx::new(Tensor::ones((3, 4), DType::F32, &Device::Cpu).unwrap());
//! let prefix = adapter.attention_prefix(1, &ctx).unwrap().unwrap();
//! assert_eq!(prefix.key.dims(), &[3, 2, 5, 8]); // [batch, kv_heads, virtual tokens, head_dim]
//!
//! // The same method read from an HF PEFT adapter_config.json.
//! let cfg: Box<dyn PeftMethod> = serde_json::from_str(
//!     r#"{"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 10, "prefix_projection": true}"#).unwrap();
//! assert!(cfg.is_prompt_learning());
//! ```

mod adapter;
mod config;
pub mod encoder;
pub mod layout;

pub use adapter::PrefixTuning;
pub use config::{PrefixInit, PrefixTuningConfig};
pub use encoder::PROMPT_KEY;

/// Makes sure this crate's methods are linked (and so registered with typetag) into a binary that names no
/// other item of it.
pub fn register() {}
