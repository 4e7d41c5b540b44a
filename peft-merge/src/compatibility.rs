//! What the adapters of one merge must share, and the merged config's rank and targets, as HF PEFT's
//! `_check_add_weighted_adapter` decides them, plus the checks HF leaves to the adapters all sitting on one
//! loaded model (which a merge of folders cannot assume): one base model, the same layer selection, and one
//! shape per module.
//!
//! - Rank: each adapter's is the largest of `r` and its `rank_pattern` values. `linear`, `ties`, `dare_*` and
//!   `magnitude_prune` (the element-wise combinations) need them equal and keep that rank; `cat` sums them;
//!   the SVD combinations take `svd_rank`, or the largest.
//! - `target_modules`: lists are united (written sorted), regular expressions joined as `(a)|(b)`; a list
//!   beside an expression is refused, as HF refuses it.
//!
//! ```
//! use peft_lora::{LoraConfig, TargetModules};
//! use peft_merge::compatibility::merged_target_modules;
//! let a = LoraConfig::new(4, ["q_proj", "v_proj"]);
//! let b = LoraConfig::new(4, ["k_proj", "q_proj"]);
//! let union = merged_target_modules(&[("a", &a), ("b", &b)]).unwrap();
//! assert_eq!(union, TargetModules::list(["k_proj", "q_proj", "v_proj"]));
//! ```

use std::collections::BTreeSet;

use peft_lora::{LoraConfig, TargetModules};

use crate::combination::{Combination, Layout};
use crate::error::{MergeError, Result};
use crate::source::{ModuleFactors, SourceAdapter};

/// The merged adapter's rank for `combination` over `adapters`.
pub fn new_rank(
    adapters: &[SourceAdapter],
    combination: Combination,
    svd_rank: Option<usize>,
) -> Result<usize> {
    let ranks: Vec<usize> = adapters.iter().map(SourceAdapter::largest_rank).collect();
    match combination.layout() {
        Layout::Factors => {
            if ranks.iter().any(|&r| r != ranks[0]) {
                return Err(MergeError::DifferentRanks {
                    combination: combination.name(),
                    ranks: listed(adapters.iter().map(SourceAdapter::name).zip(&ranks)),
                });
            }
            Ok(ranks[0])
        }
        Layout::Concatenated => Ok(ranks.iter().sum()),
        Layout::Svd => match svd_rank {
            Some(0) => Err(MergeError::SvdSetting {
                setting: "svd_rank",
                value: 0.0,
                expected: "the merged adapter's rank must be at least 1 (leave it out for the largest input rank)",
            }),
            Some(r) => Ok(r),
            None => Ok(ranks.into_iter().max().unwrap_or(1)),
        },
    }
}

