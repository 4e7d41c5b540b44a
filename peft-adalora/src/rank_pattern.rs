//! HF PEFT's AdaLoRA `rank_pattern`: for each adapted module, under the key `<module>.lora_E`, one flag per
//! starting rank saying whether that singular triplet survived the allocation. Training writes it into the
//! saved config; saving keeps only the surviving rows of `lora_A` / `lora_E` and columns of `lora_B`; loading
//! builds each module at its number of survivors (a module the pattern does not name keeps `init_r`).
//!
//! ```
//! use peft_adalora::{pattern_for, pattern_key, RankPattern};
//! let pattern: RankPattern = [(pattern_key("h.0.attn.c_attn"), vec![true, false, true])].into();
//! let masks = pattern_for(&pattern, &["h.0.attn.c_attn", "h.1.attn.c_attn"], 3).unwrap();
//! assert_eq!(masks, vec![Some(vec![true, false, true]), None]);
//! // A flag list of another length than init_r is refused, naming the key.
//! assert!(pattern_for(&pattern, &["h.0.attn.c_attn"], 4).unwrap_err().to_string().contains("c_attn"));
//! ```

use std::collections::BTreeMap;

use candle_core::Tensor;
use peft_core::{PeftError, Result};

/// `rank_pattern` as HF PEFT saves it: `<module>.lora_E` -> one flag per starting rank.
pub type RankPattern = BTreeMap<String, Vec<bool>>;

/// The key of `module` in a rank pattern.
pub fn pattern_key(module: &str) -> String {
    format!("{module}.lora_E")
}

/// The flags of each module of `modules` (full names, in order) in `pattern`, `None` where it names none. A
/// key may carry a prefix of the task model (`bert.`), as the module path is HF's. Refused: a key naming no
/// adapted module, a flag list of another length than `init_r`.
pub fn pattern_for(
    pattern: &RankPattern,
    modules: &[&str],
    init_r: usize,
) -> Result<Vec<Option<Vec<bool>>>> {
    let mut found = vec![None; modules.len()];
    for (key, flags) in pattern {
        let module = key.strip_suffix(".lora_E").unwrap_or(key);
        let i = modules
            .iter()
            .position(|m| module == *m || module.ends_with(&format!(".{m}")))
            .ok_or_else(|| {
                PeftError::Config(format!(
                    "rank_pattern names `{key}`, which is no module this AdaLoRA config adapts ({}): the \
                     config's target_modules / layers_to_transform do not match its rank_pattern",
                    modules.join(", ")
                ))
            })?;
        if flags.len() != init_r {
            return Err(PeftError::Config(format!(
                "rank_pattern[`{key}`] has {} flags, but init_r = {init_r}: each module's list has one flag per \
                 starting rank (fix init_r or the pattern)",
                flags.len()
            )));
        }
        found[i] = Some(flags.clone());
    }
    Ok(found)
}

/// The entries of `t` along `dim` whose `keep` flag is set.
pub fn keep_along(t: &Tensor, dim: usize, keep: &[bool]) -> Result<Tensor> {
    let idx: Vec<u32> = (0..keep.len() as u32)
        .filter(|&i| keep[i as usize])
        .collect();
    let idx = Tensor::from_vec(idx.clone(), idx.len(), t.device())?;
    Ok(t.index_select(&idx, dim)?)
}
