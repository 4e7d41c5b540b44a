//! HF PEFT's rules for matching module names, shared by its tuners: a `target_modules` list entry matches a
//! module whose full name equals it or ends with `"." + entry`; a string is a regular expression that must match
//! the whole name (Python's `re.fullmatch`); `"all-linear"` matches every linear module; `layers_to_transform`
//! keeps the modules whose layer index, read from the name, is selected; `rank_pattern` / `alpha_pattern` keys
//! apply to names matching `(.*\.)?<key>$`, the first such key winning (HF's `get_pattern_key`).
//!
//! ```
//! use std::collections::BTreeMap;
//! use peft_core::tuner::{LayerFilter, LayerSelection, ModuleMatcher, PatternMap, TargetModules};
//! let m = ModuleMatcher::new(&TargetModules::Pattern(r".*\.(q|v)_proj".into()), "target_modules").unwrap();
//! assert!(m.matches("model.layers.0.self_attn.q_proj") && !m.matches("model.layers.0.self_attn.k_proj"));
//! let layer_1 = LayerSelection::One(1);
//! let filter = LayerFilter::new(Some(&layer_1), None).unwrap();
//! assert!(filter.keeps("model.layers.1.mlp.up_proj") && !filter.keeps("model.layers.0.mlp.up_proj"));
//! let ranks: BTreeMap<String, usize> = [("v_proj".to_string(), 2)].into();
//! let ranks = PatternMap::new(&ranks, "rank_pattern").unwrap();
//! assert_eq!(ranks.get("model.layers.0.self_attn.v_proj"), Some(&2));
//! assert_eq!(ranks.get("model.layers.0.self_attn.q_proj"), None);
//! ```

use std::collections::BTreeMap;

use regex::Regex;

use crate::spec::{ModelSpec, Site, SiteKind};
use crate::tuner::selection::{LayerSelection, LayersPattern, TargetModules};
use crate::tuner::targets::{describe_model, linear_module_names};
use crate::{PeftError, Result};

/// HF PEFT's list rule: the name equals the entry or ends with `"." + entry`.
pub fn list_entry_matches(entry: &str, name: &str) -> bool {
    name == entry
        || name
            .strip_suffix(entry)
            .is_some_and(|head| head.ends_with('.'))
}

/// `pattern` anchored at the start and followed by `end` (`"$"`: Python's `re.fullmatch`; `""`: `re.match`);
/// `field` names the setting it came from in the error.
fn anchored(pattern: &str, end: &str, field: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern}){end}")).map_err(|e| {
        PeftError::Config(format!(
            "{field} = {pattern:?} is not a regular expression this crate can read: {e}"
        ))
    })
}

/// How a `target_modules` / `exclude_modules` value matches full module names.
#[derive(Debug, Clone)]
pub enum ModuleMatcher {
    /// `"all-linear"`: every (linear) module.
    All,
    /// List entries, each matched by HF PEFT's list rule.
    List(Vec<String>),
    /// A regular expression full-matched against the name, with its source.
    Regex(Regex, String),
}

impl ModuleMatcher {
    /// The matcher of `value`; `field` names the setting in errors (an invalid regular expression).
    pub fn new(value: &TargetModules, field: &str) -> Result<Self> {
        Ok(match value {
            t if t.is_all_linear() => ModuleMatcher::All,
            TargetModules::List(names) => ModuleMatcher::List(names.clone()),
            TargetModules::Pattern(p) => ModuleMatcher::Regex(anchored(p, "$", field)?, p.clone()),
        })
    }

    /// Whether the module `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            ModuleMatcher::All => true,
            ModuleMatcher::List(entries) => entries.iter().any(|e| list_entry_matches(e, name)),
            ModuleMatcher::Regex(re, _) => re.is_match(name),
        }
    }

    /// Every list entry (or the expression) must match some linear module of `spec`: a name that matches
    /// nothing is a typo or a module of another architecture, and one that matches only norms cannot take a
    /// method (`method`, as errors name it) that adapts linear modules.
    pub fn check_every_entry_matches(&self, spec: &ModelSpec, method: &str) -> Result<()> {
        let is_linear = |s: &Site| matches!(s.kind, SiteKind::Linear { .. });
        let candidates = || linear_module_names(spec).join(", ");
        let check = |what: String, hit: &dyn Fn(&str) -> bool| -> Result<()> {
            if spec.sites.iter().any(|s| is_linear(s) && hit(&s.name)) {
                return Ok(());
            }
            if let Some(norm) = spec.sites.iter().find(|s| hit(&s.name)) {
                return Err(PeftError::Config(format!(
                    "target_modules {what} matches `{}`, a norm: {method} adapts linear modules only; this \
                     model's linear modules are {}",
                    norm.name,
                    candidates()
                )));
            }
            Err(PeftError::Config(format!(
                "target module {what} not found in {}: this model's linear modules are {} (list some of these, \
                 give a regular expression over full names such as `.*\\.(q_proj|v_proj)`, or \"all-linear\")",
                describe_model(spec),
                candidates()
            )))
        };
        match self {
            ModuleMatcher::All => Ok(()),
            ModuleMatcher::List(entries) if entries.is_empty() => Err(PeftError::Config(format!(
                "target_modules is an empty list: name some of {}",
                candidates()
            ))),
            ModuleMatcher::List(entries) => entries.iter().try_for_each(|e| {
                check(format!("`{e}`"), &|name: &str| list_entry_matches(e, name))
            }),
            ModuleMatcher::Regex(re, p) => {
                check(format!("pattern `{p}`"), &|name: &str| re.is_match(name))
            }
        }
    }
}

