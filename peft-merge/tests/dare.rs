//! DARE's random pruning, whose masks HF PEFT draws with `torch.bernoulli` and which cannot be reproduced bit
//! for bit: its statistics instead, with fixed seeds. A fraction `density` of the entries is kept (within a few
//! standard deviations), each kept entry divided by `density`, the same seed gives the same merge and another
//! seed another mask, and on average DARE is the combination without it.

use std::collections::BTreeMap;

use peft_lora::LoraConfig;
use peft_merge::task_tensors::random_prune;
use peft_merge::{merge, Combination, Matrix, MergeOptions, ModuleFactors, SourceAdapter};
use rand::{Rng, SeedableRng};

const MODULE: &str = "model.layers.0.self_attn.q_proj";

/// A rank-`r` adapter on one `[out, in]` module with seeded non-zero factors, scaling 2.
fn adapter(name: &str, seed: u64, r: usize, out: usize, inp: usize) -> SourceAdapter {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut draw = |n: usize| {
        (0..n)
            .map(|_| rng.random_range(0.1..1.0) * if rng.random() { 1.0 } else { -1.0 })
            .collect()
    };
    let factors = ModuleFactors::linear(
        Matrix::new(r, inp, draw(r * inp)),
        Matrix::new(out, r, draw(out * r)),
    );
    let config = LoraConfig {
        lora_alpha: 2.0 * r as f64,
        ..LoraConfig::new(r, ["q_proj"])
    };
    SourceAdapter::new(
        name,
        config,
        BTreeMap::from([(MODULE.to_string(), factors)]),
    )
    .unwrap()
}

/// Asserts that `fraction` of `n` draws is within 5 standard deviations of `p`.
fn assert_near(fraction: f64, p: f64, n: usize, what: &str) {
    let sd = (p * (1.0 - p) / n as f64).sqrt();
    assert!(
        (fraction - p).abs() < 5.0 * sd,
        "{what}: {fraction} kept, expected {p} +- {}",
        5.0 * sd
    );
}

#[test]
fn random_pruning_keeps_a_density_fraction_rescaled_by_one_over_density() {
    let tensor: Vec<f64> = (0..20_000).map(|i| 1.0 + (i % 7) as f64).collect();
    for density in [0.1, 0.3, 0.5, 0.9] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let pruned = random_prune(&tensor, density, &mut rng);
        let kept: Vec<(f64, f64)> = tensor
            .iter()
            .zip(&pruned)
            .filter(|(_, p)| **p != 0.0)
            .map(|(t, p)| (*t, *p))
            .collect();
        assert_near(
            kept.len() as f64 / tensor.len() as f64,
            density,
            tensor.len(),
            "random_prune",
        );
        assert!(
            kept.iter().all(|(t, p)| *p == t / density),
            "kept entries are divided by the density"
        );
    }
    // Density 1 keeps everything, unscaled (HF's prune returns the tensor as it is).
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    assert_eq!(random_prune(&tensor, 1.0, &mut rng), tensor);
}

#[test]
fn dare_linear_keeps_a_density_fraction_of_each_factor_and_rescales_it() {
    let (x, y) = (adapter("x", 1, 4, 64, 48), adapter("y", 2, 4, 64, 48));
    let density = 0.3;
    let options = MergeOptions {
        seed: 5,
        ..MergeOptions::new(Combination::DareLinear, vec![1.0, 0.0]).with_density(density)
    };
    let merged = merge(&[x.clone(), y], &options).unwrap();
    let f = &merged.modules()[MODULE];
    let g = &x.modules()[MODULE];
    // Weight 1 and scaling 2: each side carries sqrt(2); y's weight 0 adds nothing.
    let root = 2f64.sqrt();
    for (name, ours, input) in [("lora_A", &f.a, &g.a), ("lora_B", &f.b, &g.b)] {
        let kept: Vec<usize> = (0..ours.data.len())
            .filter(|&i| ours.data[i] != 0.0)
            .collect();
        assert_near(
            kept.len() as f64 / ours.data.len() as f64,
            density,
            ours.data.len(),
            name,
        );
        for i in kept {
            let expected = root * input.data[i] / density;
            assert!(
                (ours.data[i] - expected).abs() < 1e-12,
                "{name}[{i}]: {} vs {expected}",
                ours.data[i]
            );
        }
    }
}

