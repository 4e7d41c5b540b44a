//! The merge itself, HF PEFT's `add_weighted_adapter` module by module. With `w` an adapter's weight and `s`
//! its scaling for the module (`lora_alpha / r`, patterns and rsLoRA applied):
//!
//! - element-wise combinations (`linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`): the A
//!   factors are combined with weights `sign(w s) sqrt(|w s|)` and the B factors with `sqrt(|w s|)`, each set
//!   by the combination's rule ([`crate::task_tensors`]); a module keeps its rank;
//! - `cat`: `A = [w1 s1 A1; w2 s2 A2; ...]`, `B = [B1 B2 ...]`, zero-padded to the sum of the adapters' ranks:
//!   exactly `sum w s B A`;
//! - SVD combinations: the updates `s B A` are combined with weights `w` by the rule, then factored to the new
//!   rank ([`crate::svd`]).
//!
//! A module only some adapters adapt is combined from those that do. A single adapter is always reweighted
//! linearly, as in HF PEFT. The merged config means scaling 1 everywhere: `r = lora_alpha =` the new rank, and
//! where a module's merged rank differs (element-wise combinations of adapters with a `rank_pattern`) a
//! `rank_pattern` and `alpha_pattern` entry for it ([`crate::output`]).
//!
//! ```
//! use peft_lora::LoraConfig;
//! use peft_merge::{merge, Combination, Matrix, MergeOptions, ModuleFactors, SourceAdapter};
//! let module = "model.layers.0.self_attn.q_proj";
//! let adapter = |name: &str, alpha: f64, a: Vec<f64>, b: Vec<f64>| {
//!     let factors = ModuleFactors::linear(Matrix::new(1, 2, a), Matrix::new(2, 1, b));
//!     let config = LoraConfig { lora_alpha: alpha, ..LoraConfig::new(1, ["q_proj"]) };
//!     SourceAdapter::new(name, config, [(module.to_string(), factors)].into()).unwrap()
//! };
//! let x = adapter("x", 1.0, vec![1.0, 0.0], vec![1.0, 2.0]);
//! let y = adapter("y", 2.0, vec![0.0, 1.0], vec![3.0, -1.0]);
//! let merged = merge(&[x.clone(), y.clone()], &MergeOptions::new(Combination::Cat, vec![0.5, 1.0])).unwrap();
//! // cat is exact: 0.5 * 1 * B_x A_x + 1.0 * 2 * B_y A_y.
//! let expected = x.modules()[module].product().scaled(0.5).data.iter()
//!     .zip(&y.modules()[module].product().scaled(2.0).data).map(|(p, q)| p + q).collect::<Vec<_>>();
//! assert_eq!(merged.delta(module).unwrap().data, expected);
//! assert_eq!((merged.rank(), merged.config().lora_alpha), (2, 2.0));
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::combination::{Combination, Layout, MajoritySignMethod};
use crate::compatibility::{
    check_module_shapes, check_same_base, check_same_selection, merged_target_modules, new_rank,
};
use crate::error::{MergeError, Result};
use crate::matrix::Matrix;
use crate::output::MergedAdapter;
use crate::source::{ModuleFactors, SourceAdapter};
use crate::svd::truncated_factors;
use crate::task_tensors::{combine, TaskRule};

/// How to merge: HF PEFT's `add_weighted_adapter` arguments, and the seed of DARE's masks.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeOptions {
    /// The combination (HF's `combination_type`; HF's default is `svd`).
    pub combination: Combination,
    /// One weight per adapter; negative weights subtract.
    pub weights: Vec<f64>,
    /// The fraction of entries kept, in (0, 1], for the pruning combinations (ties, dare, magnitude_prune).
    pub density: Option<f64>,
    /// TIES' sign election.
    pub majority_sign_method: MajoritySignMethod,
    /// The SVD combinations' new rank (default: the largest input rank).
    pub svd_rank: Option<usize>,
    /// The SVD combinations' clamp quantile, in [0, 1].
    pub svd_clamp: Option<f64>,
    /// Seed of DARE's random masks (HF draws them from torch's global generator).
    pub seed: u64,
}

