//! Which modules LoRA adapts, by HF PEFT's rules: a `target_modules` list entry matches a module whose full
//! name equals it or ends with `"." + entry`; a string is a regular expression that must match the whole name;
//! `"all-linear"` is every linear module (the LM head is never a site here, as HF PEFT leaves it out);
//! `layers_to_transform` keeps the modules of the given layer indices, read from the name as HF PEFT does;
//! `rank_pattern` / `alpha_pattern` override `r` / `lora_alpha` for names matching `(.*\.)?<key>$`.

use std::collections::BTreeSet;

use peft_core::spec::{ModelSpec, Role, Site, SiteId, SiteKind};
use peft_core::{PeftError, Result};
use regex::Regex;

use crate::config::{LoraConfig, TargetModules};

/// The roles LoRA adapts when `target_modules` is not set: the query and value projections, or the fused
/// projection that computes them. This is the rule behind HF PEFT's per-architecture table
/// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`: GPT-2 `c_attn`, LLaMA and OPT `q_proj`, `v_proj`,
/// BERT `query`, `value`, T5 `q`, `v`), stated once for any model whose sites declare their roles.
pub const DEFAULT_ROLES: &[Role] = &[Role::Query, Role::Value, Role::QueryKeyValue];

/// The default `target_modules` of a model, as a saved config lists them: the names (short where that selects
/// exactly the sites of [`DEFAULT_ROLES`] by HF PEFT's suffix rule, longer dotted suffixes where not), or `None`
/// where no linear site plays those roles.
pub fn default_targets(spec: &ModelSpec) -> Option<Vec<String>> {
    let chosen = spec.projections_with_any_role(DEFAULT_ROLES);
    (!chosen.is_empty()).then(|| spec.target_names(&chosen))
}

/// One adapted module, as the config resolves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The site.
    pub site: SiteId,
    /// Its full Hugging Face module name.
    pub name: String,
    /// Rank (from `rank_pattern` or `r`).
    pub r: usize,
    /// Alpha (from `alpha_pattern` or `lora_alpha`).
    pub alpha: f64,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the checkpoint stores the weight `[in, out]` (GPT-2's Conv1D).
    pub fan_in_fan_out: bool,
}

/// The targets of `config` on `spec`, in site order, with the `target_modules` list to save (the default of
/// [`DEFAULT_ROLES`] filled in, `"all-linear"` expanded to module names).
pub fn resolve_targets(
    config: &LoraConfig,
    spec: &ModelSpec,
) -> Result<(Vec<Target>, TargetModules)> {
    let linear: Vec<(SiteId, &Site)> = spec
        .iter_sites()
        .filter(|(_, s)| matches!(s.kind, SiteKind::Linear { .. }))
        .collect();
    let requested = match &config.target_modules {
        Some(t) => t.clone(),
        None => match default_targets(spec) {
            Some(names) => TargetModules::List(names),
            None => {
                return Err(PeftError::Config(format!(
                    "target_modules is not set and there is no default for {}: no linear module declares the \
                     query, value or fused query-key-value role LoRA's default adapts; set it, e.g. to some of {}",
                    model_name(spec),
                    candidates(spec)
                )))
            }
        },
    };
    let matcher = Matcher::new(&requested, "target_modules")?;
    let exclude = config
        .exclude_modules
        .as_ref()
        .map(|e| Matcher::new(e, "exclude_modules"))
        .transpose()?;
    matcher.check_every_entry_matches(spec)?;

    let layer_filter = LayerFilter::new(config)?;
    let rank_keys = PatternKeys::new(config.rank_pattern.keys(), "rank_pattern")?;
    let alpha_keys = PatternKeys::new(config.alpha_pattern.keys(), "alpha_pattern")?;
    let mut targets = Vec::new();
    for (id, site) in &linear {
        let chosen = matcher.matches(&site.name)
            && !exclude.as_ref().is_some_and(|e| e.matches(&site.name))
            && layer_filter.keeps(&site.name);
        if !chosen {
            continue;
        }
        let SiteKind::Linear {
            in_features,
            out_features,
            fan_in_fan_out,
        } = site.kind
        else {
            unreachable!("only linear sites are listed")
        };
        let r = rank_keys
            .find(&site.name)
            .map_or(config.r, |k| config.rank_pattern[k]);
        let alpha = alpha_keys
            .find(&site.name)
            .map_or(config.lora_alpha, |k| config.alpha_pattern[k]);
        targets.push(Target {
            site: *id,
            name: site.name.clone(),
            r,
            alpha,
            in_features,
            out_features,
            fan_in_fan_out,
        });
    }
    if targets.is_empty() {
        return Err(PeftError::Config(format!(
            "target_modules {} selects no linear module of {} ({} layers) once layers_to_transform = {:?} and \
             exclude_modules = {:?} are applied; this model's linear modules are {}",
            describe(&requested),
            model_name(spec),
            spec.num_layers,
            config.layers_to_transform,
            config.exclude_modules,
            candidates(spec)
        )));
    }
    let saved = if requested.is_all_linear() {
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        TargetModules::List(minimal_target_names(&names, spec))
    } else {
        requested
    };
    Ok((targets, saved))
}

