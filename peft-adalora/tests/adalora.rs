//! AdaLoRA's own rules on hand-made cases: the allocator's scores, threshold and masking after each step, the
//! regulariser's value, save -> load with a rank pattern, and the configs and files HF PEFT (or this crate)
//! refuses, each error naming what to change.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use peft_adalora::{factor_key, pattern_key, AdaLora, AdaLoraConfig, RankPattern};
use peft_core::adapter_io::{load_adapter, save_adapter, CONFIG_FILE, WEIGHTS_FILE};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_testing::{init, logits, max_diff};

const MODULES: [&str; 2] = ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"];

/// On the tiny GPT-2 (c_attn 32 -> 96 in each of 2 layers): init_r 2, target_r 1, total_step 3, no warm-up,
/// final phase from step 2, betas 0.5.
fn small_config() -> AdaLoraConfig {
    AdaLoraConfig {
        target_r: 1,
        tfinal: 1,
        beta1: 0.5,
        beta2: 0.5,
        ..AdaLoraConfig::new(2, 1, 3, ["c_attn"])
    }
}

fn build(model: &dyn peft_core::model::BaseModel, config: &AdaLoraConfig) -> AdaLora {
    config.build_adalora(&mut init(model, 0)).unwrap()
}

/// Sets every module's A and B to ones and E to `e`.
fn set_factors(adapter: &AdaLora, e: f32) {
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    for m in MODULES {
        t.insert(
            factor_key(m, "A"),
            Tensor::ones((2, 32), DType::F32, &dev).unwrap(),
        );
        t.insert(
            factor_key(m, "B"),
            Tensor::ones((96, 2), DType::F32, &dev).unwrap(),
        );
        t.insert(factor_key(m, "E"), Tensor::full(e, (2, 1), &dev).unwrap());
    }
    adapter.load_tensors(&t).unwrap();
}

/// Gradients in `trainable()` order: zero for A and B, `[g0, g1]` for the E of each module.
fn grads(e_grads: [[f32; 2]; 2]) -> Vec<Tensor> {
    let dev = Device::Cpu;
    let mut out = Vec::new();
    for g in e_grads {
        out.push(Tensor::zeros((2, 32), DType::F32, &dev).unwrap());
        out.push(Tensor::zeros((96, 2), DType::F32, &dev).unwrap());
        out.push(Tensor::from_vec(g.to_vec(), (2, 1), &dev).unwrap());
    }
    out
}