impl MergeOptions {
    /// `combination` with `weights`, HF's defaults for the rest (no density, `total`, no SVD settings) and
    /// seed 0.
    pub fn new(combination: Combination, weights: Vec<f64>) -> Self {
        MergeOptions {
            combination,
            weights,
            density: None,
            majority_sign_method: MajoritySignMethod::Total,
            svd_rank: None,
            svd_clamp: None,
            seed: 0,
        }
    }

    /// These options with `density`.
    pub fn with_density(self, density: f64) -> Self {
        MergeOptions {
            density: Some(density),
            ..self
        }
    }

    /// The rule the combination applies to its task tensors, the density checked.
    fn rule(&self, combination: Combination) -> Result<TaskRule> {
        let density = if combination.needs_density() {
            match self.density {
                Some(d) if d > 0.0 && d <= 1.0 => d,
                other => {
                    return Err(MergeError::Density {
                        combination: combination.name(),
                        density: other,
                    })
                }
            }
        } else {
            1.0
        };
        Ok(TaskRule {
            prune: combination.prune(),
            density,
            sign: combination
                .elects_sign()
                .then_some(self.majority_sign_method),
        })
    }
}

/// Merges `adapters` as `options` say. See the module documentation for what each combination computes and
/// [`MergeError`] for what is refused.
pub fn merge(adapters: &[SourceAdapter], options: &MergeOptions) -> Result<MergedAdapter> {
    if adapters.is_empty() {
        return Err(MergeError::NoAdapters);
    }
    if options.weights.len() != adapters.len() {
        return Err(MergeError::WeightsCount {
            adapters: adapters.len(),
            weights: options.weights.len(),
        });
    }
    if let Some((index, &value)) = options
        .weights
        .iter()
        .enumerate()
        .find(|(_, w)| !w.is_finite())
    {
        return Err(MergeError::BadWeight { index, value });
    }
    // HF PEFT: "if there is only one adapter, we can only use linear merging".
    let combination = if adapters.len() == 1 {
        Combination::Linear
    } else {
        options.combination
    };
    let rule = options.rule(combination)?;
    if combination.layout() == Layout::Svd {
        if let Some(q) = options.svd_clamp.filter(|q| !(0.0..=1.0).contains(q)) {
            return Err(MergeError::SvdSetting {
                setting: "svd_clamp",
                value: q,
                expected: "a quantile in [0, 1] (0.99 clamps the factors' largest 1% of entries)",
            });
        }
    }
    check_same_base(adapters)?;
    check_same_selection(adapters)?;
    let rank = new_rank(adapters, combination, options.svd_rank)?;
    let configs: Vec<(&str, &peft_lora::LoraConfig)> =
        adapters.iter().map(|a| (a.name(), a.config())).collect();
    let target_modules = merged_target_modules(&configs)?;

    let names: BTreeSet<&String> = adapters.iter().flat_map(|a| a.modules().keys()).collect();
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut modules = std::collections::BTreeMap::new();
    for module in names {
        let present: Vec<(usize, &SourceAdapter, &ModuleFactors)> = adapters
            .iter()
            .enumerate()
            .filter_map(|(i, a)| Some((i, a, a.modules().get(module)?)))
            .collect();
        let pairs: Vec<(&SourceAdapter, &ModuleFactors)> =
            present.iter().map(|&(_, a, f)| (a, f)).collect();
        check_module_shapes(module, &pairs)?;
        // w s per adapter holding the module.
        let scaled: Vec<(f64, f64, &ModuleFactors)> = present
            .iter()
            .map(|&(i, a, f)| {
                let s = a.scale(module).expect("the adapter holds the module");
                (options.weights[i], s, f)
            })
            .collect();
        let factors = match combination.layout() {
            Layout::Concatenated => concatenated(&scaled, rank),
            Layout::Factors => {
                let ranks: Vec<usize> = scaled.iter().map(|(_, _, f)| f.rank()).collect();
                if ranks.iter().any(|&r| r != ranks[0]) {
                    return Err(MergeError::ModuleRanks {
                        combination: combination.name(),
                        module: module.clone(),
                        ranks: present
                            .iter()
                            .map(|(_, a, f)| format!("rank {} in {}", f.rank(), a.name()))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                factorwise(&scaled, &rule, &mut rng)
            }
            Layout::Svd => {
                let deltas: Vec<Matrix> = scaled
                    .iter()
                    .map(|(_, s, f)| f.product().scaled(*s))
                    .collect();
                let tensors: Vec<&[f64]> = deltas.iter().map(|d| d.data.as_slice()).collect();
                let weights: Vec<f64> = scaled.iter().map(|(w, _, _)| *w).collect();
                let combined = Matrix::new(
                    deltas[0].rows,
                    deltas[0].cols,
                    combine(&tensors, &weights, &rule, &mut rng),
                );
                let (a, b) = truncated_factors(&combined, rank, options.svd_clamp, module)?;
                ModuleFactors::linear(a, b)
            }
        };
        let keys = present[0].2.keys;
        modules.insert(module.clone(), ModuleFactors { keys, ..factors });
    }
    let dtype = adapters[0].dtype();
    MergedAdapter::new(
        combination,
        adapters[0].config(),
        rank,
        target_modules,
        modules,
        dtype,
    )
}

/// `cat`: the A factors times `w s` stacked, the B factors side by side, zero-padded to `rank`.
fn concatenated(scaled: &[(f64, f64, &ModuleFactors)], rank: usize) -> ModuleFactors {
    let a_parts: Vec<Matrix> = scaled.iter().map(|(w, s, f)| f.a.scaled(w * s)).collect();
    let b_parts: Vec<Matrix> = scaled.iter().map(|(_, _, f)| f.b.clone()).collect();
    let a = a_parts[0].stack_rows(&a_parts[1..]);
    let b = b_parts[0].stack_cols(&b_parts[1..]);
    ModuleFactors::linear(a.pad_rows(rank), b.pad_cols(rank))
}

/// The element-wise combinations: A with weights `sign(w s) sqrt(|w s|)`, B with `sqrt(|w s|)` (the sign on
/// one side only, so that it survives the product).
fn factorwise(
    scaled: &[(f64, f64, &ModuleFactors)],
    rule: &TaskRule,
    rng: &mut StdRng,
) -> ModuleFactors {
    let root = |ws: f64| ws.abs().sqrt();
    let a_weights: Vec<f64> = scaled
        .iter()
        .map(|(w, s, _)| {
            if w * s >= 0.0 {
                root(w * s)
            } else {
                -root(w * s)
            }
        })
        .collect();
    let b_weights: Vec<f64> = scaled.iter().map(|(w, s, _)| root(w * s)).collect();
    let first = scaled[0].2;
    let a_tensors: Vec<&[f64]> = scaled.iter().map(|(_, _, f)| f.a.data.as_slice()).collect();
    let b_tensors: Vec<&[f64]> = scaled.iter().map(|(_, _, f)| f.b.data.as_slice()).collect();
    let a = combine(&a_tensors, &a_weights, rule, rng);
    let b = combine(&b_tensors, &b_weights, rule, rng);
    ModuleFactors::linear(
        Matrix::new(first.a.rows, first.a.cols, a),
        Matrix::new(first.b.rows, first.b.cols, b),
    )
}

/// Reads the adapter folders `dirs`, merges them as `options` say and writes the merged adapter to `out`
/// (atomically: a complete folder or none). `out` may not be one of the inputs.
pub fn merge_folders(
    dirs: &[PathBuf],
    options: &MergeOptions,
    out: &Path,
) -> Result<MergedAdapter> {
    if let Some(dir) = dirs.iter().find(|d| same_folder(d, out)) {
        return Err(MergeError::OutputIsInput { out: dir.clone() });
    }
    let adapters = dirs
        .iter()
        .map(|d| SourceAdapter::read(d))
        .collect::<Result<Vec<_>>>()?;
    let merged = merge(&adapters, options)?;
    merged.save(out)?;
    Ok(merged)
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
