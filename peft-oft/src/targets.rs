//! Which modules OFT adapts and how each is cut into blocks. Modules are chosen by HF PEFT's rules as
//! [`peft_core::tuner`] states them for every method; without `target_modules`, the modules of
//! [`DEFAULT_ROLES`] (HF PEFT's OFT table is a copy of its LoRA table: GPT-2 `c_attn`, LLaMA and OPT `q_proj`,
//! `v_proj`, BERT `query`, `value`, T5 `q`, `v`).
//!
//! Each module's input is cut into `r` blocks of `oft_block_size` features, `r * oft_block_size = in_features`;
//! the config sets one and the other follows. Where the one set does not divide `in_features`, HF PEFT moves it
//! to the nearest divisor (the lower one on a tie; `in_features` itself when it is larger) and warns; so does
//! this crate, saying so in the adapter's notes (the saved config keeps the value as given, as HF PEFT's does).
//!
//! ```
//! use peft_core::model::BaseModel;
//! use peft_oft::{blocks_for, resolve_targets, OftConfig, TargetModules};
//! let model = peft_models::tiny::llama(0); // hidden 32
//! let (targets, saved) = resolve_targets(&OftConfig::default(), model.spec()).unwrap();
//! assert_eq!(saved, TargetModules::list(["q_proj", "v_proj"]));
//! // HF's default oft_block_size = 32: one block of 32 per module.
//! assert!(targets.iter().all(|t| (t.blocks, t.block_size) == (1, 32)));
//! // 12 does not divide 32: HF PEFT takes the nearest divisor, 8 (16 is as near; the lower one wins).
//! assert_eq!(blocks_for(32, 0, 12), (4, 8));
//! assert_eq!(blocks_for(32, 5, 0), (4, 8)); // r = 5 -> 4 blocks
//! ```

use peft_core::spec::{ModelSpec, Role};
use peft_core::tuner::{saved_target_modules, select_linear, LinearTarget, TargetModules};
use peft_core::Result;

use crate::config::OftConfig;

/// The roles OFT adapts when `target_modules` is not set: the query and value projections, or the fused one.
pub const DEFAULT_ROLES: &[Role] = peft_core::tuner::QUERY_VALUE_ROLES;

/// One adapted module and its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OftTarget {
    /// The linear module.
    pub linear: LinearTarget,
    /// The number of blocks its input is cut into (HF's per-module `r`).
    pub blocks: usize,
    /// The size of each block (HF's per-module `oft_block_size`).
    pub block_size: usize,
}

/// HF PEFT's `adjust_oft_parameters`: `value` where it divides `in_features`, else the nearest divisor (the
/// lower one on a tie), or `in_features` where `value` is not below it.
pub fn nearest_divisor(in_features: usize, value: usize) -> usize {
    if value >= in_features {
        return in_features;
    }
    let mut higher = value;
    while higher <= in_features && !in_features.is_multiple_of(higher) {
        higher += 1;
    }
    let mut lower = value;
    while lower > 1 && !in_features.is_multiple_of(lower) {
        lower -= 1;
    }
    if value - lower <= higher - value {
        lower
    } else {
        higher
    }
}

/// `(blocks, block_size)` of a module with `in_features` inputs under `r` / `oft_block_size` (exactly one of
/// them non-zero, as [`OftConfig::check`] ensures), adjusted as HF PEFT adjusts them.
pub fn blocks_for(in_features: usize, r: usize, oft_block_size: usize) -> (usize, usize) {
    if r == 0 {
        let size = if !in_features.is_multiple_of(oft_block_size) || oft_block_size > in_features {
            nearest_divisor(in_features, oft_block_size)
        } else {
            oft_block_size
        };
        (in_features / size, size)
    } else {
        let blocks = if !in_features.is_multiple_of(r) || r > in_features {
            nearest_divisor(in_features, r)
        } else {
            r
        };
        (blocks, in_features / blocks)
    }
}

/// The targets of `config` on `spec`, in site order, each cut into blocks, with the `target_modules` value to
/// save (the default of [`DEFAULT_ROLES`] filled in, `"all-linear"` expanded to full module names).
pub fn resolve_targets(
    config: &OftConfig,
    spec: &ModelSpec,
) -> Result<(Vec<OftTarget>, TargetModules)> {
    let (linear, requested) = select_linear(&config.target_fields(), spec, DEFAULT_ROLES, "OFT")?;
    let names = linear.iter().map(|t| t.name.clone()).collect();
    let targets = linear
        .into_iter()
        .map(|linear| {
            let (blocks, block_size) =
                blocks_for(linear.in_features, config.r, config.oft_block_size);
            OftTarget {
                linear,
                blocks,
                block_size,
            }
        })
        .collect();
    Ok((targets, saved_target_modules(requested, names)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use peft_core::model::BaseModel;

    #[test]
    fn divisors_are_hf_peft_s() {
        // Exact divisors stay.
        assert_eq!(blocks_for(64, 0, 16), (4, 16));
        assert_eq!(blocks_for(64, 8, 0), (8, 8));
        // Larger than the input: one block (block size) or one feature per block (r).
        assert_eq!(blocks_for(32, 0, 64), (1, 32));
        assert_eq!(blocks_for(32, 40, 0), (32, 1));
        // Nearest divisor of 48 to 10: 8 (2 below) against 12 (2 above): the lower one.
        assert_eq!(nearest_divisor(48, 10), 8);
        assert_eq!(nearest_divisor(48, 11), 12);
        // A prime input has only 1 and itself.
        assert_eq!(nearest_divisor(37, 5), 1);
        assert_eq!(nearest_divisor(37, 30), 37);
    }

    #[test]
    fn gpt2_s_default_is_its_fused_projection_and_llama_s_mlp_is_cut_by_its_own_width() {
        let gpt2 = peft_models::tiny::gpt2(0);
        let (t, saved) = resolve_targets(&OftConfig::default(), gpt2.spec()).unwrap();
        assert_eq!(saved, TargetModules::list(["c_attn"]));
        assert!(t.iter().all(|t| t.linear.fan_in_fan_out && t.blocks == 1));

        let llama = peft_models::tiny::llama(0);
        let config = OftConfig {
            oft_block_size: 16,
            ..OftConfig::new(["down_proj", "o_proj"])
        };
        let (t, _) = resolve_targets(&config, llama.spec()).unwrap();
        let cut: Vec<(usize, usize, usize)> = t
            .iter()
            .map(|t| (t.linear.in_features, t.blocks, t.block_size))
            .collect();
        // o_proj reads 32 features, down_proj 64.
        assert_eq!(cut, [(32, 2, 16), (64, 4, 16), (32, 2, 16), (64, 4, 16)]);
    }
}
