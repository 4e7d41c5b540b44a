//! What merging refuses, each with a message that names what was wrong and what to do; a refused merge
//! writes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use peft_lora::{LayerSelection, LoraConfig, TargetModules};
use peft_merge::{
    merge, merge_folders, Combination, Matrix, MergeError, MergeOptions, ModuleFactors,
    SourceAdapter,
};
use peft_testing::fixture;

fn input(name: &str) -> PathBuf {
    fixture(&format!("merge/inputs/{name}"))
}

/// The error of merging the folders `dirs` with `options` into a fresh folder, which must not appear.
fn folder_error(dirs: &[PathBuf], options: &MergeOptions) -> String {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("merged");
    let err = merge_folders(dirs, options, &target)
        .unwrap_err()
        .to_string();
    assert!(
        !target.exists(),
        "nothing written for a refused merge ({err})"
    );
    err
}

fn assert_mentions(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "the error does not mention {n:?}: {err}");
    }
}

/// An in-memory adapter of `config` with zero factors of the given `(module, rank, out, in)`.
fn adapter(
    name: &str,
    config: LoraConfig,
    modules: &[(&str, usize, usize, usize)],
) -> SourceAdapter {
    let modules: BTreeMap<String, ModuleFactors> = modules
        .iter()
        .map(|&(m, r, out, inp)| {
            (
                m.to_string(),
                ModuleFactors::linear(Matrix::zeros(r, inp), Matrix::zeros(out, r)),
            )
        })
        .collect();
    SourceAdapter::new(name, config, modules).unwrap()
}

fn err(adapters: &[SourceAdapter], options: &MergeOptions) -> String {
    merge(adapters, options).unwrap_err().to_string()
}

#[test]
fn the_element_wise_combinations_refuse_different_ranks() {
    for combination in [
        "linear",
        "ties",
        "dare_linear",
        "dare_ties",
        "magnitude_prune",
    ] {
        let options =
            MergeOptions::new(combination.parse().unwrap(), vec![0.5, 0.5]).with_density(0.5);
        let e = folder_error(&[input("gpt2-a"), input("gpt2-c")], &options);
        assert_mentions(
            &e,
            &[
                combination,
                "gpt2-a: 2",
                "gpt2-c: 3",
                "use cat or an SVD combination",
            ],
        );
    }
    // cat and svd take them.
    let out = tempfile::tempdir().unwrap();
    let options = MergeOptions::new(Combination::Cat, vec![0.5, 0.5]);
    let merged = merge_folders(
        &[input("gpt2-a"), input("gpt2-c")],
        &options,
        &out.path().join("m"),
    )
    .unwrap();
    assert_eq!(merged.rank(), 5);
}

#[test]
fn one_module_of_different_ranks_is_refused_where_hf_fails_inside_torch() {
    let v1 = LoraConfig {
        rank_pattern: [("v_proj".to_string(), 1)].into(),
        ..LoraConfig::new(2, ["v_proj"])
    };
    let a = adapter("a", v1, &[("l.v_proj", 1, 4, 4)]);
    let b = adapter(
        "b",
        LoraConfig::new(2, ["v_proj"]),
        &[("l.v_proj", 2, 4, 4)],
    );
    let e = err(
        &[a, b],
        &MergeOptions::new(Combination::Linear, vec![1.0, 1.0]),
    );
    assert_mentions(
        &e,
        &[
            "`l.v_proj`",
            "rank 1 in a",
            "rank 2 in b",
            "same rank_pattern",
        ],
    );
}

#[test]
fn unknown_combinations_and_sign_methods_list_the_known_ones() {
    let e = "sum".parse::<Combination>().unwrap_err().to_string();
    assert_mentions(
        &e,
        &["\"sum\"", "linear", "dare_ties_svd", "magnitude_prune_svd"],
    );
    let e = "most"
        .parse::<peft_merge::MajoritySignMethod>()
        .unwrap_err()
        .to_string();
    assert_mentions(&e, &["\"most\"", "\"total\" or \"frequency\""]);
}

#[test]
fn pruning_combinations_need_a_density_in_zero_one() {
    let dirs = [input("gpt2-a"), input("gpt2-b")];
    for density in [None, Some(0.0), Some(-0.5), Some(1.5), Some(f64::NAN)] {
        let options = MergeOptions {
            density,
            ..MergeOptions::new(Combination::Ties, vec![0.5, 0.5])
        };
        let e = folder_error(&dirs, &options);
        assert_mentions(&e, &["ties needs a density in (0, 1]"]);
    }
}

#[test]
fn weights_must_be_one_finite_number_per_adapter() {
    let dirs = [input("gpt2-a"), input("gpt2-b")];
    let e = folder_error(&dirs, &MergeOptions::new(Combination::Linear, vec![1.0]));
    assert_mentions(
        &e,
        &["1 weight(s) for 2 adapter(s)", "one weight per adapter"],
    );
    let e = folder_error(
        &dirs,
        &MergeOptions::new(Combination::Linear, vec![1.0, f64::INFINITY]),
    );
    assert_mentions(&e, &["weight 1 is inf", "finite"]);
    assert!(matches!(
        merge(&[], &MergeOptions::new(Combination::Svd, vec![])),
        Err(MergeError::NoAdapters)
    ));
}

