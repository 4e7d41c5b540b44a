//! Which modules VeRA adapts, by HF PEFT's rules: a `target_modules` list entry matches a module whose full
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

use peft_core::spec::{ModelSpec, Role, Site, SiteId, SiteKind};
use peft_core::{PeftError, Result};
use regex::Regex;

use crate::config::{TargetModules, VeraConfig};

/// The roles VeRA adapts when `target_modules` is not set: the query and value projections, or the fused
/// projection that computes them (HF PEFT's `TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING`, a copy of
/// the LoRA table: GPT-2 `c_attn`, LLaMA and OPT `q_proj`, `v_proj`, BERT `query`, `value`, T5 `q`, `v`).
pub const DEFAULT_ROLES: &[Role] = &[Role::Query, Role::Value, Role::QueryKeyValue];

/// One adapted module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
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

/// The targets of `config` on `spec`, in site order, with the `target_modules` value to save (the default of
/// [`DEFAULT_ROLES`] filled in, `"all-linear"` expanded to full module names).
pub fn resolve_targets(
    config: &VeraConfig,
    spec: &ModelSpec,
) -> Result<(Vec<Target>, TargetModules)> {
    let requested = match &config.target_modules {
        Some(t) => t.clone(),
        None => {
            let chosen = spec.projections_with_any_role(DEFAULT_ROLES);
            if chosen.is_empty() {
                return Err(PeftError::Config(format!(
                    "target_modules is not set and there is no default for {}: no linear module declares the \
                     query, value or fused query-key-value role VeRA's default adapts; set it, e.g. to some \
                     of {}",
                    model_name(spec),
                    candidates(spec)
                )));
            }
            TargetModules::List(spec.target_names(&chosen))
        }
    };
    let matcher = Matcher::new(&requested)?;
    matcher.check_every_entry_matches(spec)?;
    let layers = LayerFilter::new(config)?;
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
        if matcher.matches(&s.name) && layers.keeps(&s.name) {
            targets.push(Target {
                site,
                name: s.name.clone(),
                in_features,
                out_features,
                fan_in_fan_out,
            });
        }
    }
    if targets.is_empty() {
        // HF PEFT: "No layers types compatible with VeRA were found".
        return Err(PeftError::Config(format!(
            "target_modules {requested:?} selects no linear module of {} once layers_to_transform = {:?} is \
             applied; this model's linear modules are {}",
            model_name(spec),
            config.layers_to_transform,
            candidates(spec)
        )));
    }
    let saved = if requested.is_all_linear() {
        TargetModules::List(targets.iter().map(|t| t.name.clone()).collect())
    } else {
        requested
    };
    Ok((targets, saved))
}

/// How a `target_modules` value matches full module names.
enum Matcher {
    All,
    List(Vec<String>),
    Regex(Regex, String),
}

impl Matcher {
    fn new(t: &TargetModules) -> Result<Self> {
        Ok(match t {
            t if t.is_all_linear() => Matcher::All,
            TargetModules::List(names) => Matcher::List(names.clone()),
            TargetModules::Pattern(p) => Matcher::Regex(
                Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    PeftError::Config(format!(
                        "target_modules = {p:?} is not a regular expression this crate can read: {e}"
                    ))
                })?,
                p.clone(),
            ),
        })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::All => true,
            Matcher::List(entries) => entries.iter().any(|e| list_entry_matches(e, name)),
            Matcher::Regex(re, _) => re.is_match(name),
        }
    }

    /// Every list entry (or the expression) must match some linear module: a name that matches nothing is
    /// a typo or a module of another architecture, and one that matches only norms cannot take VeRA.
    fn check_every_entry_matches(&self, spec: &ModelSpec) -> Result<()> {
        let is_linear = |s: &Site| matches!(s.kind, SiteKind::Linear { .. });
        let check = |what: String, hit: &dyn Fn(&str) -> bool| -> Result<()> {
            if spec.sites.iter().any(|s| is_linear(s) && hit(&s.name)) {
                return Ok(());
            }
            let found = spec.sites.iter().find(|s| hit(&s.name));
            Err(PeftError::Config(match found {
                Some(norm) => format!(
                    "target_modules {what} matches `{}`, a norm: VeRA adapts linear modules only; this \
                     model's linear modules are {}",
                    norm.name,
                    candidates(spec)
                ),
                None => format!(
                    "target module {what} not found in {}: this model's linear modules are {} (list some of \
                     these, give a regular expression over full names, or \"all-linear\")",
                    model_name(spec),
                    candidates(spec)
                ),
            }))
        };
        match self {
            Matcher::All => Ok(()),
            Matcher::List(entries) if entries.is_empty() => Err(PeftError::Config(format!(
                "target_modules is an empty list: name some of {}",
                candidates(spec)
            ))),
            Matcher::List(entries) => entries.iter().try_for_each(|e| {
                check(format!("`{e}`"), &|name: &str| list_entry_matches(e, name))
            }),
            Matcher::Regex(re, p) => {
                check(format!("pattern `{p}`"), &|name: &str| re.is_match(name))
            }
        }
    }
}

/// HF PEFT's list rule: the name equals the entry or ends with `"." + entry`.
pub fn list_entry_matches(entry: &str, name: &str) -> bool {
    name == entry
        || name
            .strip_suffix(entry)
            .is_some_and(|head| head.ends_with('.'))
}

/// `layers_to_transform` with `layers_pattern`: the layer index HF PEFT reads from a module name.
struct LayerFilter<'a> {
    config: &'a VeraConfig,
    patterns: Vec<Regex>,
}

impl<'a> LayerFilter<'a> {
    fn new(config: &'a VeraConfig) -> Result<Self> {
        let prefix = |pattern: &str| {
            // Python's `re.match`: anchored at the start only.
            Regex::new(&format!("^(?:{pattern})")).map_err(|e| {
                PeftError::Config(format!(
                    "layers_pattern gives an invalid expression {pattern:?}: {e}"
                ))
            })
        };
        // Lazy `.*?` takes the first numbered segment (the layer), not a nested one.
        let patterns = match config.layers_pattern.as_ref().map(|p| p.names()) {
            Some(names) if names.iter().any(|n| !n.is_empty()) => names
                .iter()
                .map(|n| prefix(&format!(r"(?:^|.*?\.){n}\.(\d+)\.")))
                .collect::<Result<_>>()?,
            _ => vec![prefix(r".*?\.[^.]*\.(\d+)\.")?],
        };
        Ok(LayerFilter { config, patterns })
    }

    fn keeps(&self, name: &str) -> bool {
        let Some(selection) = self
            .config
            .layers_to_transform
            .as_ref()
            .filter(|s| !s.is_empty())
        else {
            return true;
        };
        self.patterns
            .iter()
            .find_map(|re| re.captures(name))
            .and_then(|c| c[1].parse::<usize>().ok())
            .is_some_and(|layer| selection.contains(layer))
    }
}

/// The distinct short names of the model's linear modules, for error messages.
fn candidates(spec: &ModelSpec) -> String {
    let mut seen = Vec::new();
    for site in &spec.sites {
        if matches!(site.kind, SiteKind::Linear { .. }) && !seen.contains(&site.short_name()) {
            seen.push(site.short_name());
        }
    }
    seen.join(", ")
}

fn model_name(spec: &ModelSpec) -> String {
    if spec.name_or_path.is_empty() {
        format!("this {} model", spec.architecture)
    } else {
        format!("{} ({})", spec.name_or_path, spec.architecture)
    }
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