#[test]
fn dare_ties_keeps_an_entry_that_either_adapter_kept() {
    // Two copies of one adapter: their signs always agree, so an entry is non-zero where either copy kept it
    // (probability 1 - (1 - d)^2) and then equals sqrt(w s) x / d whether one or both kept it.
    let x = adapter("x", 3, 4, 64, 48);
    let density = 0.4;
    let options = MergeOptions {
        seed: 9,
        ..MergeOptions::new(Combination::DareTies, vec![0.5, 0.5]).with_density(density)
    };
    let merged = merge(&[x.clone(), x.clone()], &options).unwrap();
    let (f, g) = (&merged.modules()[MODULE], &x.modules()[MODULE]);
    let root = (0.5f64 * 2.0).sqrt();
    for (name, ours, input) in [("lora_A", &f.a, &g.a), ("lora_B", &f.b, &g.b)] {
        let kept: Vec<usize> = (0..ours.data.len())
            .filter(|&i| ours.data[i] != 0.0)
            .collect();
        let p = 1.0 - (1.0 - density) * (1.0 - density);
        assert_near(
            kept.len() as f64 / ours.data.len() as f64,
            p,
            ours.data.len(),
            name,
        );
        assert!(
            kept.iter()
                .all(|&i| (ours.data[i] - root * input.data[i] / density).abs() < 1e-12),
            "{name}"
        );
    }
}

#[test]
fn a_seed_repeats_its_merge_and_another_seed_draws_another_mask() {
    let (x, y) = (adapter("x", 1, 4, 32, 32), adapter("y", 2, 4, 32, 32));
    for combination in [
        Combination::DareLinear,
        Combination::DareTies,
        Combination::DareLinearSvd,
        Combination::DareTiesSvd,
    ] {
        let with_seed = |seed| {
            let options = MergeOptions {
                seed,
                ..MergeOptions::new(combination, vec![0.5, 0.5]).with_density(0.5)
            };
            merge(&[x.clone(), y.clone()], &options)
                .unwrap()
                .delta(MODULE)
                .unwrap()
        };
        assert_eq!(
            with_seed(1),
            with_seed(1),
            "{combination}: one seed, one merge"
        );
        assert!(
            with_seed(1).max_abs_diff(&with_seed(2)) > 1e-3,
            "{combination}: another seed, another mask"
        );
    }
}

#[test]
fn on_average_dare_linear_svd_is_the_svd_merge() {
    // DARE rescales what it keeps so that its expectation is the unpruned tensor: the mean over seeds of the
    // combined updates approaches the plain weighted sum (which `svd` at full rank reproduces exactly).
    let (x, y) = (adapter("x", 1, 2, 8, 6), adapter("y", 2, 2, 8, 6));
    let options = |c, seed| MergeOptions {
        seed,
        svd_rank: Some(6),
        ..MergeOptions::new(c, vec![0.7, 0.3]).with_density(0.5)
    };
    let exact = merge(&[x.clone(), y.clone()], &options(Combination::Svd, 0))
        .unwrap()
        .delta(MODULE)
        .unwrap();
    let runs = 400;
    let mut mean = Matrix::zeros(exact.rows, exact.cols);
    for seed in 0..runs {
        let d = merge(
            &[x.clone(), y.clone()],
            &options(Combination::DareLinearSvd, seed),
        )
        .unwrap()
        .delta(MODULE)
        .unwrap();
        mean.data
            .iter_mut()
            .zip(&d.data)
            .for_each(|(m, v)| *m += v / runs as f64);
    }
    let scale = exact.data.iter().map(|v| v.abs()).fold(0.0, f64::max);
    let off = mean.max_abs_diff(&exact) / scale;
    assert!(
        off < 0.1,
        "the mean of {runs} DARE merges is {off} (relative) from the exact sum"
    );
    // One DARE merge alone is far from it: the average is what makes it close.
    let single = merge(&[x, y], &options(Combination::DareLinearSvd, 0))
        .unwrap()
        .delta(MODULE)
        .unwrap();
    assert!(
        single.max_abs_diff(&exact) / scale > 2.0 * off,
        "a single merge is further off than the mean"
    );
}
