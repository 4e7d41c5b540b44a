//! IA3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
//! Learning"), added from outside the workspace's method crates: it uses only peft-core's public contracts
//! ([`PeftMethod`](peft_core::method::PeftMethod), [`Adapter`](peft_core::method::Adapter),
//! [`Hooks::linear`](peft_core::hooks::Hooks::linear), the spec's sites, [`peft_core::grad::param`]) and
//! registers itself with typetag as `peft_type = "IA3"`, with HF PEFT 0.21's `IA3Config` and file format.
//! See this crate's README for the walkthrough.
//!
//! ```
//! use peft_core::method::{InitCtx, PeftMethod};
//! use rand::SeedableRng;
//! peft_ia3_example::register(); // links this crate, and so its typetag registration
//! // The config reads as HF PEFT writes it (here with the architecture's default modules)...
//! let config: Box<dyn PeftMethod> = serde_json::from_str(r#"{"peft_type": "IA3"}"#).unwrap();
//! // ...and builds against any model of the zoo: one vector per targeted projection, all ones at first.
//! let model = peft_models::tiny::llama(0);
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = config.build(&mut init).unwrap();
//! let (key, var) = &adapter.trainable()[0];
//! assert_eq!(key, "base_model.model.model.layers.0.self_attn.k_proj.ia3_l");
//! assert_eq!(var.dims(), &[16, 1]); // [out_features, 1]: k_proj's output is scaled
//! ```

mod adapter;
mod config;
mod targets;

pub use adapter::{Ia3, Ia3Vector};
pub use config::Ia3Config;
pub use targets::{default_modules, ModuleSelection, Target, FEEDFORWARD_ROLES, TARGET_ROLES};

/// Makes sure this crate is linked, and so its `IA3` typetag registration is in the binary, when the binary
/// names no other item of it.
pub fn register() {}
