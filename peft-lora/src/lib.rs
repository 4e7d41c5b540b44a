//! LoRA (Hu et al., 2021) with HF PEFT's `LoraConfig` and file format: rsLoRA scaling, `target_modules` lists,
//! regular expressions and `"all-linear"`, `layers_to_transform`, rank / alpha patterns, trainable biases, dropout,
//! merging into (and unmerging from) the frozen weights, DoRA (`use_dora`), and the PiSSA / OLoRA initialisations
//! (`init_lora_weights = "pissa"`, `"pissa_niter_<K>"`, `"olora"`), which start from factors of the base weight.
//!
//! Adapters are saved as HF PEFT saves them (`base_model.model.<module>.lora_A.weight`, `lora_B.weight`, DoRA's
//! `lora_magnitude_vector`, trained biases under `<module>.base_layer.bias` or `<module>.bias`) and load in HF
//! PEFT with the same logits; HF PEFT's adapters load here. Fields of LoRA variants that are not implemented
//! (aLoRA, QALoRA, ...) are read and written back, and a value that would change the computation is refused
//! with what to change.
//!
//! Layout: `config.rs` (HF PEFT's `LoraConfig`, its defaults and `PeftMethod` impl, `build`), `adapter.rs` (the
//! built adapter: hooks, saving, merging), `targets.rs` (which modules are adapted), `init.rs` (how the factors
//! start), `decompose.rs` (the SVD and QR that PiSSA and OLoRA start from), `conversion.rs` (PiSSA / OLoRA to plain
//! LoRA), `dropout.rs` (the LoRA branch's dropout) and `dora.rs` (DoRA's magnitude, norms, forward and merge).
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx, PeftMethod};
//! use peft_core::model::BaseModel;
//! use rand::SeedableRng;
//!
//! peft_lora::register(); // links the LORA tag into this binary
//! // The same JSON HF PEFT writes to adapter_config.json; unset fields take HF PEFT's defaults.
//! let config: Box<dyn PeftMethod> = serde_json::from_str(
//!     r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}"#).unwrap();
//! let mut model = peft_models::tiny::llama(0);
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = config.build(&mut init).unwrap();
//! // Two layers, two modules each, A [4, 32] and B [out, 4].
//! assert_eq!(adapter.trainable().len(), 8);
//! assert!(adapter.trainable()[0].0.ends_with("self_attn.q_proj.lora_A.weight"));
//! adapter.merge_into(&mut model).unwrap();
//! assert!(adapter.merge_into(&mut model).is_err()); // already merged
//! adapter.unmerge_from(&mut model).unwrap();
//! ```

mod adapter;
mod config;
mod conversion;
pub mod decompose;
mod dora;
mod dropout;
mod init;
mod targets;

pub use adapter::{bias_key, lora_key, magnitude_key, Lora, LoraLayer};
pub use config::{
    BiasMode, HfLoraFields, InitLoraWeights, LayerSelection, LayersPattern, LoraConfig, LoraInit,
    TargetModules, ALL_LINEAR,
};
pub use dora::DoraLayer;
pub use dropout::Dropout;
pub use init::{factors_from_base, initial_pair, linear_default};
pub use peft_core::tuner::list_entry_matches;
pub use targets::{default_targets, minimal_target_names, resolve_targets, Target, DEFAULT_ROLES};

/// Makes sure this crate's methods are linked (and so registered with typetag) into a binary that names no
/// other item of it.
pub fn register() {}
