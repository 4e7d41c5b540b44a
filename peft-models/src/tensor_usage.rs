//! A model loads whole or not at all: every tensor of the checkpoint must be used by the architecture or named
//! in its explicit allow-list of tensors that are not weights (buffers Hugging Face saves, tied copies, heads
//! of task models that the base model does not have). Anything else means the config does not describe the
//! file (fewer layers than it holds, another architecture's names) and is refused, naming the first few.
//!
//! ```
//! use std::collections::{BTreeSet, HashMap};
//! use candle_core::{DType, Device, Tensor};
//! use peft_models::tensor_usage::{check_all_used, Allowed};
//! use peft_models::weights::WeightMap;
//! let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
//! let names = ["h.0.w", "h.0.attn.bias", "extra.w"];
//! let w = WeightMap::new(names.iter().map(|n| (n.to_string(), t.clone())).collect::<HashMap<_, _>>(), "ckpt");
//! let used = BTreeSet::from(["h.0.w".to_string()]);
//! let allowed = [Allowed::new("h.*.attn.bias", "the causal mask buffer")];
//! let err = check_all_used(&w, &used, &allowed).unwrap_err().to_string();
//! assert!(err.contains("1 tensor") && err.contains("extra.w"), "{err}");
//! ```

use std::collections::BTreeSet;

use crate::error::{ModelError, Result};
use crate::weights::WeightMap;

/// How many unused names an error lists.
const LISTED: usize = 5;

/// A checkpoint tensor an architecture may leave unused, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// The name, with at most one `*` standing for any non-empty text (`transformer.h.*.attn.bias`).
    pub pattern: &'static str,
    /// Why the tensor is not a weight of the model.
    pub why: &'static str,
}

impl Allowed {
    /// An allowance for tensors named like `pattern`.
    pub const fn new(pattern: &'static str, why: &'static str) -> Self {
        Allowed { pattern, why }
    }

    /// True where `name` matches the pattern.
    pub fn matches(&self, name: &str) -> bool {
        match self.pattern.split_once('*') {
            None => name == self.pattern,
            Some((head, tail)) => {
                name.len() > head.len() + tail.len()
                    && name.starts_with(head)
                    && name.ends_with(tail)
            }
        }
    }
}

/// Refuses a checkpoint that holds tensors outside `used` and outside every allowance, naming the first few
/// (in name order) and their count.
pub fn check_all_used(
    weights: &WeightMap,
    used: &BTreeSet<String>,
    allowed: &[Allowed],
) -> Result<()> {
    let mut unused: Vec<&String> = weights
        .names()
        .filter(|n| !used.contains(*n) && !allowed.iter().any(|a| a.matches(n)))
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    unused.sort();
    let count = unused.len();
    let mut names: Vec<String> = unused
        .iter()
        .take(LISTED)
        .map(|n| format!("`{n}`"))
        .collect();
    if count > LISTED {
        names.push(format!("and {} more", count - LISTED));
    }
    Err(ModelError::UnusedTensors {
        source_desc: weights.source().to_string(),
        count,
        names: names.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};

    use super::*;

    fn map(names: &[String]) -> WeightMap {
        let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        WeightMap::new(
            names
                .iter()
                .map(|n| (n.clone(), t.clone()))
                .collect::<HashMap<_, _>>(),
            "ckpt",
        )
    }

    #[test]
    fn patterns_match_one_wildcard() {
        let a = Allowed::new("model.layers.*.self_attn.rotary_emb.inv_freq", "buffer");
        assert!(a.matches("model.layers.12.self_attn.rotary_emb.inv_freq"));
        assert!(!a.matches("model.layers..self_attn.rotary_emb.inv_freq"));
        assert!(!a.matches("model.layers.1.self_attn.q_proj.weight"));
        let exact = Allowed::new("lm_head.weight", "tied");
        assert!(exact.matches("lm_head.weight") && !exact.matches("lm_head.weight2"));
        assert!(Allowed::new("cls.*", "head").matches("cls.predictions.bias"));
    }

    #[test]
    fn unused_tensors_are_counted_and_the_first_named() {
        let names: Vec<String> = (0..8)
            .map(|i| format!("extra.{i}"))
            .chain(["w".to_string()])
            .collect();
        let used = BTreeSet::from(["w".to_string()]);
        let err = check_all_used(&map(&names), &used, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("8 tensor(s)") && err.contains("`extra.0`") && err.contains("and 3 more"),
            "{err}"
        );
        assert!(!err.contains("extra.7"), "{err}");
        let allowed = [Allowed::new("extra.*", "test")];
        assert!(check_all_used(&map(&names), &used, &allowed).is_ok());
    }
}
