//! The fields HF PEFT's `LoHaConfig` and `LoKrConfig` share (both derive from `LycorisConfig`), with HF's names
//! and defaults: each method's config flattens [`LycorisFields`] into itself, so that its JSON is HF's flat
//! `adapter_config.json`.
//!
//! ```
//! use peft_lycoris::{LycorisFields, TargetModules};
//! let read: LycorisFields = serde_json::from_str(r#"{"r": 4, "target_modules": ["q_proj"]}"#).unwrap();
//! assert_eq!((read.r, read.alpha), (4, 8.0)); // alpha keeps HF's default, 8
//! assert_eq!(read.target_modules, Some(TargetModules::list(["q_proj"])));
//! assert_eq!(serde_json::to_value(&read).unwrap()["alpha"], 8); // written as HF writes it, an integer
//! ```

use std::collections::BTreeMap;

use peft_core::{PeftError, Result};
use serde::{Deserialize, Serialize, Serializer};

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

/// HF PEFT's `LycorisConfig` fields and the fields `LoHaConfig` and `LoKrConfig` both declare, with HF's
/// defaults (see [`LycorisFields::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LycorisFields {
    /// Rank (default 8).
    pub r: usize,
    /// Scale numerator (default 8): the update is scaled by `alpha / r`.
    #[serde(serialize_with = "number")]
    pub alpha: f64,
    /// While training, each output row of the update is dropped with this probability (default 0).
    pub rank_dropout: f64,
    /// While training, each adapted module skips its update in a forward call with this probability
    /// (default 0).
    pub module_dropout: f64,
    /// The FedPara "Proposition 3" decomposition of convolution kernels larger than 1; HF PEFT applies it to
    /// `Conv1d` / `Conv2d` modules only and ignores it for linear ones, which are all this crate adapts, so any
    /// value is accepted and changes nothing.
    pub use_effective_conv2d: bool,
    /// Modules to adapt; `None` picks the query and value projections (or the fused one) by their roles, HF
    /// PEFT's default (its LoHa and LoKr tables copy LoRA's); filled in when built.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt, matched as `target_modules` is.
    pub exclude_modules: Option<TargetModules>,
    /// Only adapt the modules of these layer indices.
    pub layers_to_transform: Option<LayerSelection>,
    /// Name of the layer list (`layers`, `h`) that `layers_to_transform` indexes.
    pub layers_pattern: Option<LayersPattern>,
    /// Per-module ranks by name pattern (`(.*\.)?<key>$`), overriding `r`.
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alphas by name pattern, overriding `alpha`.
    #[serde(serialize_with = "number_map")]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Extra modules trained in full; only a classification head is supported here.
    pub modules_to_save: Option<Vec<String>>,
    /// Version of HF PEFT that wrote the config.
    pub peft_version: Option<String>,
}

/// HF PEFT's defaults, which serde also takes for every field a config leaves out.
impl Default for LycorisFields {
    fn default() -> Self {
        LycorisFields {
            r: 8,
            alpha: 8.0,
            rank_dropout: 0.0,
            module_dropout: 0.0,
            use_effective_conv2d: false,
            target_modules: None,
            exclude_modules: None,
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            modules_to_save: None,
            peft_version: None,
        }
    }
}

impl LycorisFields {
    /// Refuses what HF PEFT refuses (or what would not be meaningful), naming `method` and what to change.
    pub fn check(&self, method: &str, task_type: Option<&str>) -> Result<()> {
        if self.r == 0 {
            return Err(PeftError::Config(format!(
                "r = 0: the {method} rank must be at least 1 (HF PEFT's default is 8)"
            )));
        }
        if let Some((key, _)) = self.rank_pattern.iter().find(|(_, &r)| r == 0) {
            return Err(PeftError::Config(format!(
                "rank_pattern gives `{key}` rank 0: every {method} rank must be at least 1"
            )));
        }
        for (name, p) in [
            ("rank_dropout", self.rank_dropout),
            ("module_dropout", self.module_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(PeftError::Config(format!("{name} = {p} must be in [0, 1)")));
            }
        }
        if self.layers_pattern.is_some() && self.layers_to_transform.is_none() {
            return Err(PeftError::Config(
                "layers_pattern is set but layers_to_transform is not: give the layer indices too (as HF PEFT \
                 requires)"
                    .into(),
            ));
        }
        if let (Some(TargetModules::Pattern(p)), Some(_)) =
            (&self.target_modules, &self.layers_to_transform)
        {
            return Err(PeftError::Config(format!(
                "layers_to_transform cannot be used when target_modules is a string ({p:?}), as in HF PEFT: \
                 list the module names instead, or put the layer numbers in the regular expression"
            )));
        }
        peft_core::head::check_modules_to_save(self.modules_to_save.as_ref(), task_type, method)
    }

    /// This config at rank `size` (at least 1), with `alpha` scaled along so that `alpha / r` stays.
    pub fn with_rank(&self, size: usize) -> Self {
        let r = size.max(1);
        LycorisFields {
            r,
            alpha: self.alpha * r as f64 / self.r.max(1) as f64,
            ..self.clone()
        }
    }
}

/// Writes whole numbers as integers (HF PEFT writes `"alpha": 8`), others as floats.
fn number<S: Serializer>(value: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        s.serialize_i64(*value as i64)
    } else {
        s.serialize_f64(*value)
    }
}

fn number_map<S: Serializer>(
    map: &BTreeMap<String, f64>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    struct Num(f64);
    impl Serialize for Num {
        fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            number(&self.0, s)
        }
    }
    let mut m = s.serialize_map(Some(map.len()))?;
    for (k, v) in map {
        m.serialize_entry(k, &Num(*v))?;
    }
    m.end()
}
