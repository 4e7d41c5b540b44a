//! Which linear modules a module-wrapping method adapts: the [`TargetFields`] of its config resolved against a
//! model's spec by HF PEFT's rules ([`matching`](crate::tuner::matching)), with the default chosen by roles
//! where `target_modules` is not set, and the per-module rank and alpha of `rank_pattern` / `alpha_pattern`.
//!
//! ```
//! use peft_core::spec::{ModelSpec, Role, Site};
//! use peft_core::tuner::{select_linear, TargetFields, TargetModules, QUERY_VALUE_ROLES};
//! let mut spec = ModelSpec::new("gpt2", 1, 8, 2, 2, 10, 16);
//! spec.add_site(Site::conv1d("transformer.h.0.attn.c_attn", Some(0), 8, 24).with_role(Role::QueryKeyValue));
//! spec.add_site(Site::conv1d("transformer.h.0.mlp.c_fc", Some(0), 8, 32).with_role(Role::MlpUp));
//! // No target_modules: the roles' default, saved as names.
//! let (targets, requested) = select_linear(&TargetFields::default(), &spec, QUERY_VALUE_ROLES, "LoRA").unwrap();
//! assert_eq!(requested, TargetModules::list(["c_attn"]));
//! assert_eq!((targets[0].in_features, targets[0].out_features, targets[0].fan_in_fan_out), (8, 24, true));
//! ```

use std::collections::BTreeMap;

use crate::spec::{ModelSpec, Role, SiteId, SiteKind};
use crate::tuner::matching::{LayerFilter, ModuleMatcher, PatternMap};
use crate::tuner::selection::{LayerSelection, LayersPattern, TargetModules};
use crate::{PeftError, Result};

/// The query and value projections, or the fused projection that computes them: the roles behind HF PEFT's
/// default `target_modules` table of LoRA (GPT-2 `c_attn`, LLaMA and OPT `q_proj`, `v_proj`, BERT `query`,
/// `value`, T5 `q`, `v`), which several of its tuners copy.
pub const QUERY_VALUE_ROLES: &[Role] = &[Role::Query, Role::Value, Role::QueryKeyValue];

/// The target fields of a method's config, borrowed: what [`select_linear`] resolves.
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetFields<'a> {
    /// `target_modules`; `None` takes the default of the method's roles.
    pub target_modules: Option<&'a TargetModules>,
    /// `exclude_modules`, matched as `target_modules` is (`None` for a method without the field).
    pub exclude_modules: Option<&'a TargetModules>,
    /// `layers_to_transform`.
    pub layers_to_transform: Option<&'a LayerSelection>,
    /// `layers_pattern`.
    pub layers_pattern: Option<&'a LayersPattern>,
}

/// `r` / `alpha` with their per-module overrides, borrowed from a method's config.
#[derive(Debug, Clone, Copy)]
pub struct RankFields<'a> {
    /// The rank of modules no `rank_pattern` key matches.
    pub r: usize,
    /// The alpha of modules no `alpha_pattern` key matches.
    pub alpha: f64,
    /// `rank_pattern`.
    pub rank_pattern: &'a BTreeMap<String, usize>,
    /// `alpha_pattern`.
    pub alpha_pattern: &'a BTreeMap<String, f64>,
}

/// One adapted linear module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearTarget {
    /// The site.
    pub site: SiteId,
    /// Its full Hugging Face module name.
    pub name: String,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the checkpoint stores the weight `[in, out]` (GPT-2's Conv1D).
    pub fan_in_fan_out: bool,
}

/// One adapted linear module with its rank and alpha.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedTarget {
    /// The site.
    pub site: SiteId,
    /// Its full Hugging Face module name.
    pub name: String,
    /// Rank (from `rank_pattern` or `r`).
    pub r: usize,
    /// Alpha (from `alpha_pattern` or the config's alpha).
    pub alpha: f64,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the checkpoint stores the weight `[in, out]` (GPT-2's Conv1D).
    pub fan_in_fan_out: bool,
}

/// The default `target_modules` of a method adapting the linear sites of `roles`, as a saved config lists
/// them (short where that selects exactly those sites by HF PEFT's suffix rule, longer dotted suffixes where
/// not), or `None` where no linear site plays those roles.
pub fn default_targets(spec: &ModelSpec, roles: &[Role]) -> Option<Vec<String>> {
    let chosen = spec.projections_with_any_role(roles);
    (!chosen.is_empty()).then(|| spec.target_names(&chosen))
}

