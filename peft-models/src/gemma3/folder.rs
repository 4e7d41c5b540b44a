//! A `gemma3_text` folder's `config.json` made into a [`Gemma3Config`]: transformers 5 writes the rotary bases
//! per layer type (`rope_parameters: {full_attention: {rope_theta, rope_type}, sliding_attention: {..}}`),
//! earlier versions `rope_theta`, `rope_local_base_freq` and `rope_scaling`. Only the default rotary embedding
//! is implemented; any other kind (`linear`, which the larger Gemma-3 checkpoints use on their global layers,
//! `dynamic`, `yarn`, ...) is refused by name rather than computed wrongly.

use std::path::Path;

use peft_core::model::BaseModel;
use serde_json::Value;

use crate::config::Gemma3Config;
use crate::error::{ModelError, Result};
use crate::folder::parse_config;
use crate::weights::WeightMap;

use super::Gemma3;

/// Builds the model from a folder's parsed `config.json` (at `config_path`, for errors) and its weights;
/// returns the model and its eos token id. A multimodal `gemma3` config (`Gemma3ForConditionalGeneration`,
/// with a `text_config`) is refused: its weights sit under other names beside a vision tower.
pub(crate) fn from_folder(
    mut config: Value,
    config_path: &Path,
    weights: &WeightMap,
    name: &str,
) -> Result<(Box<dyn BaseModel>, Option<u32>)> {
    if config.get("text_config").is_some() {
        return Err(ModelError::Config(format!(
            "{}: a multimodal Gemma-3 checkpoint (model_type `gemma3`, Gemma3ForConditionalGeneration) is not \
             supported; only the text model (`gemma3_text`, Gemma3ForCausalLM, such as gemma-3-270m and \
             gemma-3-1b) is",
            config_path.display()
        )));
    }
    normalise_rope(&mut config)
        .map_err(|m| ModelError::Config(format!("{}: {m}", config_path.display())))?;
    let cfg: Gemma3Config = parse_config(config_path, config)?;
    let model = Gemma3::from_weights(&cfg, weights, name)?;
    Ok((Box::new(model), cfg.eos_token_id))
}

/// Moves transformers 5's per-layer-type `rope_parameters` to `rope_theta` / `rope_local_base_freq` (where
/// those are absent) and refuses any rotary kind but the default.
pub(crate) fn normalise_rope(config: &mut Value) -> std::result::Result<(), String> {
    let params = config
        .get("rope_parameters")
        .filter(|v| v.is_object())
        .cloned();
    let mut kinds = Vec::new();
    if let Some(params) = &params {
        // A flat dict (one set of parameters) is the global layers'.
        let (full, sliding) = if params.get("full_attention").is_some()
            || params.get("sliding_attention").is_some()
        {
            (
                params.get("full_attention"),
                params.get("sliding_attention"),
            )
        } else {
            (Some(params), None)
        };
        for (key, part) in [("rope_theta", full), ("rope_local_base_freq", sliding)] {
            let Some(part) = part.filter(|p| p.is_object()) else {
                continue;
            };
            if config.get(key).is_none() {
                if let Some(theta) = part.get("rope_theta") {
                    config[key] = theta.clone();
                }
            }
            kinds.push(part.clone());
        }
    }
    if let Some(scaling) = config.get("rope_scaling").filter(|v| v.is_object()) {
        kinds.push(scaling.clone());
    }
    for part in kinds {
        let kind = part
            .get("rope_type")
            .or_else(|| part.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if kind != "default" {
            return Err(format!(
                "RoPE type `{kind}` is not supported for Gemma-3 (only the default rotary embedding is implemented)"
            ));
        }
    }
    Ok(())
}
