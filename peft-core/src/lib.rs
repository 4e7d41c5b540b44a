//! The contracts of the peft workspace, and nothing else: what a frozen model is ([`spec`], [`model`],
//! [`frozen`]), where a method may act on it ([`hooks`]), what a method is ([`method`], composed by [`stack`],
//! carrying a trained head through [`head`]), and how its adapter is saved in HF PEFT's format
//! ([`adapter_io`]), with what the module-wrapping methods share ([`tuner`]: target selection by HF PEFT's
//! rules, dropout, trainable biases, config checks). A method crate depends on this crate alone; the kernels
//! (`peft-kernels`) and the trainer (`peft-train`) build on it.
//!
//! ```
//! use peft_core::spec::{ModelSpec, Role, Site};
//! let mut spec = ModelSpec::new("gpt2", 2, 32, 4, 4, 100, 64);
//! let qkv = spec.add_site(Site::conv1d("transformer.h.0.attn.c_attn", Some(0), 32, 96).with_role(Role::QueryKeyValue));
//! assert_eq!(spec.head_dim, 8);
//! assert_eq!(spec.sites_with_any_role(&[Role::QueryKeyValue]), vec![qkv]);
//! ```

pub mod adapter_checks;
pub mod adapter_io;
pub mod atomic;
pub mod checkpoint;
pub mod compare;
pub mod error;
pub mod finite;
pub mod frozen;
pub mod grad;
pub mod head;
pub mod hooks;
pub mod hub_cache;
pub mod kv_cache;
pub mod lock;
pub mod method;
pub mod method_config;
pub mod mixed;
pub mod model;
pub mod prompt_learning;
pub mod quantized;
pub mod recompute;
pub mod spec;
pub mod stack;
pub mod tuner;

pub use error::{PeftError, Result};
