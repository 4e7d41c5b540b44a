//! Which norms LayerNorm tuning trains: `target_modules` / `exclude_modules` matched by HF PEFT's rules
//! ([`peft_core::tuner::ModuleMatcher`]: a list entry matches a name equal to it or ending with `"." + entry`,
//! a string is a regular expression over whole names). Without `target_modules`, HF PEFT's table for the
//! architecture ([`HF_DEFAULT_TARGETS`]: GPT-2 `ln_1`, `ln_2`, `ln_f`; LLaMA `input_layernorm`,
//! `post_attention_layernorm`, `norm`; T5 `layer_norm`, `final_layer_norm`); for an architecture HF PEFT has
//! no entry for (it raises there: BERT, OPT), every norm site the model declares by role
//! ([`Role::is_norm`](peft_core::spec::Role::is_norm)). Only norms train here: a selection that matches a
//! linear module is refused (HF PEFT would deep-copy and train that module too).
//!
//! ```
//! use peft_core::model::BaseModel;
//! use peft_ln_tuning::{select_norms, LnTuningConfig, TargetModules};
//! let model = peft_models::tiny::gpt2(0);
//! let (sites, saved) = select_norms(&LnTuningConfig::default(), model.spec()).unwrap();
//! // ln_1 and ln_2 of two layers, and ln_f.
//! assert_eq!(sites.len(), 5);
//! assert_eq!(saved, TargetModules::list(["ln_1", "ln_2", "ln_f"]));
//! ```

use peft_core::spec::{ModelSpec, Site, SiteId, SiteKind};
use peft_core::tuner::{describe_model, ModuleMatcher, TargetModules};
use peft_core::{PeftError, Result};

use crate::config::LnTuningConfig;

/// HF PEFT 0.21's `TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING` for text models: the norms LN tuning
/// trains by default, by `model_type`.
pub const HF_DEFAULT_TARGETS: &[(&str, &[&str])] = &[
    (
        "llama",
        &["input_layernorm", "post_attention_layernorm", "norm"],
    ),
    (
        "bloom",
        &["input_layernorm", "post_attention_layernorm", "ln_f"],
    ),
    ("t5", &["layer_norm", "final_layer_norm"]),
    ("mt5", &["layer_norm", "final_layer_norm"]),
    (
        "bart",
        &[
            "self_attn_layer_norm",
            "encoder_attn_layer_norm",
            "final_layer_norm",
        ],
    ),
    ("gpt2", &["ln_1", "ln_2", "ln_f"]),
    ("gptj", &["ln_1", "ln_f"]),
    (
        "falcon",
        &["input_layernorm", "post_attention_layernorm", "ln_f"],
    ),
    (
        "mistral",
        &["input_layernorm", "post_attention_layernorm", "norm"],
    ),
    ("phi", &["input_layernorm", "final_layernorm"]),
    (
        "gemma",
        &["input_layernorm", "post_attention_layernorm", "norm"],
    ),
    (
        "gemma2",
        &[
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "norm",
        ],
    ),
    (
        "gemma3_text",
        &[
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "norm",
        ],
    ),
    ("qwen2", &["post_attention_layernorm"]),
    ("qwen3", &["post_attention_layernorm"]),
];

/// HF PEFT's default target names for `architecture`, where its table has an entry.
pub fn hf_default_targets(architecture: &str) -> Option<&'static [&'static str]> {
    HF_DEFAULT_TARGETS
        .iter()
        .find(|(arch, _)| *arch == architecture)
        .map(|(_, names)| *names)
}

fn is_norm(site: &Site) -> bool {
    matches!(site.kind, SiteKind::Norm { .. })
}

/// The distinct short names of the model's norms, for messages.
pub fn norm_module_names(spec: &ModelSpec) -> Vec<&str> {
    let mut seen = Vec::new();
    for site in spec.sites.iter().filter(|s| is_norm(s)) {
        if !seen.contains(&site.short_name()) {
            seen.push(site.short_name());
        }
    }
    seen
}

/// The `target_modules` used where the config sets none: HF PEFT's table, or the norms by role.
fn default_targets(spec: &ModelSpec) -> Result<TargetModules> {
    if let Some(names) = hf_default_targets(&spec.architecture) {
        return Ok(TargetModules::list(names.iter().copied()));
    }
    let norms: Vec<SiteId> = spec
        .iter_sites()
        .filter(|(_, s)| is_norm(s) && s.role.is_norm())
        .map(|(id, _)| id)
        .collect();
    if norms.is_empty() {
        return Err(PeftError::Config(format!(
            "target_modules is not set, HF PEFT has no LN tuning default for {} and no module of it declares a \
             norm role: set target_modules to some of its norms ({})",
            describe_model(spec),
            norm_module_names(spec).join(", ")
        )));
    }
    Ok(TargetModules::List(spec.target_names(&norms)))
}

