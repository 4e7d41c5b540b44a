//! AdaLoRA, adaptive budget allocation for low-rank adaptation (Zhang et al., 2023), with HF PEFT's
//! `AdaLoraConfig` and file format: per adapted module an SVD-form update `B diag(E) A` (`lora_A`, `lora_E`,
//! `lora_B`), an orthogonality regulariser on `A` and `B` added to the training loss, and a rank allocator
//! that, after each optimiser step, scores every singular triplet by its smoothed sensitivity and zeroes the
//! singular values of the least important ones until the budget (`init_r` per module falling to `target_r`)
//! is met. The final `rank_pattern` is saved as HF PEFT saves it (in `adapter_config.json`, the factors cut to
//! it), and an adapter with one loads at its pattern's ranks.
//!
//! The trainer reaches the regulariser and the allocator through the `Adapter` calls every method has
//! (`training_loss_term`, `after_optimizer_step`, `step_state`), so nothing in it names AdaLoRA; HF PEFT leaves
//! `update_and_allocate(global_step)` to the user's loop, and here `global_step` is the number of steps taken.
//!
//! Layout: `config.rs` (HF PEFT's `AdaLoraConfig`, its checks and `build`), `adapter.rs` (the built adapter:
//! hooks, saving, the trainer's calls, merging), `allocator.rs` (budget schedule, sensitivities, scores),
//! `orthogonal.rs` (the regulariser), `rank_pattern.rs` (HF's pattern) and `targets.rs` (which modules).
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx, PeftMethod};
//! use rand::SeedableRng;
//!
//! peft_adalora::register(); // links the ADALORA tag into this binary
//! let config: Box<dyn PeftMethod> = serde_json::from_str(
//!     r#"{"peft_type": "ADALORA", "init_r": 6, "target_r": 2, "total_step": 100, "target_modules": ["q_proj", "v_proj"]}"#,
//! ).unwrap();
//! let mut model = peft_models::tiny::llama(0);
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = config.build(&mut init).unwrap();
//! // Two layers, two modules each, lora_A, lora_B and lora_E for each.
//! assert_eq!(adapter.trainable().len(), 12);
//! assert!(adapter.training_loss_term().unwrap().is_some()); // the orthogonality regulariser
//! adapter.merge_into(&mut model).unwrap();
//! adapter.unmerge_from(&mut model).unwrap();
//! ```

mod adapter;
mod allocator;
mod config;
mod orthogonal;
mod rank_pattern;
mod targets;

pub use adapter::{factor_key, AdaLora, AdaLoraLayer};
pub use allocator::{kth_smallest, surviving, triplet_scores, Averages, Schedule};
pub use config::{
    AdaLoraConfig, BiasMode, InheritedLoraFields, LayerSelection, LayersPattern, TargetModules,
    ALL_LINEAR,
};
pub use orthogonal::orthogonal_regulariser;
pub use peft_core::tuner::Dropout;
pub use rank_pattern::{keep_along, pattern_for, pattern_key, RankPattern};
pub use targets::{resolve_targets, DEFAULT_ROLES};

/// Makes sure this crate's method is linked (and so registered with typetag) into a binary that names no
/// other item of it.
pub fn register() {}
