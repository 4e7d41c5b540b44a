//! Combining "task tensors" entry by entry, as HF PEFT's `merge_utils` does: each adapter's tensor (a factor,
//! or a full update) is pruned, then the tensors are summed with their weights, or (TIES) each entry takes the
//! mean of the weighted entries whose sign agrees with the elected one. Tensors are flat slices in torch's
//! `flatten` order, all of one length.
//!
//! - Magnitude pruning keeps the `int(density * n)` entries of largest magnitude (HF's `torch.topk`; among
//!   entries of equal magnitude the earlier one is kept, where torch's order is unspecified).
//! - Random pruning (DARE) keeps each entry with probability `density` and divides it by `density`. HF PEFT
//!   draws the mask with `torch.bernoulli` from torch's global generator, which cannot be reproduced here: the
//!   mask comes from a seeded generator of our own, so a DARE merge is repeatable, with the same statistics as
//!   HF's but not HF's bits.
//! - A density of 1 (or more) prunes nothing, and DARE then does not rescale either.
//! - Sign election (TIES) looks at the pruned tensors before they are weighted: `total` takes the sign of their
//!   sum, `frequency` the sign most of them have; ties go to `+`. An entry pruned to zero agrees with no sign.
//!
//! ```
//! use peft_merge::task_tensors::{combine, TaskRule};
//! use peft_merge::{MajoritySignMethod, Prune};
//! use rand::SeedableRng;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let (x, y) = (vec![1.0, -2.0, 3.0, 0.5], vec![-1.0, -1.5, 1.0, 4.0]);
//! // TIES at density 0.5: x keeps -2 and 3, y keeps -1.5 and 4; where both agree (entry 1), their mean.
//! let rule = TaskRule { prune: Prune::Magnitude, density: 0.5, sign: Some(MajoritySignMethod::Total) };
//! let merged = combine(&[&x, &y], &[1.0, 1.0], &rule, &mut rng);
//! assert_eq!(merged, vec![0.0, -1.75, 3.0, 4.0]);
//! ```

use rand::Rng;

use crate::combination::{MajoritySignMethod, Prune};

/// How the tensors are combined: the pruning and its density, and the sign election (TIES) if any.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskRule {
    /// The pruning applied to each tensor first.
    pub prune: Prune,
    /// The fraction of entries kept (ignored by [`Prune::None`]).
    pub density: f64,
    /// TIES' sign election, or `None` for a weighted sum.
    pub sign: Option<MajoritySignMethod>,
}

impl TaskRule {
    /// The plain weighted sum (task arithmetic).
    pub const SUM: TaskRule = TaskRule {
        prune: Prune::None,
        density: 1.0,
        sign: None,
    };
}

/// torch's `sign`: 1, -1, or 0 for zero.
fn sign(v: f64) -> f64 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// HF's `magnitude_based_pruning`: the `int(density * n)` entries of largest magnitude kept, the rest zero.
/// A density of 1 or more keeps everything.
pub fn magnitude_prune(tensor: &[f64], density: f64) -> Vec<f64> {
    if density >= 1.0 {
        return tensor.to_vec();
    }
    // Python's int() of the product, in double precision as HF computes it.
    let keep = (density * tensor.len() as f64) as usize;
    let mut order: Vec<usize> = (0..tensor.len()).collect();
    // Stable: of equal magnitudes, the earlier entry ranks first.
    order.sort_by(|&i, &j| tensor[j].abs().total_cmp(&tensor[i].abs()));
    let mut out = vec![0.0; tensor.len()];
    for &i in &order[..keep] {
        out[i] = tensor[i];
    }
    out
}

/// HF's `random_pruning` with rescaling (DARE): each entry kept with probability `density` and divided by
/// it, the rest zero. A density of 1 or more keeps everything unscaled. The mask comes from `rng`.
pub fn random_prune(tensor: &[f64], density: f64, rng: &mut impl Rng) -> Vec<f64> {
    if density >= 1.0 {
        return tensor.to_vec();
    }
    tensor
        .iter()
        .map(|&v| {
            if rng.random::<f64>() < density {
                v / density
            } else {
                0.0
            }
        })
        .collect()
}

/// HF's `calculate_majority_sign_mask`, the elected sign of each entry (1 or -1) over the `tensors`.
pub fn majority_sign(tensors: &[Vec<f64>], method: MajoritySignMethod) -> Vec<f64> {
    let n = tensors.first().map_or(0, Vec::len);
    (0..n)
        .map(|j| {
            let score: f64 = match method {
                MajoritySignMethod::Total => tensors.iter().map(|t| t[j]).sum(),
                MajoritySignMethod::Frequency => tensors.iter().map(|t| sign(t[j])).sum(),
            };
            if score >= 0.0 {
                1.0
            } else {
                -1.0
            }
        })
        .collect()
}

/// HF's `disjoint_merge`: per entry, the sum of the `weighted` entries whose tensor's sign in `pruned` agrees
/// with `elected`, divided by how many agree (at least 1).
pub fn disjoint_merge(weighted: &[Vec<f64>], pruned: &[Vec<f64>], elected: &[f64]) -> Vec<f64> {
    elected
        .iter()
        .enumerate()
        .map(|(j, &s)| {
            let agreeing: Vec<usize> = (0..pruned.len())
                .filter(|&i| sign(pruned[i][j]) == s)
                .collect();
            let sum: f64 = agreeing.iter().map(|&i| weighted[i][j]).sum();
            sum / (agreeing.len().max(1) as f64)
        })
        .collect()
}

/// The `tensors` combined with their `weights` under `rule` (HF's `task_arithmetic`, `magnitude_prune`,
/// `ties`, `dare_linear`, `dare_ties`); `rng` draws DARE's masks, tensor after tensor.
pub fn combine(
    tensors: &[&[f64]],
    weights: &[f64],
    rule: &TaskRule,
    rng: &mut impl Rng,
) -> Vec<f64> {
    assert_eq!(tensors.len(), weights.len(), "one weight per tensor");
    let pruned: Vec<Vec<f64>> = tensors
        .iter()
        .map(|t| match rule.prune {
            Prune::None => t.to_vec(),
            Prune::Magnitude => magnitude_prune(t, rule.density),
            Prune::Random => random_prune(t, rule.density, rng),
        })
        .collect();
    let weighted: Vec<Vec<f64>> = pruned
        .iter()
        .zip(weights)
        .map(|(t, w)| t.iter().map(|v| v * w).collect())
        .collect();
    match rule.sign {
        Some(method) => {
            let elected = majority_sign(&pruned, method);
            disjoint_merge(&weighted, &pruned, &elected)
        }
        None => {
            let n = tensors.first().map_or(0, |t| t.len());
            (0..n)
                .map(|j| weighted.iter().map(|t| t[j]).sum())
                .collect()
        }
    }
}
