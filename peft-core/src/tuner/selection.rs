//! The config fields that say which modules a module-wrapping method adapts, as HF PEFT's tuner configs
//! declare them: `target_modules` / `exclude_modules` ([`TargetModules`]), `layers_to_transform`
//! ([`LayerSelection`]) and `layers_pattern` ([`LayersPattern`]). Each reads and writes HF's JSON forms (a
//! list or a string; a number or a list), so a method's config can hold them as they are.
//!
//! ```
//! use peft_core::tuner::{LayerSelection, TargetModules};
//! let t: TargetModules = serde_json::from_str(r#"["q_proj", "v_proj"]"#).unwrap();
//! assert_eq!(t, TargetModules::list(["q_proj", "v_proj"]));
//! let all: TargetModules = serde_json::from_str(r#""ALL-LINEAR""#).unwrap();
//! assert!(all.is_all_linear());
//! let one: LayerSelection = serde_json::from_str("3").unwrap();
//! assert!(one.contains(3) && !one.contains(2));
//! assert_eq!(serde_json::to_string(&one).unwrap(), "3");
//! ```

use serde::{Deserialize, Serialize};

/// `target_modules` / `exclude_modules`: a list of names, or one string that is a regular expression
/// full-matched against whole module names (`"all-linear"` is the shorthand for every linear module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names; an entry matches a module whose full name equals it or ends with `"." + entry`.
    List(Vec<String>),
    /// A regular expression over full module names, or `"all-linear"`.
    Pattern(String),
}

impl TargetModules {
    /// A list of names.
    pub fn list<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        TargetModules::List(names.into_iter().map(Into::into).collect())
    }

    /// Whether this is HF PEFT's `"all-linear"` shorthand (compared case-insensitively, as HF PEFT does).
    pub fn is_all_linear(&self) -> bool {
        matches!(self, TargetModules::Pattern(p) if p.eq_ignore_ascii_case(ALL_LINEAR))
    }

    /// The value as a user wrote it, for messages: the list, or the quoted string.
    pub fn describe(&self) -> String {
        match self {
            TargetModules::List(v) => format!("{v:?}"),
            TargetModules::Pattern(p) => format!("{p:?}"),
        }
    }
}

/// HF PEFT's shorthand for every linear module except the output head.
pub const ALL_LINEAR: &str = "all-linear";

/// `layers_to_transform`: one layer index or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerSelection {
    /// A single layer.
    One(usize),
    /// Several layers.
    Many(Vec<usize>),
}

impl LayerSelection {
    /// Whether layer `index` is selected.
    pub fn contains(&self, index: usize) -> bool {
        match self {
            LayerSelection::One(i) => *i == index,
            LayerSelection::Many(v) => v.contains(&index),
        }
    }

    /// HF PEFT treats an empty list as "no selection".
    pub fn is_empty(&self) -> bool {
        matches!(self, LayerSelection::Many(v) if v.is_empty())
    }
}

/// `layers_pattern`: the name (or names) of the module list holding the layers (`"layers"`, `"h"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayersPattern {
    /// One name.
    One(String),
    /// Several names, tried in order.
    Many(Vec<String>),
}

impl LayersPattern {
    /// The names, in order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            LayersPattern::One(s) => vec![s.as_str()],
            LayersPattern::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}
