//! Our merges equal HF PEFT's `add_weighted_adapter` on the fixtures `scripts/reference/merge.py` writes
//! (`fixtures/merge/`): the same seeded LoRA inputs (ranks 1 to 4, rank and alpha patterns, rsLoRA, modules
//! only some adapters adapt), merged by HF PEFT into `hf/<case>/`. The factors of the element-wise and `cat`
//! combinations agree entry by entry, the SVD combinations' updates `B A` (the factors agree only up to the
//! signs the SVD routine picks), and the merged configs agree except where HF's does not reload (issue 3737:
//! ours carries the rank / alpha pattern its tensors need) and `use_rslora` (off in ours).
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-merge --test hf_parity` writes our merges to `fixtures/merge/ours/`;
//! the script's `ours` mode then loads each in HF PEFT and records in `hf_check.json` how far the deltas HF
//! computes from it are from HF's own merge, which this test checks when present.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use peft_merge::svd::clamp_to_quantile;
use peft_merge::{merge, Combination, Layout, Matrix, MergeOptions, MergedAdapter, SourceAdapter};
use peft_testing::{fixture, read_json};
use serde_json::Value;

/// The cases whose merges are also written for HF PEFT to load (`ours/<case>/`): a rank pattern HF's own merge
/// drops, TIES, cat, SVD and rsLoRA inputs.
const OURS: [&str; 5] = [
    "linear",
    "ties-frequency",
    "cat",
    "svd-rank",
    "llama-linear",
];

/// How far our factors and updates may be from HF's (f64 here, f32 there).
const TOLERANCE: f64 = 1e-4;

/// The cases of `cases.json`.
fn cases() -> Vec<Value> {
    read_json(&fixture("merge/cases.json"))
        .as_array()
        .expect("cases.json is a list")
        .clone()
}

/// The merge options of a case.
fn options(case: &Value) -> MergeOptions {
    let weights = case["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    let mut options = MergeOptions::new(
        case["combination"].as_str().unwrap().parse().unwrap(),
        weights,
    );
    options.density = case["density"].as_f64();
    if let Some(method) = case["majority_sign_method"].as_str() {
        options.majority_sign_method = method.parse().unwrap();
    }
    options.svd_rank = case["svd_rank"].as_u64().map(|r| r as usize);
    options.svd_clamp = case["svd_clamp"].as_f64();
    options
}

/// The input adapters of a case.
fn inputs(case: &Value) -> Vec<SourceAdapter> {
    case["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| {
            SourceAdapter::read(&fixture(&format!(
                "merge/inputs/{}",
                name.as_str().unwrap()
            )))
            .unwrap()
        })
        .collect()
}

/// HF's merged factors `(A, B)` by module, read as they are (HF's own config may not describe them).
fn hf_factors(dir: &Path) -> BTreeMap<String, (Matrix, Matrix)> {
    let tensors =
        candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let matrix = |t: &Tensor| Matrix::from_tensor(t).unwrap().unwrap();
    tensors
        .iter()
        .filter_map(|(key, a)| {
            let module = key
                .strip_prefix("base_model.model.")?
                .strip_suffix(".lora_A.weight")?;
            let b = &tensors[&format!("base_model.model.{module}.lora_B.weight")];
            Some((module.to_string(), (matrix(a), matrix(b))))
        })
        .collect()
}

/// The largest difference between our merge and HF's: factors entry by entry, or the updates `B A` for the SVD
/// combinations.
fn largest_difference(
    name: &str,
    ours: &MergedAdapter,
    hf: &BTreeMap<String, (Matrix, Matrix)>,
) -> f64 {
    let modules: Vec<&String> = ours.modules().keys().collect();
    assert_eq!(
        modules,
        hf.keys().collect::<Vec<_>>(),
        "{name}: the merged modules differ"
    );
    let mut largest: f64 = 0.0;
    for (module, (a, b)) in hf {
        let f = &ours.modules()[module];
        let diff = if ours.combination().layout() == Layout::Svd {
            f.product().max_abs_diff(&b.matmul(a))
        } else {
            assert_eq!(
                (f.a.shape(), f.b.shape()),
                (a.shape(), b.shape()),
                "{name}: {module}'s factors"
            );
            f.a.max_abs_diff(a).max(f.b.max_abs_diff(b))
        };
        largest = largest.max(diff);
    }
    largest
}

/// Our config against HF's: the same rank, alpha and targets; our rank / alpha pattern exactly the modules whose
/// merged rank differs from r (HF's is empty: where that leaves modules out, HF cannot reload it).
fn check_config(name: &str, ours: &MergedAdapter, hf_dir: &Path, hf_reloads: bool) {
    let hf = read_json(&hf_dir.join("adapter_config.json"));
    let config = ours.config();
    assert_eq!(config.r as u64, hf["r"].as_u64().unwrap(), "{name}: r");
    assert_eq!(
        config.lora_alpha,
        hf["lora_alpha"].as_f64().unwrap(),
        "{name}: lora_alpha"
    );
    assert_eq!(
        serde_json::to_value(&config.target_modules).unwrap(),
        hf["target_modules"],
        "{name}: target_modules"
    );
    assert!(
        hf["rank_pattern"].as_object().unwrap().is_empty(),
        "{name}: HF writes no rank_pattern"
    );
    let other_rank: BTreeMap<String, usize> = ours
        .modules()
        .iter()
        .filter(|(_, f)| f.rank() != config.r)
        .map(|(m, f)| (m.clone(), f.rank()))
        .collect();
    assert_eq!(config.rank_pattern, other_rank, "{name}: rank_pattern");
    let alphas: BTreeMap<String, f64> = other_rank
        .iter()
        .map(|(m, &r)| (m.clone(), r as f64))
        .collect();
    assert_eq!(config.alpha_pattern, alphas, "{name}: alpha_pattern");
    assert_eq!(
        hf_reloads,
        other_rank.is_empty(),
        "{name}: HF reloads its merge exactly when no module's rank differs"
    );
    assert!(
        !config.use_rslora,
        "{name}: the merged adapter means scaling 1"
    );
    for module in ours.modules().keys() {
        let f = &ours.modules()[module];
        assert!(
            ours.delta(module).unwrap().max_abs_diff(&f.product()) < 1e-12,
            "{name}: {module} reloads at scaling 1"
        );
    }
}

/// `svd_clamp` clamps at a quantile of the factors' signed entries, so it depends on the sign the SVD routine
/// gives each singular pair (faer's and LAPACK's differ). With our unclamped factors' signs aligned to HF's, our
/// clamp gives HF's factors: the largest difference, entry by entry.
fn clamped_difference(name: &str, case: &Value, hf: &BTreeMap<String, (Matrix, Matrix)>) -> f64 {
    let unclamped = merge(
        &inputs(case),
        &MergeOptions {
            svd_clamp: None,
            ..options(case)
        },
    )
    .unwrap();
    let q = case["svd_clamp"].as_f64().unwrap();
    let mut largest: f64 = 0.0;
    for (module, (hf_a, hf_b)) in hf {
        let f = &unclamped.modules()[module];
        let (mut a, mut b) = (f.a.clone(), f.b.clone());
        for j in 0..a.rows {
            let dot: f64 = (0..b.rows).map(|i| b.at(i, j) * hf_b.at(i, j)).sum();
            if dot < 0.0 {
                (0..b.rows).for_each(|i| b.data[i * b.cols + j] *= -1.0);
                (0..a.cols).for_each(|k| a.data[j * a.cols + k] *= -1.0);
            }
        }
        clamp_to_quantile(&mut a, &mut b, q);
        largest = largest.max(a.max_abs_diff(hf_a)).max(b.max_abs_diff(hf_b));
    }
    assert!(largest.is_finite(), "{name}: shapes agree");
    largest
}

#[test]
fn deterministic_combinations_equal_hf_peft() {
    let mut report = Vec::new();
    let mut checked_ours = 0;
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let ours = merge(&inputs(&case), &options(&case)).unwrap();
        let hf_dir = fixture(&format!("merge/hf/{name}"));
        let hf = hf_factors(&hf_dir);
        let diff = if case["svd_clamp"].is_number() {
            let product = largest_difference(name, &ours, &hf);
            report.push(format!("{name} (B A, our signs): {product:.2e}"));
            clamped_difference(name, &case, &hf)
        } else {
            largest_difference(name, &ours, &hf)
        };
        report.push(format!("{name}: {diff:.2e}"));
        assert!(
            diff < TOLERANCE,
            "{name}: ours differs from HF PEFT's merge by {diff}"
        );
        check_config(name, &ours, &hf_dir, case["hf_reloads"].as_bool().unwrap());

        if !OURS.contains(&name) {
            continue;
        }
        let ours_dir = fixture(&format!("merge/ours/{name}"));
        if peft_testing::writing_fixtures() {
            ours.save(&ours_dir).unwrap();
            eprintln!("wrote {}", ours_dir.display());
        } else {
            // Our folder as committed is what this code writes today, and HF PEFT loaded it with HF's deltas.
            let committed = SourceAdapter::read(&ours_dir).unwrap();
            for (module, f) in ours.modules() {
                let c = &committed.modules()[module];
                // SVD factors are compared by their product: a singular pair's sign is the routine's choice.
                let drift = if ours.combination().layout() == Layout::Svd {
                    c.product().max_abs_diff(&f.product())
                } else {
                    c.a.max_abs_diff(&f.a).max(c.b.max_abs_diff(&f.b))
                };
                assert!(
                    drift < 1e-6,
                    "{name}: the committed {module} differs by {drift}"
                );
            }
            let check = read_json(&ours_dir.join("hf_check.json"));
            assert_eq!(check["peft_loaded"], true, "{name}");
            let hf_diff = check["max_abs_diff"].as_f64().unwrap();
            assert!(
                hf_diff < TOLERANCE,
                "{name}: HF PEFT's deltas of our merge differ by {hf_diff}"
            );
            report.push(format!("{name} loaded in HF PEFT: {hf_diff:.2e}"));
            checked_ours += 1;
        }
    }
    eprintln!("largest |ours - HF| per case:\n  {}", report.join("\n  "));
    assert_eq!(cases().len(), 18, "every case of cases.json");
    if !peft_testing::writing_fixtures() {
        assert_eq!(checked_ours, OURS.len(), "every `ours` fixture was checked");
    }
}

#[test]
fn a_single_adapter_is_reweighted_linearly_whatever_the_combination() {
    let case = cases().into_iter().find(|c| c["name"] == "single").unwrap();
    assert_eq!(case["combination"], "svd");
    let ours = merge(&inputs(&case), &options(&case)).unwrap();
    assert_eq!(ours.combination(), Combination::Linear);
    // Linear on one adapter is exact: 0.6 times its update.
    let input = &inputs(&case)[0];
    for (module, f) in input.modules() {
        let expected = f.product().scaled(0.6 * input.scale(module).unwrap());
        assert!(
            ours.delta(module).unwrap().max_abs_diff(&expected) < 1e-12,
            "{module}"
        );
    }
}

#[test]
fn dare_at_density_one_is_the_combination_without_dare() {
    let case = cases().into_iter().find(|c| c["name"] == "ties").unwrap();
    let adapters = inputs(&case);
    for (dare, plain) in [
        (Combination::DareLinear, Combination::Linear),
        (Combination::DareTies, Combination::Ties),
        (Combination::DareLinearSvd, Combination::Svd),
        (Combination::DareTiesSvd, Combination::TiesSvd),
    ] {
        let options = |c| MergeOptions {
            seed: 7,
            ..MergeOptions::new(c, vec![0.6, -0.4]).with_density(1.0)
        };
        let (a, b) = (
            merge(&adapters, &options(dare)).unwrap(),
            merge(&adapters, &options(plain)).unwrap(),
        );
        for (module, f) in a.modules() {
            let g = &b.modules()[module];
            assert_eq!(
                (&f.a, &f.b),
                (&g.a, &g.b),
                "{dare} and {plain} at density 1: {module}"
            );
        }
    }
}