/// The linear modules `fields` select on `spec`, in site order, with the `target_modules` value they were
/// selected by (the default of `default_roles` filled in as names where it is not set). `method` names the
/// method in errors, which say what to change and list the model's linear modules.
pub fn select_linear(
    fields: &TargetFields,
    spec: &ModelSpec,
    default_roles: &[Role],
    method: &str,
) -> Result<(Vec<LinearTarget>, TargetModules)> {
    let requested = match fields.target_modules {
        Some(t) => t.clone(),
        None => match default_targets(spec, default_roles) {
            Some(names) => TargetModules::List(names),
            None => {
                return Err(PeftError::Config(format!(
                    "target_modules is not set and there is no default for {}: no linear module declares the \
                     {} role {method}'s default adapts; set it, e.g. to some of {}",
                    describe_model(spec),
                    describe_roles(default_roles),
                    linear_module_names(spec).join(", ")
                )))
            }
        },
    };
    let matcher = ModuleMatcher::new(&requested, "target_modules")?;
    let exclude = fields
        .exclude_modules
        .map(|e| ModuleMatcher::new(e, "exclude_modules"))
        .transpose()?;
    matcher.check_every_entry_matches(spec, method)?;
    let layers = LayerFilter::new(fields.layers_to_transform, fields.layers_pattern)?;
    let mut targets = Vec::new();
    for (site, s) in spec.iter_sites() {
        let SiteKind::Linear {
            in_features,
            out_features,
            fan_in_fan_out,
        } = s.kind
        else {
            continue;
        };
        let chosen = matcher.matches(&s.name)
            && !exclude.as_ref().is_some_and(|e| e.matches(&s.name))
            && layers.keeps(&s.name);
        if chosen {
            targets.push(LinearTarget {
                site,
                name: s.name.clone(),
                in_features,
                out_features,
                fan_in_fan_out,
            });
        }
    }
    if targets.is_empty() {
        let layers = fields.layers_to_transform;
        let applied = match fields.exclude_modules {
            Some(e) => format!(
                "layers_to_transform = {layers:?} and exclude_modules = {} are",
                e.describe()
            ),
            None => format!("layers_to_transform = {layers:?} is"),
        };
        return Err(PeftError::Config(format!(
            "target_modules {} selects no linear module of {} ({} layers) once {applied} applied; this model's \
             linear modules are {}",
            requested.describe(),
            describe_model(spec),
            spec.num_layers,
            linear_module_names(spec).join(", ")
        )));
    }
    Ok((targets, requested))
}

/// [`select_linear`], each module with its rank and alpha from `ranks` (a `rank_pattern` / `alpha_pattern`
/// key matching its name, else `r` / `alpha`).
pub fn select_ranked(
    fields: &TargetFields,
    ranks: &RankFields,
    spec: &ModelSpec,
    default_roles: &[Role],
    method: &str,
) -> Result<(Vec<RankedTarget>, TargetModules)> {
    let (linear, requested) = select_linear(fields, spec, default_roles, method)?;
    let rank_keys = PatternMap::new(ranks.rank_pattern, "rank_pattern")?;
    let alpha_keys = PatternMap::new(ranks.alpha_pattern, "alpha_pattern")?;
    let targets = linear
        .into_iter()
        .map(|t| RankedTarget {
            r: rank_keys.get(&t.name).copied().unwrap_or(ranks.r),
            alpha: alpha_keys.get(&t.name).copied().unwrap_or(ranks.alpha),
            site: t.site,
            name: t.name,
            in_features: t.in_features,
            out_features: t.out_features,
            fan_in_fan_out: t.fan_in_fan_out,
        })
        .collect();
    Ok((targets, requested))
}

/// The `target_modules` a saved config carries: `"all-linear"` expanded to `names` (the modules it
/// selected), any other value as given.
pub fn saved_target_modules(requested: TargetModules, names: Vec<String>) -> TargetModules {
    if requested.is_all_linear() {
        TargetModules::List(names)
    } else {
        requested
    }
}

/// The distinct short names of the model's linear modules, in site order, for error messages.
pub fn linear_module_names(spec: &ModelSpec) -> Vec<&str> {
    let mut seen = Vec::new();
    for site in &spec.sites {
        if matches!(site.kind, SiteKind::Linear { .. }) && !seen.contains(&site.short_name()) {
            seen.push(site.short_name());
        }
    }
    seen
}