fn e_of(adapter: &AdaLora, i: usize) -> Vec<f32> {
    adapter.layers()[i]
        .e()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn the_allocator_masks_the_lowest_triplets_to_the_budget_by_hand() {
    let model = peft_models::tiny::gpt2(0);
    let adapter = build(&model, &small_config());
    let schedule = adapter.schedule().unwrap();
    assert_eq!((schedule.init_budget, schedule.target_budget), (4, 2));
    // Step 1 of 3: budget int((4 - 2) * (1 - 1/2)^3 + 2) = int(2.25) = 2, so k = 4 - 2 = 2 triplets go.
    assert_eq!(schedule.budget(1), (2, true));
    set_factors(&adapter, 1.0);
    // With p = 1, sensitivity |p g| = |g|; averages 0.5 |g| and 0.5 * |g - 0.5 |g|| = 0.25 |g|: the score of
    // E_i is 0.125 g_i^2 (A and B add 0). Scores 0.125, 2 | 0.5, 1.125: the 2nd smallest, 0.5, is the
    // threshold, and triplets at or below it go.
    adapter
        .after_optimizer_step(1, &grads([[1.0, 4.0], [2.0, 3.0]]))
        .unwrap();
    let pattern = adapter.rank_pattern().unwrap();
    let expected: RankPattern = MODULES
        .iter()
        .map(|m| (pattern_key(m), vec![false, true]))
        .collect();
    assert_eq!(pattern, expected);
    assert_eq!(
        (e_of(&adapter, 0), e_of(&adapter, 1)),
        (vec![0.0, 1.0], vec![0.0, 1.0])
    );
    let state = adapter.step_state().unwrap();
    let sensitivity = state
        .iter()
        .find(|(k, _)| k.ends_with("h.0.attn.c_attn.lora_E.exp_avg_ipt"))
        .unwrap();
    assert_eq!(
        sensitivity
            .1
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        [0.5, 2.0]
    );

    // Step 2 = total_step - tfinal: the final allocation with the same averages (no update), then they go.
    set_factors(&adapter, 1.0);
    adapter
        .after_optimizer_step(2, &grads([[9.0, 0.0], [9.0, 0.0]]))
        .unwrap();
    assert_eq!(adapter.rank_pattern().unwrap(), expected);
    let state = adapter.step_state().unwrap();
    assert_eq!(
        state.len(),
        2,
        "only the pattern's flags remain: {:?}",
        state.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );

    // Step 3, the final phase: the optimiser moved E; the pattern zeroes its masked entries again.
    set_factors(&adapter, 5.0);
    adapter
        .after_optimizer_step(3, &grads([[1.0, 1.0], [1.0, 1.0]]))
        .unwrap();
    assert_eq!(
        (e_of(&adapter, 0), e_of(&adapter, 1)),
        (vec![0.0, 5.0], vec![0.0, 5.0])
    );
}

#[test]
fn a_warm_up_step_updates_averages_without_masking() {
    let model = peft_models::tiny::gpt2(0);
    let config = AdaLoraConfig {
        tinit: 1,
        total_step: Some(4),
        ..small_config()
    };
    let adapter = build(&model, &config);
    set_factors(&adapter, 1.0);
    adapter
        .after_optimizer_step(1, &grads([[1.0, 4.0], [2.0, 3.0]]))
        .unwrap();
    assert!(adapter.rank_pattern().is_none());
    assert_eq!(e_of(&adapter, 0), [1.0, 1.0]);
    assert_eq!(
        adapter.step_state().unwrap().len(),
        2 * 3 * 2,
        "two averages per factor"
    );
}

#[test]
fn the_regulariser_is_the_weighted_mean_of_the_frobenius_distances() {
    let model = peft_models::tiny::gpt2(0);
    let adapter = build(&model, &small_config());
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    for m in MODULES {
        // A's rows orthonormal (A A^T = I: 0); B zero (||0 - I||_F = sqrt 2).
        t.insert(
            factor_key(m, "A"),
            Tensor::eye(32, DType::F32, &dev)
                .unwrap()
                .narrow(0, 0, 2)
                .unwrap(),
        );
        t.insert(
            factor_key(m, "B"),
            Tensor::zeros((96, 2), DType::F32, &dev).unwrap(),
        );
        t.insert(
            factor_key(m, "E"),
            Tensor::zeros((2, 1), DType::F32, &dev).unwrap(),
        );
    }
    adapter.load_tensors(&t).unwrap();
    let term: f32 = adapter
        .training_loss_term()
        .unwrap()
        .unwrap()
        .to_scalar()
        .unwrap();
    // 0.5 * (0 + sqrt 2 + 0 + sqrt 2) / 4.
    assert!((term - 0.5 * 2f32.sqrt() / 2.0).abs() < 1e-6, "{term}");
    let off = AdaLoraConfig {
        orth_reg_weight: 0.0,
        ..small_config()
    };
    assert!(build(&model, &off).training_loss_term().unwrap().is_none());
}

#[test]
fn the_trainable_count_is_hf_peft_s() {
    let model = peft_models::tiny::gpt2(0);
    // HF PEFT: lora_A [r, in], lora_B [out, r], lora_E [r, 1] per module; ranknum is not trainable.
    let config = AdaLoraConfig {
        target_r: 3,
        ..AdaLoraConfig::new(6, 3, 5, ["c_attn"])
    };
    let adapter = build(&model, &config);
    assert_eq!(adapter.num_trainable(), 2 * 6 * (32 + 96 + 1));
    assert_eq!(
        adapter.num_trainable(),
        1548,
        "hf-tiny-gpt2-adalora's training count"
    );
}

#[test]
fn save_then_load_keeps_the_pattern_the_cut_factors_and_the_logits() {
    peft_adalora::register();
    let model = peft_models::tiny::gpt2(0);
    let adapter = build(&model, &small_config());
    set_factors(&adapter, 0.5);
    adapter
        .after_optimizer_step(1, &grads([[1.0, 4.0], [3.0, 2.0]]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), &adapter, model.spec()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(
        json["rank_pattern"][pattern_key(MODULES[0])],
        serde_json::json!([false, true])
    );
    assert_eq!(
        json["rank_pattern"][pattern_key(MODULES[1])],
        serde_json::json!([true, false])
    );
    let file = candle_core::safetensors::load(dir.path().join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    assert_eq!(file[&factor_key(MODULES[0], "A")].dims(), [1, 32]);
    assert_eq!(file[&factor_key(MODULES[0], "B")].dims(), [96, 1]);
    assert_eq!(file[&factor_key(MODULES[0], "E")].dims(), [1, 1]);
    assert!(!file.keys().any(|k| k.contains("ranknum")));

    let loaded = load_adapter(dir.path(), &mut init(&model, 1))
        .unwrap()
        .adapter;
    assert_eq!(loaded.num_trainable(), 2 * (32 + 96 + 1));
    let ids = [5u32, 17, 42, 8];
    let moved = max_diff(
        &logits(&model, &adapter, &ids),
        &logits(&model, &peft_core::hooks::NoHooks, &ids),
    );
    assert!(moved > 1e-3, "the adapter is a no-op ({moved})");
    assert!(
        max_diff(
            &logits(&model, &adapter, &ids),
            &logits(&model, loaded.as_ref(), &ids)
        ) < 1e-6
    );
    // Saved again, the loaded adapter writes the same pattern.
    let again = serde_json::to_value(loaded.saved_config()).unwrap();
    assert_eq!(again["rank_pattern"], json["rank_pattern"]);
}

#[test]
fn bad_patterns_and_files_are_refused_naming_what_to_change() {
    peft_adalora::register();
    let model = peft_models::tiny::gpt2(0);
    let saved = |pattern: RankPattern| AdaLoraConfig {
        rank_pattern: Some(pattern),
        common: peft_core::method::CommonConfig {
            inference_mode: true,
            ..Default::default()
        },
        ..small_config()
    };
    let short: RankPattern = [(pattern_key(MODULES[0]), vec![true])].into();
    let err = saved(short)
        .build(&mut init(&model, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("init_r = 2") && err.contains("h.0.attn.c_attn.lora_E"),
        "{err}"
    );
    let stranger: RankPattern = [(
        "transformer.h.0.mlp.c_fc.lora_E".to_string(),
        vec![true, true],
    )]
    .into();
    let err = saved(stranger)
        .build(&mut init(&model, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("c_fc") && err.contains("target_modules"),
        "{err}"
    );

    // A file at init_r with a config whose pattern says rank 1: the tensor and both shapes are named.
    let adapter = build(&model, &small_config());
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), &adapter, model.spec()).unwrap();
    let path = dir.path().join(CONFIG_FILE);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["rank_pattern"] = serde_json::json!({pattern_key(MODULES[1]): [true, false]});
    std::fs::write(&path, json.to_string()).unwrap();
    let err = load_adapter(dir.path(), &mut init(&model, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("h.1.attn.c_attn.lora_A") && err.contains("rank_pattern"),
        "{err}"
    );
}

#[test]
fn configs_hf_peft_refuses_are_refused_with_its_reasons() {
    let cases: Vec<(AdaLoraConfig, &str)> = vec![
        (
            AdaLoraConfig {
                use_dora: true,
                ..small_config()
            },
            "does not support DoRA",
        ),
        (
            AdaLoraConfig {
                loftq_config: serde_json::json!({"loftq_bits": 4}),
                ..small_config()
            },
            "does not support LOFTQ",
        ),
        (
            AdaLoraConfig {
                total_step: None,
                ..small_config()
            },
            "total_step",
        ),
        (
            AdaLoraConfig {
                orth_reg_weight: -1.0,
                ..small_config()
            },
            "orth_reg_weight",
        ),
        (
            AdaLoraConfig {
                tinit: 2,
                tfinal: 1,
                ..small_config()
            },
            "budgeting phase",
        ),
        (
            AdaLoraConfig {
                beta1: 1.0,
                ..small_config()
            },
            "beta1",
        ),
        (
            AdaLoraConfig {
                target_r: 3,
                ..small_config()
            },
            "target_r",
        ),
    ];
    for (config, words) in cases {
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains(words), "{words}: {err}");
    }
    small_config().check().unwrap();
}

#[test]
fn sized_by_init_r_with_target_r_following() {
    let spec = peft_models::tiny::gpt2(0);
    let spec = spec.spec();
    let config = AdaLoraConfig::new(12, 8, 10, ["c_attn"]);
    let sized = serde_json::to_value(config.with_size(6, spec).unwrap()).unwrap();
    assert_eq!(
        (&sized["init_r"], &sized["target_r"]),
        (&serde_json::json!(6), &serde_json::json!(4))
    );
}
