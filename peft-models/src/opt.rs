//! OPT as a frozen model (placeholder: being written).

use std::path::Path;

use peft_core::model::BaseModel;
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::weights::WeightMap;

/// Builds the model from a folder's parsed `config.json` (at `config_path`, for errors) and its weights;
/// returns the model and its eos token id.
pub(crate) fn from_folder(
    config: Value,
    config_path: &Path,
    weights: &WeightMap,
    name: &str,
) -> Result<(Box<dyn BaseModel>, Option<u32>)> {
    let _ = (config, weights, name);
    Err(ModelError::Config(format!(
        "{}: OPT is not implemented yet",
        config_path.display()
    )))
}