/// The model as error messages name it: `name (architecture)`, or `this <architecture> model`.
pub fn describe_model(spec: &ModelSpec) -> String {
    if spec.name_or_path.is_empty() {
        format!("this {} model", spec.architecture)
    } else {
        format!("{} ({})", spec.name_or_path, spec.architecture)
    }
}

/// `roles` in words for messages: `"query, value or fused query-key-value"`.
pub fn describe_roles(roles: &[Role]) -> String {
    let words: Vec<&str> = roles.iter().map(|&r| role_words(r)).collect();
    match words.split_last() {
        None => String::new(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

fn role_words(role: Role) -> &'static str {
    match role {
        Role::Query => "query",
        Role::Key => "key",
        Role::Value => "value",
        Role::QueryKeyValue => "fused query-key-value",
        Role::AttentionOutput => "attention output",
        Role::MlpUp => "MLP up",
        Role::MlpGate => "MLP gate",
        Role::MlpDown => "MLP down",
        Role::AttentionNorm => "attention norm",
        Role::MlpNorm => "MLP norm",
        Role::FinalNorm => "final norm",
        Role::EmbeddingNorm => "embedding norm",
        Role::Pooler => "pooler",
        Role::WidthProjection => "width projection",
        Role::Other => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Site;

    fn spec() -> ModelSpec {
        let mut spec = ModelSpec::new("llama", 2, 8, 2, 2, 10, 16);
        for layer in 0..2 {
            let p = format!("model.layers.{layer}");
            spec.add_site(Site::norm(
                format!("{p}.input_layernorm"),
                Some(layer),
                8,
                false,
            ));
            for (name, role) in [
                ("self_attn.q_proj", Role::Query),
                ("self_attn.v_proj", Role::Value),
            ] {
                spec.add_site(
                    Site::linear(format!("{p}.{name}"), Some(layer), 8, 8, false).with_role(role),
                );
            }
            spec.add_site(Site::linear(
                format!("{p}.mlp.down_proj"),
                Some(layer),
                32,
                8,
                false,
            ));
        }
        spec
    }

    #[test]
    fn patterns_override_rank_and_alpha_per_module() {
        let (spec, t) = (spec(), TargetModules::Pattern("all-linear".into()));
        let ranks = [("down_proj".to_string(), 2)].into();
        let alphas = [("q_proj".to_string(), 3.0)].into();
        let fields = TargetFields {
            target_modules: Some(&t),
            ..TargetFields::default()
        };
        let rank = RankFields {
            r: 8,
            alpha: 16.0,
            rank_pattern: &ranks,
            alpha_pattern: &alphas,
        };
        let (targets, requested) =
            select_ranked(&fields, &rank, &spec, QUERY_VALUE_ROLES, "X").unwrap();
        let got: Vec<(usize, f64)> = targets.iter().take(3).map(|t| (t.r, t.alpha)).collect();
        assert_eq!(got, [(8, 3.0), (8, 16.0), (2, 16.0)]);
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        assert_eq!(
            saved_target_modules(requested, names)
                .describe()
                .matches("proj")
                .count(),
            6
        );
    }

    #[test]
    fn selections_that_select_nothing_name_the_fields_and_the_modules() {
        let spec = spec();
        let (q, layer_9) = (TargetModules::list(["q_proj"]), LayerSelection::One(9));
        let fields = TargetFields {
            target_modules: Some(&q),
            exclude_modules: Some(&q),
            layers_to_transform: Some(&layer_9),
            layers_pattern: None,
        };
        let err = select_linear(&fields, &spec, QUERY_VALUE_ROLES, "X")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("selects no linear module") && err.contains("exclude_modules"),
            "{err}"
        );
        assert!(err.contains("q_proj, v_proj, down_proj"), "{err}");
        let norm = TargetModules::list(["input_layernorm"]);
        let fields = TargetFields {
            target_modules: Some(&norm),
            ..TargetFields::default()
        };
        let err = select_linear(&fields, &spec, QUERY_VALUE_ROLES, "X")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a norm: X adapts linear modules only"),
            "{err}"
        );
        let err = select_linear(
            &TargetFields::default(),
            &spec,
            &[Role::Key, Role::MlpDown],
            "X",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("the key or MLP down role X's default adapts"),
            "{err}"
        );
    }
}
