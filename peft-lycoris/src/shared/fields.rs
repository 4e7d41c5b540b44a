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

use peft_core::tuner::{
    check_probability, check_rank, check_rank_pattern, RankFields, TargetFields,
};
use peft_core::Result;
use serde::{Deserialize, Serialize};

pub use peft_core::tuner::{LayerSelection, LayersPattern, TargetModules, ALL_LINEAR};

/// HF PEFT's `LycorisConfig` fields and the fields `LoHaConfig` and `LoKrConfig` both declare, with HF's
/// defaults (see [`LycorisFields::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LycorisFields {
    /// Rank (default 8).
    pub r: usize,
    /// Scale numerator (default 8): the update is scaled by `alpha / r`.
    #[serde(serialize_with = "peft_core::tuner::numbers::whole_as_integer")]
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
    #[serde(serialize_with = "peft_core::tuner::numbers::map_whole_as_integer")]
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
        check_rank(self.r, method, 8)?;
        check_rank_pattern(&self.rank_pattern, method)?;
        check_probability("rank_dropout", self.rank_dropout)?;
        check_probability("module_dropout", self.module_dropout)?;
        self.target_fields().check_layer_selection()?;
        peft_core::head::check_modules_to_save(self.modules_to_save.as_ref(), task_type, method)
    }

    /// The fields that select the adapted modules.
    pub fn target_fields(&self) -> TargetFields<'_> {
        TargetFields {
            target_modules: self.target_modules.as_ref(),
            exclude_modules: self.exclude_modules.as_ref(),
            layers_to_transform: self.layers_to_transform.as_ref(),
            layers_pattern: self.layers_pattern.as_ref(),
        }
    }

    /// `r` and `alpha` with their per-module patterns.
    pub fn rank_fields(&self) -> RankFields<'_> {
        RankFields {
            r: self.r,
            alpha: self.alpha,
            rank_pattern: &self.rank_pattern,
            alpha_pattern: &self.alpha_pattern,
        }
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
