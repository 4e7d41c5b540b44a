//! VeRA, vector-based random matrix adaptation (Kopiczko et al., 2024), with HF PEFT's `VeraConfig` and file
//! format: one pair of frozen random projections shared by every adapted module, drawn exactly as HF PEFT
//! draws them (PyTorch's CPU generator seeded with `projection_prng_key`), and per module two trained
//! vectors, `vera_lambda_b` `[out]` and `vera_lambda_d` `[r]`. Merging into (and unmerging from) the frozen
//! weights, trainable biases, dropout, `layers_to_transform` and `"all-linear"` are supported.
//!
//! Adapters are saved as HF PEFT saves them and load in HF PEFT with the same logits, with or without the
//! projections in the file (`save_projection`); HF PEFT's adapters load here.
//!
//! Layout: `config.rs` (HF PEFT's `VeraConfig`, its defaults and `PeftMethod` impl, `build`), `adapter.rs`
//! (the built adapter: hooks, saving, merging), `projection.rs` (the shared projections), `torch_rng.rs`
//! (PyTorch's CPU generator) and `targets.rs` (which modules are adapted); target selection, dropout and
//! trainable biases are `peft_core::tuner`'s.
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx, PeftMethod};
//! use rand::SeedableRng;
//!
//! peft_vera::register(); // links the VERA tag into this binary
//! // The same JSON HF PEFT writes to adapter_config.json; unset fields take HF PEFT's defaults.
//! let config: Box<dyn PeftMethod> =
//!     serde_json::from_str(r#"{"peft_type": "VERA", "r": 16, "target_modules": ["q_proj", "v_proj"]}"#).unwrap();
//! let mut model = peft_models::tiny::llama(0);
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = config.build(&mut init).unwrap();
//! // Two layers, two modules each, lambda_b and lambda_d for each.
//! assert_eq!(adapter.trainable().len(), 8);
//! adapter.merge_into(&mut model).unwrap();
//! assert!(adapter.merge_into(&mut model).is_err()); // already merged
//! adapter.unmerge_from(&mut model).unwrap();
//! ```

mod adapter;
mod config;
mod projection;
mod targets;
mod torch_rng;

pub use adapter::{lambda_key, Vera, VeraLayer};
pub use config::{BiasMode, LayerSelection, LayersPattern, TargetModules, VeraConfig, ALL_LINEAR};
pub use peft_core::tuner::{list_entry_matches, Dropout};
pub use projection::{Projections, VERA_A_KEY, VERA_B_KEY};
pub use targets::{resolve_targets, Target, DEFAULT_ROLES};
pub use torch_rng::TorchGenerator;

/// Makes sure this crate's method is linked (and so registered with typetag) into a binary that names no
/// other item of it.
pub fn register() {}