/// `layers_to_transform` with `layers_pattern`: keeps the modules whose layer index, read from the name as HF
/// PEFT reads it, is selected (every module when nothing is selected).
#[derive(Debug, Clone)]
pub struct LayerFilter {
    selection: Option<LayerSelection>,
    patterns: Vec<Regex>,
}

impl LayerFilter {
    /// The filter of `layers_to_transform` and `layers_pattern`; without a pattern, the index is the first
    /// number after a dotted name segment (`model.layers.3.`, `transformer.h.3.`).
    pub fn new(
        layers_to_transform: Option<&LayerSelection>,
        layers_pattern: Option<&LayersPattern>,
    ) -> Result<Self> {
        // Lazy `.*?` takes the first numbered segment (the layer), not a nested one.
        let patterns = match layers_pattern.map(|p| p.names()) {
            Some(names) if names.iter().any(|n| !n.is_empty()) => names
                .iter()
                .map(|n| layer_prefix(&format!(r"(?:^|.*?\.){n}\.(\d+)\.")))
                .collect::<Result<_>>()?,
            _ => vec![layer_prefix(r".*?\.[^.]*\.(\d+)\.")?],
        };
        Ok(LayerFilter {
            selection: layers_to_transform.filter(|s| !s.is_empty()).cloned(),
            patterns,
        })
    }

    /// Whether the module `name` is kept.
    pub fn keeps(&self, name: &str) -> bool {
        let Some(selection) = &self.selection else {
            return true;
        };
        self.patterns
            .iter()
            .find_map(|re| re.captures(name))
            .and_then(|c| c[1].parse::<usize>().ok())
            .is_some_and(|layer| selection.contains(layer))
    }
}

/// Python's `re.match` (anchored at the start only) of a layer expression.
fn layer_prefix(pattern: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})")).map_err(|e| {
        PeftError::Config(format!(
            "layers_pattern gives an invalid expression {pattern:?}: {e}"
        ))
    })
}

/// A `rank_pattern` / `alpha_pattern` map with its keys compiled: the value of the first key `k` (in key
/// order) for which `(.*\.)?(k)$` matches the whole module name, as HF PEFT's `get_pattern_key`.
#[derive(Debug, Clone)]
pub struct PatternMap<'a, V> {
    keys: Vec<(Regex, &'a V)>,
}

impl<'a, V> PatternMap<'a, V> {
    /// The compiled keys of `map`; `field` names the setting in errors.
    pub fn new(map: &'a BTreeMap<String, V>, field: &str) -> Result<Self> {
        let keys = map
            .iter()
            .map(|(k, v)| {
                Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                    .map(|re| (re, v))
                    .map_err(|e| PeftError::Config(format!("{field} key {k:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(PatternMap { keys })
    }

    /// The value for the module `name`, if a key matches it.
    pub fn get(&self, name: &str) -> Option<&'a V> {
        self.keys
            .iter()
            .find(|(re, _)| re.is_match(name))
            .map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_entries_match_whole_names_or_dotted_suffixes_only() {
        assert!(list_entry_matches(
            "q_proj",
            "model.layers.0.self_attn.q_proj"
        ));
        assert!(list_entry_matches(
            "self_attn.q_proj",
            "model.layers.0.self_attn.q_proj"
        ));
        assert!(list_entry_matches("q_proj", "q_proj"));
        assert!(!list_entry_matches(
            "proj",
            "model.layers.0.self_attn.q_proj"
        ));
    }

    #[test]
    fn an_explicit_layers_pattern_reads_the_index_after_that_name() {
        let selection = LayerSelection::Many(vec![2]);
        let pattern = LayersPattern::One("h".into());
        let filter = LayerFilter::new(Some(&selection), Some(&pattern)).unwrap();
        assert!(filter.keeps("transformer.h.2.attn.c_attn"));
        assert!(!filter.keeps("transformer.h.1.attn.c_attn"));
        // An empty selection selects nothing away.
        let none = LayerSelection::Many(vec![]);
        assert!(LayerFilter::new(Some(&none), None)
            .unwrap()
            .keeps("transformer.h.1.attn.c_attn"));
    }

    #[test]
    fn the_first_matching_pattern_key_wins_and_bad_keys_are_refused() {
        let map: BTreeMap<String, f64> =
            [("a.*".to_string(), 1.0), ("proj".to_string(), 2.0)].into();
        let keys = PatternMap::new(&map, "alpha_pattern").unwrap();
        assert_eq!(keys.get("x.attn_proj"), Some(&1.0));
        assert_eq!(keys.get("x.proj"), Some(&2.0));
        let bad: BTreeMap<String, f64> = [("(".to_string(), 1.0)].into();
        let err = PatternMap::new(&bad, "alpha_pattern")
            .unwrap_err()
            .to_string();
        assert!(err.contains("alpha_pattern"), "{err}");
    }
}
