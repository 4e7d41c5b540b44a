//! Which modules VeRA adapts, by HF PEFT's rules as [`peft_core::tuner`] states them once for every method: a `target_modules` list entry matches a module whose full
//! name equals it or ends with `"." + entry`; a string is a regular expression that must match the whole name;
//! `"all-linear"` is every linear module (the LM head is never a site here, as HF PEFT leaves it out);
//! `layers_to_transform` keeps the modules of the given layer indices, read from the name as HF PEFT does.
//! Without `target_modules`, the modules of [`DEFAULT_ROLES`] (HF PEFT's VeRA table is its LoRA table).
//!
//! ```
//! use peft_core::model::BaseModel;
//! use peft_vera::{resolve_targets, VeraConfig};
//! let model = peft_models::tiny::llama(0);
//! let (targets, saved) = resolve_targets(&VeraConfig::default(), model.spec()).unwrap();
//! // Two layers, the query and value projections of each.
//! assert_eq!(targets.len(), 4);
//! assert_eq!(saved, peft_vera::TargetModules::list(["q_proj", "v_proj"]));
//! ```

use peft_core::spec::{ModelSpec, Role};
use peft_core::tuner::{saved_target_modules, select_linear, TargetModules};
use peft_core::Result;

use crate::config::VeraConfig;

/// The roles VeRA adapts when `target_modules` is not set: the query and value projections, or the fused
/// projection that computes them (HF PEFT's `TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING`, a copy of
/// the LoRA table: GPT-2 `c_attn`, LLaMA and OPT `q_proj`, `v_proj`, BERT `query`, `value`, T5 `q`, `v`).
pub const DEFAULT_ROLES: &[Role] = peft_core::tuner::QUERY_VALUE_ROLES;

/// One adapted module: VeRA's shared projections have one rank, so a target is the linear module alone.
pub type Target = peft_core::tuner::LinearTarget;

/// The targets of `config` on `spec`, in site order, with the `target_modules` value to save (the default of
/// [`DEFAULT_ROLES`] filled in, `"all-linear"` expanded to full module names).
pub fn resolve_targets(
    config: &VeraConfig,
    spec: &ModelSpec,
) -> Result<(Vec<Target>, TargetModules)> {
    let (targets, requested) = select_linear(&config.target_fields(), spec, DEFAULT_ROLES, "VeRA")?;
    let names = targets.iter().map(|t| t.name.clone()).collect();
    Ok((targets, saved_target_modules(requested, names)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LayerSelection;
    use peft_core::model::BaseModel;

    #[test]
    fn defaults_follow_roles_and_selections_filter_as_hf_peft() {
        let gpt2 = peft_models::tiny::gpt2(0);
        let (t, saved) = resolve_targets(&VeraConfig::default(), gpt2.spec()).unwrap();
        assert_eq!(saved, TargetModules::list(["c_attn"]));
        assert!(t
            .iter()
            .all(|t| t.fan_in_fan_out && t.name.ends_with("attn.c_attn")));

        let llama = peft_models::tiny::llama(0);
        let only_layer_1 = VeraConfig {
            layers_to_transform: Some(LayerSelection::One(1)),
            ..VeraConfig::new(4, ["q_proj"])
        };
        let (t, _) = resolve_targets(&only_layer_1, llama.spec()).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "model.layers.1.self_attn.q_proj");

        let all = VeraConfig {
            target_modules: Some(TargetModules::Pattern("all-linear".into())),
            ..VeraConfig::default()
        };
        let (t, saved) = resolve_targets(&all, llama.spec()).unwrap();
        let TargetModules::List(names) = saved else {
            panic!("all-linear is saved as names")
        };
        assert_eq!(names.len(), t.len());
        assert_eq!(t.len(), 14, "7 projections in each of 2 layers");
    }

    #[test]
    fn bad_selections_name_the_modules_there_are() {
        let llama = peft_models::tiny::llama(0);
        let err = resolve_targets(&VeraConfig::new(4, ["c_attn"]), llama.spec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("c_attn") && err.contains("q_proj"), "{err}");
        let err = resolve_targets(&VeraConfig::new(4, ["input_layernorm"]), llama.spec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("norm"), "{err}");
    }
}
