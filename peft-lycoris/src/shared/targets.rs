//! Which modules LoHa and LoKr adapt, by HF PEFT's rules (shared by all its tuners, and stated once in
//! [`peft_core::tuner`]): a `target_modules` list
//! entry matches a module whose full name equals it or ends with `"." + entry`; a string is a regular
//! expression that must match the whole name; `"all-linear"` is every linear module (the LM head is never a
//! site here, as HF PEFT leaves it out); `layers_to_transform` keeps the modules of the given layer indices,
//! read from the name as HF PEFT does; `rank_pattern` / `alpha_pattern` override `r` / `alpha` for names
//! matching `(.*\.)?<key>$` (the first such key, HF's `get_pattern_key`).
//!
//! ```
//! use peft_lycoris::{resolve_targets, LycorisFields, TargetModules};
//! let model = peft_models::tiny::llama(0);
//! let fields = LycorisFields {
//!     target_modules: Some(TargetModules::list(["q_proj", "down_proj"])),
//!     rank_pattern: [("down_proj".to_string(), 2)].into(),
//!     ..LycorisFields::default()
//! };
//! let (targets, _) = resolve_targets(&fields, peft_core::model::BaseModel::spec(&model), "LoHa").unwrap();
//! let ranks: Vec<(&str, usize)> = targets.iter().map(|t| (t.name.as_str(), t.r)).collect();
//! assert_eq!(ranks[..2], [("model.layers.0.self_attn.q_proj", 8), ("model.layers.0.mlp.down_proj", 2)]);
//! ```

use peft_core::spec::{ModelSpec, Role};
use peft_core::tuner::{saved_target_modules, select_ranked, TargetModules};
use peft_core::Result;

use crate::shared::fields::LycorisFields;

/// The roles LoHa and LoKr adapt when `target_modules` is not set: the query and value projections, or the
/// fused projection that computes them. HF PEFT's LoHa and LoKr tables are copies of LoRA's
/// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`: GPT-2 `c_attn`, LLaMA `q_proj`, `v_proj`), stated
/// here once by role.
pub const DEFAULT_ROLES: &[Role] = peft_core::tuner::QUERY_VALUE_ROLES;

/// One adapted module, as the config resolves it: the linear module with its rank (from `rank_pattern` or
/// `r`) and alpha (from `alpha_pattern` or `alpha`).
pub type Target = peft_core::tuner::RankedTarget;

/// The targets of `fields` on `spec`, in site order, with the `target_modules` value to save (the default of
/// [`DEFAULT_ROLES`] filled in as names, `"all-linear"` expanded to full module names). `method` names the
/// method in errors.
pub fn resolve_targets(
    fields: &LycorisFields,
    spec: &ModelSpec,
    method: &str,
) -> Result<(Vec<Target>, TargetModules)> {
    let (targets, requested) = select_ranked(
        &fields.target_fields(),
        &fields.rank_fields(),
        spec,
        DEFAULT_ROLES,
        method,
    )?;
    let names = targets.iter().map(|t| t.name.clone()).collect();
    Ok((targets, saved_target_modules(requested, names)))
}
