//! Checks of a model configuration's values made before anything sized by them is allocated: every size is
//! above zero and within [`MAX_SIZE`], a norm epsilon is finite and above zero, and a layer count equals the
//! number of layers the checkpoint's tensors hold. Each error names the config key.
//!
//! ```
//! use std::collections::HashMap;
//! use candle_core::{DType, Device, Tensor};
//! use peft_models::config_checks::{check_eps, check_layer_count, check_sizes};
//! use peft_models::weights::WeightMap;
//! assert!(check_sizes(&[("n_embd", 768), ("n_head", 12)]).is_ok());
//! assert!(check_sizes(&[("n_head", 0)]).unwrap_err().to_string().contains("n_head"));
//! assert!(check_eps("layer_norm_epsilon", -1e-5).unwrap_err().to_string().contains("layer_norm_epsilon"));
//!
//! let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
//! let names = ["h.0.ln.weight", "h.1.ln.weight"];
//! let w = WeightMap::new(names.iter().map(|n| (n.to_string(), t.clone())).collect::<HashMap<_, _>>(), "ckpt");
//! assert!(check_layer_count("n_layer", 2, &w, "h").is_ok());
//! let err = check_layer_count("n_layer", 1, &w, "h").unwrap_err().to_string();
//! assert!(err.contains("`n_layer` = 1") && err.contains("2 layers"), "{err}");
//! ```

use std::collections::BTreeSet;

use crate::error::{ModelError, Result};
use crate::weights::WeightMap;

/// The largest size a config may give (hidden size, vocabulary, heads, context, ...): 2^26 = 67,108,864,
/// above every released model's and far below what would overflow a product of two sizes.
pub const MAX_SIZE: usize = 1 << 26;

/// Refuses a size of 0 or above [`MAX_SIZE`], naming its key.
pub fn check_size(key: &str, value: usize) -> Result<()> {
    if value == 0 || value > MAX_SIZE {
        return Err(ModelError::Config(format!(
            "`{key}` = {value} is out of range: a size must be between 1 and {MAX_SIZE}"
        )));
    }
    Ok(())
}

/// [`check_size`] for every `(key, value)`.
pub fn check_sizes(sizes: &[(&str, usize)]) -> Result<()> {
    sizes.iter().try_for_each(|(k, v)| check_size(k, *v))
}

/// Refuses a norm epsilon that is not a finite number above zero (a negative one makes NaN outputs).
pub fn check_eps(key: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(ModelError::Config(format!(
            "`{key}` = {value} must be a finite number above 0 (a norm epsilon such as 1e-5)"
        )));
    }
    Ok(())
}

/// The number of layers the checkpoint holds under `prefix` (tensors named `<prefix>.<i>.…`), refusing a
/// checkpoint whose layer indices have a gap.
pub fn layers_in(weights: &WeightMap, prefix: &str) -> Result<usize> {
    count_layers(
        weights.names().map(String::as_str),
        prefix,
        weights.source(),
    )
}

/// [`layers_in`] over tensor `names` read from `source` (a GGUF file's `blk.N.…` names before renaming).
pub fn count_layers<'a>(
    names: impl IntoIterator<Item = &'a str>,
    prefix: &str,
    source: &str,
) -> Result<usize> {
    let lead = format!("{prefix}.");
    let indices: BTreeSet<usize> = names
        .into_iter()
        .filter_map(|n| n.strip_prefix(&lead))
        .filter_map(|rest| rest.split('.').next())
        .filter_map(|i| i.parse().ok())
        .collect();
    if let Some(missing) = (0..indices.len()).find(|i| !indices.contains(i)) {
        let last = indices.iter().next_back().copied().unwrap_or(0);
        return Err(ModelError::Config(format!(
            "{source} holds layers {prefix}.0 .. {prefix}.{last} with layer {prefix}.{missing} missing: the \
             checkpoint is incomplete; download or save it again"
        )));
    }
    Ok(indices.len())
}

/// Refuses a configured layer count (`key` = `configured`) that differs from the number of layers the
/// checkpoint holds under `prefix`, before any per-layer allocation: a config saying fewer layers would leave
/// weights unused, more would ask for layers that do not exist (or for memory the file cannot justify).
pub fn check_layer_count(
    key: &str,
    configured: usize,
    weights: &WeightMap,
    prefix: &str,
) -> Result<()> {
    let held = layers_in(weights, prefix)?;
    if configured != held {
        return Err(ModelError::Config(format!(
            "`{key}` = {configured}, but the checkpoint {} holds {held} layers ({prefix}.0 .. {prefix}.{}): the \
             config does not describe these weights; fix `{key}` or use the config saved with them",
            weights.source(),
            held.saturating_sub(1)
        )));
    }
    if held == 0 {
        return Err(ModelError::Config(format!(
            "`{key}` = 0: a model needs at least one layer, and the checkpoint {} holds none under {prefix}",
            weights.source()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};

    use super::*;

    fn map(names: &[&str]) -> WeightMap {
        let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let tensors: HashMap<String, Tensor> =
            names.iter().map(|n| (n.to_string(), t.clone())).collect();
        WeightMap::new(tensors, "ckpt")
    }

    #[test]
    fn sizes_out_of_range_name_their_key() {
        assert!(check_size("vocab_size", MAX_SIZE).is_ok());
        for bad in [0, MAX_SIZE + 1, 1_000_000_000_000] {
            let err = check_size("vocab_size", bad).unwrap_err().to_string();
            assert!(
                err.contains("`vocab_size`") && err.contains(&bad.to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn eps_must_be_finite_and_positive() {
        assert!(check_eps("rms_norm_eps", 1e-6).is_ok());
        for bad in [0.0, -1e-5, f64::NAN, f64::INFINITY] {
            assert!(check_eps("rms_norm_eps", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layers_are_counted_from_tensor_names() {
        let w = map(&[
            "m.l.0.a",
            "m.l.0.b",
            "m.l.1.a",
            "m.l.10x.a",
            "m.norm",
            "m.l",
        ]);
        assert_eq!(layers_in(&w, "m.l").unwrap(), 2);
        assert_eq!(layers_in(&w, "other").unwrap(), 0);
        let gap = map(&["m.l.0.a", "m.l.2.a"]);
        let err = layers_in(&gap, "m.l").unwrap_err().to_string();
        assert!(err.contains("m.l.1 missing"), "{err}");
    }

    #[test]
    fn layer_count_must_equal_the_checkpoint() {
        let w = map(&["m.l.0.a", "m.l.1.a", "m.l.2.a"]);
        assert!(check_layer_count("num_layers", 3, &w, "m.l").is_ok());
        for bad in [2, 4, 1_000_000_000_000] {
            let err = check_layer_count("num_layers", bad, &w, "m.l")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`num_layers`") && err.contains("holds 3 layers"),
                "{err}"
            );
        }
        let err = check_layer_count("num_layers", 0, &map(&["x"]), "m.l")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least one layer"), "{err}");
    }
}
