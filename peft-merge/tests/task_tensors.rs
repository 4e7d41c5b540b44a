//! TIES' trim, sign election and disjoint mean, and magnitude pruning, on hand-made tensors whose answers are
//! worked out by hand (in the comments), as HF PEFT's `merge_utils` computes them.

use peft_merge::task_tensors::{combine, disjoint_merge, magnitude_prune, majority_sign, TaskRule};
use peft_merge::{MajoritySignMethod, Prune};
use rand::SeedableRng;

fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(0)
}

#[test]
fn magnitude_pruning_keeps_the_int_of_density_times_n_largest_entries() {
    let t = [0.3, -4.0, 1.0, -0.2, 2.5, 0.0];
    // int(0.5 * 6) = 3: -4, 2.5, 1.
    assert_eq!(
        magnitude_prune(&t, 0.5),
        vec![0.0, -4.0, 1.0, 0.0, 2.5, 0.0]
    );
    // int(0.6 * 6) = int(3.5999999999999996) = 3, not 4: Python's int truncates the double product.
    assert_eq!(magnitude_prune(&t, 0.6), magnitude_prune(&t, 0.5));
    // int(0.1 * 6) = 0: nothing kept.
    assert_eq!(magnitude_prune(&t, 0.1), vec![0.0; 6]);
    // Density 1 keeps everything.
    assert_eq!(magnitude_prune(&t, 1.0), t.to_vec());
}

#[test]
fn the_elected_sign_is_that_of_the_sum_or_of_the_majority() {
    let x = vec![2.0, -1.0, 0.0, 1.0];
    let y = vec![-3.0, -1.0, 0.0, 1.0];
    let z = vec![-0.5, 5.0, 0.0, -4.0];
    // total: sums -1.5, 3, 0, -2 -> -, +, + (ties to +), -.
    assert_eq!(
        majority_sign(
            &[x.clone(), y.clone(), z.clone()],
            MajoritySignMethod::Total
        ),
        vec![-1.0, 1.0, 1.0, -1.0]
    );
    // frequency: sign counts -1, -1, 0, +1 -> -, -, +, +.
    assert_eq!(
        majority_sign(&[x, y, z], MajoritySignMethod::Frequency),
        vec![-1.0, -1.0, 1.0, 1.0]
    );
}

#[test]
fn the_disjoint_mean_averages_the_weighted_entries_that_agree_with_the_elected_sign() {
    let pruned = vec![vec![2.0, -1.0, 0.0], vec![-3.0, -1.0, 0.0]];
    let weighted = vec![vec![1.0, -0.5, 0.0], vec![-6.0, -2.0, 0.0]];
    // Entry 0 elected -: only the second agrees -> -6. Entry 1 elected -: both -> (-0.5 - 2) / 2. Entry 2: none
    // agrees (zeros have no sign) -> 0 / max(0, 1) = 0.
    let merged = disjoint_merge(&weighted, &pruned, &[-1.0, -1.0, 1.0]);
    assert_eq!(merged, vec![-6.0, -1.25, 0.0]);
}

#[test]
fn ties_trims_elects_on_the_unweighted_tensors_then_averages_the_weighted_ones() {
    let x = [4.0, -1.0, 0.5, -3.0];
    let y = [-2.0, 2.0, -0.1, -1.0];
    let rule = TaskRule {
        prune: Prune::Magnitude,
        density: 0.5,
        sign: Some(MajoritySignMethod::Total),
    };
    // Trim (int(0.5 * 4) = 2): x -> [4, 0, 0, -3], y -> [-2, 2, 0, 0].
    // Elect on the trimmed, unweighted sums [2, 2, 0, -3] -> [+, +, +, -].
    // Weights 1 and 3: x -> [4, 0, 0, -3], y -> [-6, 6, 0, 0].
    // Agreeing: entry 0 x only -> 4; entry 1 y only -> 6; entry 2 none -> 0; entry 3 x only -> -3.
    let merged = combine(&[&x, &y], &[1.0, 3.0], &rule, &mut rng());
    assert_eq!(merged, vec![4.0, 6.0, 0.0, -3.0]);
    // The weighted sum would have elected - for entry 0 (4 - 6): TIES elects before weighting.
    // With frequency, entry 0 ties (one +, one -) and goes to +; entry 1 has one + -> +.
    let frequency = TaskRule {
        sign: Some(MajoritySignMethod::Frequency),
        ..rule
    };
    assert_eq!(
        combine(&[&x, &y], &[1.0, 3.0], &frequency, &mut rng()),
        vec![4.0, 6.0, 0.0, -3.0]
    );
}

#[test]
fn magnitude_prune_combination_sums_the_trimmed_weighted_tensors() {
    let x = [4.0, -1.0, 0.5, -3.0];
    let y = [-2.0, 2.0, -0.1, -1.0];
    let rule = TaskRule {
        prune: Prune::Magnitude,
        density: 0.5,
        sign: None,
    };
    // [4, 0, 0, -3] * 0.5 + [-2, 2, 0, 0] * -1 = [4, -2, 0, -1.5].
    assert_eq!(
        combine(&[&x, &y], &[0.5, -1.0], &rule, &mut rng()),
        vec![4.0, -2.0, 0.0, -1.5]
    );
    // No pruning: task arithmetic.
    assert_eq!(
        combine(&[&x, &y], &[0.5, -1.0], &TaskRule::SUM, &mut rng()),
        vec![4.0, -2.5, 0.35, -0.5]
    );
}
