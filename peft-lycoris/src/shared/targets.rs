//! Which modules LoHa and LoKr adapt, by HF PEFT's rules (shared by all its tuners): a `target_modules` list
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

use peft_core::spec::{ModelSpec, Role, Site, SiteId, SiteKind};
use peft_core::{PeftError, Result};
use regex::Regex;

use crate::shared::fields::{LycorisFields, TargetModules};

/// The roles LoHa and LoKr adapt when `target_modules` is not set: the query and value projections, or the
/// fused projection that computes them. HF PEFT's LoHa and LoKr tables are copies of LoRA's
/// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`: GPT-2 `c_attn`, LLaMA `q_proj`, `v_proj`), stated
/// here once by role.
pub const DEFAULT_ROLES: &[Role] = &[Role::Query, Role::Value, Role::QueryKeyValue];

/// One adapted module, as the config resolves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The site.
    pub site: SiteId,
    /// Its full Hugging Face module name.
    pub name: String,
    /// Rank (from `rank_pattern` or `r`).
    pub r: usize,
    /// Alpha (from `alpha_pattern` or `alpha`).
    pub alpha: f64,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the checkpoint stores the weight `[in, out]` (GPT-2's Conv1D).
    pub fan_in_fan_out: bool,
}

/// The targets of `fields` on `spec`, in site order, with the `target_modules` value to save (the default of
/// [`DEFAULT_ROLES`] filled in as names, `"all-linear"` expanded to full module names). `method` names the
/// method in errors.
pub fn resolve_targets(
    fields: &LycorisFields,
    spec: &ModelSpec,
    method: &str,
) -> Result<(Vec<Target>, TargetModules)> {
    let requested = match &fields.target_modules {
        Some(t) => t.clone(),
        None => {
            let chosen = spec.projections_with_any_role(DEFAULT_ROLES);
            if chosen.is_empty() {
                return Err(PeftError::Config(format!(
                    "target_modules is not set and {method} has no default for {}: no linear module declares \
                     the query, value or fused query-key-value role; set it, e.g. to some of {}",
                    model_name(spec),
                    candidates(spec)
                )));
            }
            TargetModules::List(spec.target_names(&chosen))
        }
    };
    let matcher = Matcher::new(&requested, "target_modules")?;
    let exclude = fields
        .exclude_modules
        .as_ref()
        .map(|e| Matcher::new(e, "exclude_modules"))
        .transpose()?;
    matcher.check_every_entry_matches(spec, method)?;
    let layers = LayerFilter::new(fields)?;
    let rank_keys = PatternKeys::new(fields.rank_pattern.keys(), "rank_pattern")?;
    let alpha_keys = PatternKeys::new(fields.alpha_pattern.keys(), "alpha_pattern")?;

    let mut targets = Vec::new();
    for (id, site) in spec.iter_sites() {
        let SiteKind::Linear {
            in_features,
            out_features,
            fan_in_fan_out,
        } = site.kind
        else {
            continue;
        };
        let chosen = matcher.matches(&site.name)
            && !exclude.as_ref().is_some_and(|e| e.matches(&site.name))
            && layers.keeps(&site.name);
        if !chosen {
            continue;
        }
        targets.push(Target {
            site: id,
            name: site.name.clone(),
            r: rank_keys
                .find(&site.name)
                .map_or(fields.r, |k| fields.rank_pattern[k]),
            alpha: alpha_keys
                .find(&site.name)
                .map_or(fields.alpha, |k| fields.alpha_pattern[k]),
            in_features,
            out_features,
            fan_in_fan_out,
        });
    }
    if targets.is_empty() {
        return Err(PeftError::Config(format!(
            "target_modules {requested:?} selects no linear module of {} once layers_to_transform = {:?} and \
             exclude_modules = {:?} are applied; this model's linear modules are {}",
            model_name(spec),
            fields.layers_to_transform,
            fields.exclude_modules,
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
            TargetModules::Pattern(p) => Matcher::Regex(anchored(p, "$", field)?, p.clone()),
        })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::All => true,
            Matcher::List(entries) => entries.iter().any(|e| list_entry_matches(e, name)),
            Matcher::Regex(re, _) => re.is_match(name),
        }
    }

    /// Every list entry (or the expression) must match some linear module: one that matches nothing is a
    /// typo or a module of another architecture (HF PEFT raises too).
    fn check_every_entry_matches(&self, spec: &ModelSpec, method: &str) -> Result<()> {
        let is_linear = |s: &Site| matches!(s.kind, SiteKind::Linear { .. });
        let check = |what: String, hit: &dyn Fn(&str) -> bool| -> Result<()> {
            if spec.sites.iter().any(|s| is_linear(s) && hit(&s.name)) {
                return Ok(());
            }
            Err(PeftError::Config(format!(
                "target_modules {what} matches no linear module of {}: {method} adapts linear modules, and this \
                 model's are {} (list some of these, give a regular expression over full names, or \
                 \"all-linear\")",
                model_name(spec),
                candidates(spec)
            )))
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

/// `pattern` anchored at the start and followed by `end` (`"$"`: Python's `re.fullmatch`; `""`: `re.match`).
fn anchored(pattern: &str, end: &str, field: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern}){end}")).map_err(|e| {
        PeftError::Config(format!(
            "{field} = {pattern:?} is not a regular expression this crate can read: {e}"
        ))
    })
}

/// `layers_to_transform` with `layers_pattern`: the layer index HF PEFT reads from a module name.
struct LayerFilter<'a> {
    fields: &'a LycorisFields,
    patterns: Vec<Regex>,
}

impl<'a> LayerFilter<'a> {
    fn new(fields: &'a LycorisFields) -> Result<Self> {
        // Lazy `.*?` takes the first numbered segment (the layer), not a nested one.
        let patterns = match fields.layers_pattern.as_ref().map(|p| p.names()) {
            Some(names) if names.iter().any(|n| !n.is_empty()) => names
                .iter()
                .map(|n| anchored(&format!(r"(?:^|.*?\.){n}\.(\d+)\."), "", "layers_pattern"))
                .collect::<Result<_>>()?,
            _ => vec![anchored(r".*?\.[^.]*\.(\d+)\.", "", "layers_pattern")?],
        };
        Ok(LayerFilter { fields, patterns })
    }

    fn keeps(&self, name: &str) -> bool {
        let Some(selection) = self
            .fields
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

/// `rank_pattern` / `alpha_pattern` keys: the first key `k` with `(.*\.)?(k)$` matching the name from its
/// start wins, as HF PEFT's `get_pattern_key`.
struct PatternKeys<'a> {
    keys: Vec<(&'a String, Regex)>,
}

impl<'a> PatternKeys<'a> {
    fn new(keys: impl Iterator<Item = &'a String>, field: &str) -> Result<Self> {
        let keys = keys
            .map(|k| Ok((k, anchored(&format!(r"(?:.*\.)?(?:{k})"), "$", field)?)))
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