/// `adapter: value` pairs, comma-separated, for messages.
fn listed<'a, T: std::fmt::Display + 'a>(pairs: impl Iterator<Item = (&'a str, T)>) -> String {
    pairs
        .map(|(a, v)| format!("{a}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// HF PEFT's merged `target_modules` of the `(name, config)` pairs.
pub fn merged_target_modules(configs: &[(&str, &LoraConfig)]) -> Result<TargetModules> {
    let mut lists = BTreeSet::new();
    let mut patterns = Vec::new();
    let mut first_form: Option<(&str, &str)> = None;
    for &(name, config) in configs {
        let form = match &config.target_modules {
            None => {
                return Err(MergeError::Inconsistent {
                    adapter: name.to_string(),
                    message: "its config names no target_modules (a saved HF PEFT adapter always does); add the \
                              modules it adapts"
                        .into(),
                })
            }
            Some(TargetModules::List(names)) => {
                lists.extend(names.iter().cloned());
                "a list of names"
            }
            Some(TargetModules::Pattern(p)) => {
                patterns.push(p.clone());
                if config.target_modules.as_ref().is_some_and(TargetModules::is_all_linear) {
                    "\"all-linear\""
                } else {
                    "a regular expression"
                }
            }
        };
        match first_form {
            None => first_form = Some((name, form)),
            Some((first, first_kind)) if first_kind != form => {
                return Err(MergeError::SelectionMismatch {
                    field: "the form of target_modules",
                    first: first.to_string(),
                    first_value: first_kind.to_string(),
                    other: name.to_string(),
                    other_value: form.to_string(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(match first_form {
        Some((_, "a list of names")) => TargetModules::List(lists.into_iter().collect()),
        // "all-linear" everywhere stays "all-linear" (HF's "(all-linear)|(all-linear)" would match nothing).
        Some((_, "\"all-linear\"")) => TargetModules::Pattern(patterns.swap_remove(0)),
        _ => TargetModules::Pattern(
            patterns
                .iter()
                .map(|p| format!("({p})"))
                .collect::<Vec<_>>()
                .join("|"),
        ),
    })
}

/// The adapters must come from one base model, as far as their configs name it (`base_model_name_or_path`,
/// compared as `peft_core::adapter_io` compares it when loading: equal, or one a path ending in the other).
pub fn check_same_base(adapters: &[SourceAdapter]) -> Result<()> {
    let named: Vec<(&SourceAdapter, &str)> = adapters
        .iter()
        .filter_map(|a| Some((a, a.config().common.base_model_name_or_path.as_deref()?)))
        .collect();
    let Some(&(first, first_base)) = named.first() else {
        return Ok(());
    };
    for &(other, other_base) in &named[1..] {
        if !same_model_name(first_base, other_base) {
            return Err(MergeError::DifferentBaseModels {
                first: first.name().to_string(),
                first_base: first_base.to_string(),
                other: other.name().to_string(),
                other_base: other_base.to_string(),
            });
        }
    }
    Ok(())
}

/// Whether two model names plausibly name one model: equal, or one a path ending in the other.
fn same_model_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    long == short || (long.ends_with(short) && long[..long.len() - short.len()].ends_with('/'))
}

/// The adapters must select layers and exclusions alike: HF PEFT's merged config copies the first adapter's
/// `layers_to_transform`, `layers_pattern` and `exclude_modules`, which would drop (or, where the first selects
/// more, leave without factors) the modules of an adapter that selects differently.
pub fn check_same_selection(adapters: &[SourceAdapter]) -> Result<()> {
    let first = &adapters[0];
    let fields = |c: &LoraConfig| -> [(&'static str, String); 3] {
        let layers = c.layers_to_transform.as_ref().filter(|l| !l.is_empty());
        [
            ("layers_to_transform", json(&layers)),
            (
                "layers_pattern",
                json(&layers.and(c.layers_pattern.as_ref())),
            ),
            ("exclude_modules", json(&c.exclude_modules)),
        ]
    };
    let expected = fields(first.config());
    for other in &adapters[1..] {
        for ((field, a), (_, b)) in expected.iter().zip(fields(other.config())) {
            if *a != b {
                return Err(MergeError::SelectionMismatch {
                    field,
                    first: first.name().to_string(),
                    first_value: a.clone(),
                    other: other.name().to_string(),
                    other_value: b,
                });
            }
        }
    }
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The adapters holding one module must agree on its input and output sizes and its kind.
pub fn check_module_shapes(
    module: &str,
    present: &[(&SourceAdapter, &ModuleFactors)],
) -> Result<()> {
    let (first, f) = present[0];
    for &(other, g) in &present[1..] {
        if g.keys != f.keys {
            return Err(MergeError::KindMismatch {
                module: module.to_string(),
                first: first.name().to_string(),
                first_kind: f.keys.describe(),
                other: other.name().to_string(),
                other_kind: g.keys.describe(),
            });
        }
        let mismatch = if g.a.cols != f.a.cols {
            Some(("lora_A (its input size)", f.a.shape(), g.a.shape()))
        } else if g.b.rows != f.b.rows {
            Some(("lora_B (its output size)", f.b.shape(), g.b.shape()))
        } else {
            None
        };
        if let Some((what, first_shape, other_shape)) = mismatch {
            return Err(MergeError::ShapeMismatch {
                module: module.to_string(),
                what: what.to_string(),
                first: first.name().to_string(),
                first_shape: first_shape.to_vec(),
                other: other.name().to_string(),
                other_shape: other_shape.to_vec(),
            });
        }
    }
    Ok(())
}
