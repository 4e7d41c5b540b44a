//! The checks HF PEFT's tuner configs share, each refusing a value with what to change: a rank of 0, a
//! probability outside `[0, 1)`, and the combinations of `target_modules`, `layers_to_transform` and
//! `layers_pattern` that HF refuses.
//!
//! ```
//! use peft_core::tuner::{check_probability, check_rank, LayerSelection, TargetFields, TargetModules};
//! assert!(check_rank(0, "LoRA", 8).unwrap_err().to_string().contains("r = 0"));
//! assert!(check_probability("lora_dropout", 1.0).is_err());
//! let (regex, layer) = (TargetModules::Pattern(".*q_proj".into()), LayerSelection::One(0));
//! let fields = TargetFields { target_modules: Some(&regex), layers_to_transform: Some(&layer), ..Default::default() };
//! assert!(fields.check_layer_selection().is_err());
//! ```

use std::collections::BTreeMap;

use crate::tuner::selection::TargetModules;
use crate::tuner::targets::TargetFields;
use crate::{PeftError, Result};

/// Refuses `r = 0`; `method` and HF PEFT's default rank `hf_default` are named in the error.
pub fn check_rank(r: usize, method: &str, hf_default: usize) -> Result<()> {
    if r == 0 {
        return Err(PeftError::Config(format!(
            "r = 0: the {method} rank must be at least 1 (HF PEFT's default is {hf_default})"
        )));
    }
    Ok(())
}

/// Refuses a `rank_pattern` entry of rank 0.
pub fn check_rank_pattern(rank_pattern: &BTreeMap<String, usize>, method: &str) -> Result<()> {
    if let Some((key, _)) = rank_pattern.iter().find(|(_, &r)| r == 0) {
        return Err(PeftError::Config(format!(
            "rank_pattern gives `{key}` rank 0: every {method} rank must be at least 1"
        )));
    }
    Ok(())
}

/// Refuses a probability (`field` = `p`, a dropout) outside `[0, 1)`.
pub fn check_probability(field: &str, p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(PeftError::Config(format!(
            "{field} = {p} must be in [0, 1)"
        )));
    }
    Ok(())
}

impl TargetFields<'_> {
    /// Both layer checks HF PEFT's `LoraConfig` (and the configs copying it) make:
    /// [`check_layers_pattern`](Self::check_layers_pattern) and
    /// [`check_no_layers_with_string_target`](Self::check_no_layers_with_string_target).
    pub fn check_layer_selection(&self) -> Result<()> {
        self.check_no_layers_with_string_target()?;
        self.check_layers_pattern()
    }

    /// Refuses `layers_to_transform` with a string `target_modules` (`"all-linear"` included), as HF PEFT does.
    pub fn check_no_layers_with_string_target(&self) -> Result<()> {
        if let (Some(TargetModules::Pattern(p)), Some(_)) =
            (self.target_modules, self.layers_to_transform)
        {
            return Err(PeftError::Config(format!(
                "layers_to_transform cannot be used when target_modules is a string ({p:?}), as in HF PEFT: \
                 list the module names instead, or put the layer numbers in the regular expression"
            )));
        }
        Ok(())
    }

    /// Refuses `layers_pattern` without `layers_to_transform`, as HF PEFT does.
    pub fn check_layers_pattern(&self) -> Result<()> {
        if self.layers_pattern.is_some() && self.layers_to_transform.is_none() {
            return Err(PeftError::Config(
                "layers_pattern is set but layers_to_transform is not: give the layer indices too (as HF PEFT \
                 requires)"
                    .into(),
            ));
        }
        Ok(())
    }
}
