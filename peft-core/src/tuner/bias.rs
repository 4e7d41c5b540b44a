//! Trainable biases of a module-wrapping method (HF PEFT's `bias = "all"` / `"<method>_only"`): copies of the
//! frozen biases, trained in place of them (through [`Hooks::bias`](crate::hooks::Hooks::bias)) and saved
//! under HF PEFT's keys, `<module>.base_layer.bias` for a module the method wraps and `<module>.bias` for any
//! other.
//!
//! ```
//! use peft_core::tuner::bias_key;
//! assert_eq!(bias_key("h.0.attn.c_attn", true), "base_model.model.h.0.attn.c_attn.base_layer.bias");
//! assert_eq!(bias_key("h.0.ln_1", false), "base_model.model.h.0.ln_1.bias");
//! ```

use std::collections::HashMap;
use std::fmt::Debug;

use candle_core::{DType, Tensor, Var};

use crate::model::BaseModel;
use crate::spec::{SiteId, SiteKind};
use crate::{PeftError, Result};

/// Prefix of every per-module key HF PEFT saves for a non-prompt method (`PeftModel.base_model.model`).
pub const MODULE_KEY_PREFIX: &str = "base_model.model.";

/// HF PEFT's key of a trained bias of `module`: under `base_layer` for a module the method wraps.
pub fn bias_key(module: &str, wrapped: bool) -> String {
    if wrapped {
        format!("{MODULE_KEY_PREFIX}{module}.base_layer.bias")
    } else {
        format!("{MODULE_KEY_PREFIX}{module}.bias")
    }
}

/// Which frozen biases are trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasScope {
    /// None (`bias = "none"`).
    None,
    /// Every bias of the model, of linear and norm modules (`bias = "all"`).
    All,
    /// The biases of the wrapped modules only (`bias = "lora_only"`, `"vera_only"`, ...).
    WrappedOnly,
}

/// A frozen bias made trainable. A clone shares the variable.
#[derive(Debug, Clone)]
pub struct TrainableBias {
    /// The site whose bias it replaces.
    pub site: SiteId,
    /// Its HF PEFT key ([`bias_key`]).
    pub key: String,
    /// The trained value, starting as a copy of the frozen bias.
    pub value: Var,
}

/// Copies of the frozen biases of `model` that `scope` trains, in site order, with their HF PEFT keys (under
/// `base_layer` at the `wrapped` sites). `setting` is the config's value, named in the error for a bias the
/// model reports but does not expose.
pub fn trainable_biases(
    model: &dyn BaseModel,
    wrapped: &[SiteId],
    scope: BiasScope,
    setting: impl Debug,
) -> Result<Vec<TrainableBias>> {
    if scope == BiasScope::None {
        return Ok(Vec::new());
    }
    let parameters: HashMap<String, Tensor> = model.parameters().into_iter().collect();
    let mut biases = Vec::new();
    for (id, site) in model.spec().iter_sites() {
        let is_wrapped = wrapped.contains(&id);
        if !site.has_bias || (scope == BiasScope::WrappedOnly && !is_wrapped) {
            continue;
        }
        let frozen = match site.kind {
            SiteKind::Linear { .. } => model.frozen_linear(id).and_then(|l| l.bias().cloned()),
            SiteKind::Norm { .. } => None,
        };
        let value = frozen
            .or_else(|| parameters.get(&format!("{}.bias", site.name)).cloned())
            .ok_or_else(|| {
                PeftError::Unsupported(format!(
                    "bias = {setting:?}: the model reports a bias at `{}` but does not expose it",
                    site.name
                ))
            })?;
        biases.push(TrainableBias {
            site: id,
            key: bias_key(&site.name, is_wrapped),
            value: Var::from_tensor(&value.to_dtype(DType::F32)?.detach())?,
        });
    }
    Ok(biases)
}
