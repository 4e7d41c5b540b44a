//! Which modules LoRA adapts, by HF PEFT's rules: a `target_modules` list entry matches a module whose full
//! name equals it or ends with `"." + entry`; a string is a regular expression that must match the whole name;
//! `"all-linear"` is every linear module (the LM head is never a site here, as HF PEFT leaves it out);
//! `layers_to_transform` keeps the modules of the given layer indices, read from the name as HF PEFT does;
//! `rank_pattern` / `alpha_pattern` override `r` / `lora_alpha` for names matching `(.*\.)?<key>$`. The rules are
//! [`peft_core::tuner`]'s, shared by every module-wrapping method; what is LoRA's own is the default (by
//! [`DEFAULT_ROLES`]) and the shortened `"all-linear"` list a saved config carries ([`minimal_target_names`]).
//!
//! ```
//! use peft_core::model::BaseModel;
//! use peft_lora::{resolve_targets, LoraConfig, TargetModules};
//! let model = peft_models::tiny::llama(0);
//! let config = LoraConfig { rank_pattern: [("v_proj".to_string(), 2)].into(), ..LoraConfig::default() };
//! let (targets, saved) = resolve_targets(&config, model.spec()).unwrap();
//! assert_eq!(saved, TargetModules::list(["q_proj", "v_proj"]));
//! assert_eq!((targets[0].r, targets[1].r), (8, 2)); // q_proj, then v_proj, of layer 0
//! ```

use std::collections::BTreeSet;

use peft_core::spec::{ModelSpec, Role};
use peft_core::tuner::{select_ranked, RankFields, TargetFields, TargetModules};
use peft_core::Result;

use crate::config::LoraConfig;

/// The roles LoRA adapts when `target_modules` is not set: the query and value projections, or the fused
/// projection that computes them. This is the rule behind HF PEFT's per-architecture table
/// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`: GPT-2 `c_attn`, LLaMA and OPT `q_proj`, `v_proj`,
/// BERT `query`, `value`, T5 `q`, `v`), stated once for any model whose sites declare their roles.
pub const DEFAULT_ROLES: &[Role] = peft_core::tuner::QUERY_VALUE_ROLES;

/// The default `target_modules` of a model, as a saved config lists them: the names (short where that selects
/// exactly the sites of [`DEFAULT_ROLES`] by HF PEFT's suffix rule, longer dotted suffixes where not), or `None`
/// where no linear site plays those roles.
pub fn default_targets(spec: &ModelSpec) -> Option<Vec<String>> {
    peft_core::tuner::default_targets(spec, DEFAULT_ROLES)
}

/// One adapted module, as the config resolves it: the linear module with its rank (from `rank_pattern` or
/// `r`) and alpha (from `alpha_pattern` or `lora_alpha`).
pub type Target = peft_core::tuner::RankedTarget;

impl LoraConfig {
    /// The fields that select the adapted modules.
    pub fn target_fields(&self) -> TargetFields<'_> {
        TargetFields {
            target_modules: self.target_modules.as_ref(),
            exclude_modules: self.exclude_modules.as_ref(),
            layers_to_transform: self.layers_to_transform.as_ref(),
            layers_pattern: self.layers_pattern.as_ref(),
        }
    }
}

/// The targets of `config` on `spec`, in site order, with the `target_modules` list to save (the default of
/// [`DEFAULT_ROLES`] filled in, `"all-linear"` expanded to module names, shortened as HF PEFT shortens them).
pub fn resolve_targets(
    config: &LoraConfig,
    spec: &ModelSpec,
) -> Result<(Vec<Target>, TargetModules)> {
    let ranks = RankFields {
        r: config.r,
        alpha: config.lora_alpha,
        rank_pattern: &config.rank_pattern,
        alpha_pattern: &config.alpha_pattern,
    };
    let (targets, requested) =
        select_ranked(&config.target_fields(), &ranks, spec, DEFAULT_ROLES, "LoRA")?;
    let saved = if requested.is_all_linear() {
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        TargetModules::List(minimal_target_names(&names, spec))
    } else {
        requested
    };
    Ok((targets, saved))
}

/// HF PEFT's `_find_minimal_target_modules`: with 20 or more names, the shortest name suffixes that pick
/// exactly these modules among all of the model's module names (parents included); fewer are kept whole.
pub fn minimal_target_names(names: &[String], spec: &ModelSpec) -> Vec<String> {
    const MIN_TARGET_MODULES_FOR_OPTIMIZATION: usize = 20;
    let targets: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    if targets.len() < MIN_TARGET_MODULES_FOR_OPTIMIZATION {
        return targets.into_iter().map(String::from).collect();
    }
    let suffixes = |s: &str| -> Vec<String> {
        let parts: Vec<&str> = s.split('.').collect();
        (0..parts.len())
            .rev()
            .map(|i| parts[i..].join("."))
            .collect()
    };
    // Every module name HF PEFT would see: the sites and all their parents.
    let mut all_modules = BTreeSet::new();
    for site in &spec.sites {
        let parts: Vec<&str> = site.name.split('.').collect();
        for n in 1..=parts.len() {
            all_modules.insert(parts[..n].join("."));
        }
    }
    let other_suffixes: BTreeSet<String> = all_modules
        .iter()
        .filter(|m| {
            !targets.contains(m.as_str()) && !targets.iter().any(|t| m.ends_with(&format!(".{t}")))
        })
        .flat_map(|m| suffixes(m))
        .collect();
    let mut by_suffixes: Vec<(Vec<String>, &str)> =
        targets.iter().map(|t| (suffixes(t), *t)).collect();
    by_suffixes.sort();
    let mut required: BTreeSet<String> = BTreeSet::new();
    for (sfx, item) in &by_suffixes {
        for s in sfx {
            if required.contains(s) || other_suffixes.contains(s) {
                continue;
            }
            if !required.iter().any(|r| item.ends_with(&format!(".{r}"))) {
                required.insert(s.clone());
                break;
            }
        }
    }
    if required.is_empty() {
        return targets.into_iter().map(String::from).collect();
    }
    required.into_iter().collect()
}