#[test]
fn other_methods_dora_and_trained_biases_are_refused() {
    let lora = input("gpt2-a");
    let e = folder_error(
        &[lora.clone(), fixture("adapters/hf-tiny-gpt2-ia3")],
        &MergeOptions::new(Combination::Svd, vec![1.0, 1.0]),
    );
    assert_mentions(
        &e,
        &["hf-tiny-gpt2-ia3", "peft_type \"IA3\"", "LoRA adapters"],
    );
    let e = folder_error(
        &[lora.clone(), fixture("adapters/hf-tiny-gpt2-dora")],
        &MergeOptions::new(Combination::Svd, vec![1.0, 1.0]),
    );
    assert_mentions(&e, &["hf-tiny-gpt2-dora", "DoRA", "magnitude"]);
    let e = folder_error(
        &[lora, fixture("adapters/hf-tiny-gpt2-lora")],
        &MergeOptions::new(Combination::Svd, vec![1.0, 1.0]),
    );
    assert_mentions(
        &e,
        &[
            "hf-tiny-gpt2-lora",
            "bias = \"lora_only\"",
            "bias = \"none\"",
        ],
    );
}

#[test]
fn adapters_of_different_base_models_or_module_shapes_are_refused() {
    let e = folder_error(
        &[input("gpt2-a"), input("llama-a")],
        &MergeOptions::new(Combination::Cat, vec![1.0, 1.0]),
    );
    assert_mentions(
        &e,
        &["different base models", "`tiny-gpt2`", "`tiny-llama`"],
    );
    // Same (unnamed) base, but one module of two sizes.
    let a = adapter(
        "a",
        LoraConfig::new(2, ["q_proj"]),
        &[("l.q_proj", 2, 8, 4)],
    );
    let b = adapter(
        "b",
        LoraConfig::new(2, ["q_proj"]),
        &[("l.q_proj", 2, 8, 6)],
    );
    let e = err(
        &[a, b],
        &MergeOptions::new(Combination::Svd, vec![1.0, 1.0]),
    );
    assert_mentions(
        &e,
        &[
            "`l.q_proj`",
            "lora_A (its input size)",
            "[2, 4] in adapter a",
            "[2, 6] in adapter b",
        ],
    );
}

#[test]
fn selections_that_hf_would_merge_wrongly_are_refused() {
    let layer0 = LoraConfig {
        layers_to_transform: Some(LayerSelection::Many(vec![0])),
        ..LoraConfig::new(2, ["q_proj"])
    };
    let a = adapter("a", layer0, &[("layers.0.q_proj", 2, 4, 4)]);
    let b = adapter(
        "b",
        LoraConfig::new(2, ["q_proj"]),
        &[("layers.0.q_proj", 2, 4, 4), ("layers.1.q_proj", 2, 4, 4)],
    );
    let e = err(
        &[a.clone(), b],
        &MergeOptions::new(Combination::Cat, vec![1.0, 1.0]),
    );
    assert_mentions(
        &e,
        &[
            "layers_to_transform",
            "[0]",
            "null",
            "merge adapters that agree",
        ],
    );
    // A list of names beside a regular expression: HF PEFT refuses the mix.
    let pattern = LoraConfig {
        target_modules: Some(TargetModules::Pattern(".*q_proj".into())),
        ..LoraConfig::new(2, ["x"])
    };
    let c = adapter("c", pattern, &[("layers.0.q_proj", 2, 4, 4)]);
    let plain = adapter(
        "a2",
        LoraConfig::new(2, ["q_proj"]),
        &[("layers.0.q_proj", 2, 4, 4)],
    );
    let e = err(
        &[plain, c],
        &MergeOptions::new(Combination::Cat, vec![1.0, 1.0]),
    );
    assert_mentions(
        &e,
        &[
            "the form of target_modules",
            "a list of names",
            "a regular expression",
        ],
    );
}

#[test]
fn svd_settings_out_of_range_are_refused() {
    let dirs = [input("gpt2-a"), input("gpt2-c")];
    let e = folder_error(
        &dirs,
        &MergeOptions {
            svd_rank: Some(0),
            ..MergeOptions::new(Combination::Svd, vec![1.0, 1.0])
        },
    );
    assert_mentions(&e, &["svd_rank = 0", "at least 1"]);
    let e = folder_error(
        &dirs,
        &MergeOptions {
            svd_clamp: Some(1.5),
            ..MergeOptions::new(Combination::Svd, vec![1.0, 1.0])
        },
    );
    assert_mentions(&e, &["svd_clamp = 1.5", "[0, 1]"]);
}

#[test]
fn an_adapter_whose_config_disagrees_with_its_tensors_is_refused() {
    // HF PEFT's own `linear` merge of rank-pattern adapters (issue 3737): r = 2, attn.c_proj of rank 1.
    let e = folder_error(
        &[fixture("merge/hf/linear"), input("gpt2-a")],
        &MergeOptions::new(Combination::Cat, vec![1.0, 1.0]),
    );
    assert_mentions(
        &e,
        &[
            "merge/hf/linear",
            "attn.c_proj` holds factors of rank 1",
            "rank 2",
            "rank_pattern",
        ],
    );
}

#[test]
fn the_output_may_not_be_an_input_and_missing_folders_are_named() {
    let e = merge_folders(
        &[input("gpt2-a"), input("gpt2-b")],
        &MergeOptions::new(Combination::Cat, vec![1.0, 1.0]),
        &input("gpt2-b"),
    )
    .unwrap_err()
    .to_string();
    assert_mentions(&e, &["gpt2-b", "new folder"]);
    assert!(
        input("gpt2-b").join("adapter_model.safetensors").is_file(),
        "the input is untouched"
    );
    let e = folder_error(
        &[input("gpt2-a"), input("no-such-adapter")],
        &MergeOptions::new(Combination::Cat, vec![1.0, 1.0]),
    );
    assert_mentions(&e, &["no-such-adapter", "no such adapter folder"]);
}
