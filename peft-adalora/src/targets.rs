//! Which modules AdaLoRA adapts, by HF PEFT's rules as [`peft_core::tuner`] states them for every method.
//! Without `target_modules`, the modules of [`DEFAULT_ROLES`]: the query and value projections, or the fused
//! one, which is HF PEFT's AdaLoRA table for GPT-2, LLaMA and BERT. For OPT and T5 that table also lists the
//! key, output and MLP projections; the default here stays by role, so name them in `target_modules` to
//! follow HF PEFT there (a saved config lists its modules, so HF PEFT loads either the same way).
//!
//! ```
//! use peft_core::model::BaseModel;
//! use peft_adalora::{resolve_targets, AdaLoraConfig, TargetModules};
//! let model = peft_models::tiny::gpt2(0);
//! let config = AdaLoraConfig { total_step: Some(10), ..AdaLoraConfig::default() };
//! let (targets, saved) = resolve_targets(&config, model.spec()).unwrap();
//! assert_eq!(targets.len(), 2); // c_attn of both layers
//! assert_eq!(saved, TargetModules::list(["c_attn"]));
//! ```

use peft_core::spec::{ModelSpec, Role};
use peft_core::tuner::{saved_target_modules, select_linear, LinearTarget, TargetModules};
use peft_core::Result;

use crate::config::AdaLoraConfig;

/// The roles AdaLoRA adapts when `target_modules` is not set.
pub const DEFAULT_ROLES: &[Role] = peft_core::tuner::QUERY_VALUE_ROLES;

/// The targets of `config` on `spec`, in site order, with the `target_modules` value to save (the default of
/// [`DEFAULT_ROLES`] filled in, `"all-linear"` expanded to full module names).
pub fn resolve_targets(
    config: &AdaLoraConfig,
    spec: &ModelSpec,
) -> Result<(Vec<LinearTarget>, TargetModules)> {
    let (targets, requested) =
        select_linear(&config.target_fields(), spec, DEFAULT_ROLES, "AdaLoRA")?;
    let names = targets.iter().map(|t| t.name.clone()).collect();
    Ok((targets, saved_target_modules(requested, names)))
}