/// How a `target_modules` / `exclude_modules` value matches full module names.
enum Matcher {
    All,
    List(Vec<String>),
    Regex(Regex, String),
}

impl Matcher {
    fn new(t: &TargetModules, field: &str) -> Result<Self> {
        Ok(match t {
            t if t.is_all_linear() => Matcher::All,
            TargetModules::List(names) => Matcher::List(names.clone()),
            TargetModules::Pattern(p) => Matcher::Regex(full_match(p, field)?, p.clone()),
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
    /// a typo or a module of another architecture, and one that matches only norms cannot take LoRA.
    fn check_every_entry_matches(&self, spec: &ModelSpec) -> Result<()> {
        let is_linear = |s: &Site| matches!(s.kind, SiteKind::Linear { .. });
        let check = |what: String, hit: &dyn Fn(&str) -> bool| -> Result<()> {
            if spec.sites.iter().any(|s| is_linear(s) && hit(&s.name)) {
                return Ok(());
            }
            if let Some(norm) = spec.sites.iter().find(|s| hit(&s.name)) {
                return Err(PeftError::Config(format!(
                    "target_modules {what} matches `{}`, a norm: LoRA adapts linear modules only; this model's \
                     linear modules are {}",
                    norm.name,
                    candidates(spec)
                )));
            }
            Err(PeftError::Config(format!(
                "target module {what} not found in {}: this model's linear modules are {} (list some of these, \
                 give a regular expression over full names such as `.*\\.(q_proj|v_proj)`, or \"all-linear\")",
                model_name(spec),
                candidates(spec)
            )))
        };
        match self {
            Matcher::All => Ok(()),
            Matcher::List(entries) => {
                if entries.is_empty() {
                    return Err(PeftError::Config(format!(
                        "target_modules is an empty list: name some of {}",
                        candidates(spec)
                    )));
                }
                entries.iter().try_for_each(|e| {
                    check(format!("`{e}`"), &|name: &str| list_entry_matches(e, name))
                })
            }
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

/// Python's `re.fullmatch(pattern, name)`.
fn full_match(pattern: &str, field: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        PeftError::Config(format!(
            "{field} = {pattern:?} is not a regular expression this crate can read: {e}"
        ))
    })
}

/// `layers_to_transform` with `layers_pattern`: the layer index HF PEFT reads from a module name.
struct LayerFilter<'a> {
    config: &'a LoraConfig,
    patterns: Vec<Regex>,
}

impl<'a> LayerFilter<'a> {
    fn new(config: &'a LoraConfig) -> Result<Self> {
        // Lazy `.*?` takes the first numbered segment (the layer), not a nested one.
        let patterns = match config.layers_pattern.as_ref().map(|p| p.names()) {
            Some(names) if !names.is_empty() && names.iter().any(|n| !n.is_empty()) => names
                .iter()
                .map(|n| full_prefix(&format!(r"(?:^|.*?\.){n}\.(\d+)\.")))
                .collect::<Result<_>>()?,
            _ => vec![full_prefix(r".*?\.[^.]*\.(\d+)\.")?],
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

/// Python's `re.match` (anchored at the start only).
fn full_prefix(pattern: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})")).map_err(|e| {
        PeftError::Config(format!(
            "layers_pattern gives an invalid expression {pattern:?}: {e}"
        ))
    })
}

/// `rank_pattern` / `alpha_pattern` keys: the first key `k` with `(.*\.)?(k)$` matching the name from its
/// start wins, as HF PEFT's `get_pattern_key`.
struct PatternKeys<'a> {
    keys: Vec<(&'a String, Regex)>,
}

impl<'a> PatternKeys<'a> {
    fn new(keys: impl Iterator<Item = &'a String>, field: &str) -> Result<Self> {
        let keys = keys
            .map(|k| {
                Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                    .map(|re| (k, re))
                    .map_err(|e| PeftError::Config(format!("{field} key {k:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(PatternKeys { keys })
    }

    fn find(&self, name: &str) -> Option<&'a String> {
        self.keys
            .iter()
            .find(|(_, re)| re.is_match(name))
            .map(|(k, _)| *k)
    }
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

/// The distinct short names of the model's linear modules, for error messages.
pub fn candidates(spec: &ModelSpec) -> String {
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

fn describe(t: &TargetModules) -> String {
    match t {
        TargetModules::List(v) => format!("{v:?}"),
        TargetModules::Pattern(p) => format!("{p:?}"),
    }
}