/// The norm sites `config` selects on `spec`, in site order, with the `target_modules` a saved config carries
/// (the default filled in as names where it is not set).
pub fn select_norms(
    config: &LnTuningConfig,
    spec: &ModelSpec,
) -> Result<(Vec<SiteId>, TargetModules)> {
    let (requested, defaulted) = match &config.target_modules {
        Some(t) => (t.clone(), false),
        None => (default_targets(spec)?, true),
    };
    if requested.is_all_linear() {
        return Err(PeftError::Config(format!(
            "target_modules = \"all-linear\" selects linear modules, but LN tuning trains norms: leave it unset \
             for the default or name norms ({})",
            norm_module_names(spec).join(", ")
        )));
    }
    let matcher = ModuleMatcher::new(&requested, "target_modules")?;
    let exclude = config
        .exclude_modules
        .as_ref()
        .map(|e| ModuleMatcher::new(e, "exclude_modules"))
        .transpose()?;
    let norms = || norm_module_names(spec).join(", ");
    // HF PEFT would wrap a matched linear module too (a trained copy of its whole weight); here only norms
    // take the hooks LN tuning needs, so such a selection is refused rather than half applied.
    let excluded = |s: &Site| exclude.as_ref().is_some_and(|e| e.matches(&s.name));
    if let Some(linear) = spec
        .sites
        .iter()
        .find(|s| !is_norm(s) && matcher.matches(&s.name) && !excluded(s))
    {
        return Err(PeftError::Config(format!(
            "target_modules {} matches `{}`, a linear module: LN tuning here trains norms only ({}); narrow \
             target_modules or add the linear modules to exclude_modules",
            requested.describe(),
            linear.name,
            norms()
        )));
    }
    // A listed name that matches no norm is a typo or another architecture's name (the default table may
    // name modules a model lacks, as HF PEFT's does).
    if let (TargetModules::List(entries), false) = (&requested, defaulted) {
        if entries.is_empty() {
            return Err(PeftError::Config(format!(
                "target_modules is an empty list: name some of this model's norms ({})",
                norms()
            )));
        }
        for entry in entries {
            let one = ModuleMatcher::List(vec![entry.clone()]);
            if !spec
                .sites
                .iter()
                .any(|s| is_norm(s) && one.matches(&s.name))
            {
                return Err(PeftError::Config(format!(
                    "target module `{entry}` is not a norm of {}: its norms are {}",
                    describe_model(spec),
                    norms()
                )));
            }
        }
    }
    let chosen: Vec<SiteId> = spec
        .iter_sites()
        .filter(|(_, s)| is_norm(s) && matcher.matches(&s.name) && !excluded(s))
        .map(|(id, _)| id)
        .collect();
    if chosen.is_empty() {
        return Err(PeftError::Config(format!(
            "target_modules {}{} selects no norm of {}: its norms are {}",
            requested.describe(),
            match &config.exclude_modules {
                Some(e) => format!(" with exclude_modules = {}", e.describe()),
                None => String::new(),
            },
            describe_model(spec),
            norms()
        )));
    }
    Ok((chosen, requested))
}

/// Whether the default of `spec` is chosen by role (HF PEFT has no table entry for its architecture).
pub(crate) fn default_is_by_role(spec: &ModelSpec) -> bool {
    hf_default_targets(&spec.architecture).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use peft_core::model::BaseModel;

    #[test]
    fn linear_matches_and_unknown_names_are_refused_naming_the_norms() {
        let llama = peft_models::tiny::llama(0);
        let spec = llama.spec();
        let regex = LnTuningConfig {
            target_modules: Some(TargetModules::Pattern(r"model\.layers\.0\..*".into())),
            ..LnTuningConfig::default()
        };
        let err = select_norms(&regex, spec).unwrap_err().to_string();
        assert!(
            err.contains("a linear module") && err.contains("input_layernorm"),
            "{err}"
        );
        // Excluding the linear modules makes the same expression select layer 0's norms.
        let excluded = LnTuningConfig {
            exclude_modules: Some(TargetModules::Pattern(r".*_proj".into())),
            ..regex
        };
        let (sites, _) = select_norms(&excluded, spec).unwrap();
        assert_eq!(sites.len(), 2);
        let typo = LnTuningConfig::new(["ln_1"]);
        let err = select_norms(&typo, spec).unwrap_err().to_string();
        assert!(
            err.contains("`ln_1`") && err.contains("post_attention_layernorm"),
            "{err}"
        );
        let all = LnTuningConfig {
            target_modules: Some(TargetModules::Pattern("all-linear".into())),
            ..LnTuningConfig::default()
        };
        assert!(select_norms(&all, spec)
            .unwrap_err()
            .to_string()
            .contains("all-linear"));
    }
}
