//! VeRA interoperates with HF PEFT in both directions, on fixtures written by `scripts/reference/vera.py`:
//! adapters HF PEFT saved (vectors moved away from their start) load here with HF's logits and HF's trainable
//! count, with and without the projections in the file; the projections drawn here from
//! `projection_prng_key` equal HF PEFT's bit for bit; and adapters trained here load in HF PEFT with our
//! logits. On the tiny models and on SmolLM2 (whose tests skip, saying why, where its weights are absent).
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-vera --test hf_parity` rewrites the `ours-*-vera*` adapters
//! (then run the script's `ours` mode to refresh `hf_logits.json`).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use peft_core::adapter_io::{read_adapter_config, WEIGHTS_FILE};
use peft_core::method::Adapter;
use peft_models::LoadedModel;
use peft_testing::{
    assert_agrees_with_hf, assert_trainable_count, committed_or_written, fixture, hf_fixture,
    hf_logits, init_loaded, ours_fixture, read_json, saved_tensor_names, smollm2, text_lm_task,
    tiny, toy_trained, train, trainable_names, Agreement, SMOLLM2_REVIEWS,
};
use peft_vera::{LayerSelection, TargetModules, VeraConfig, VERA_A_KEY, VERA_B_KEY};

/// (base model fixture, HF adapter fixture).
const HF_TINY: [(&str, &str); 4] = [
    ("tiny-gpt2", "hf-tiny-gpt2-vera"),
    ("tiny-llama", "hf-tiny-llama-vera"),
    ("tiny-llama", "hf-tiny-llama-vera-noproj"),
    ("tiny-gpt2", "hf-tiny-gpt2-vera-noproj"),
];

fn saved(dir: &std::path::Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join(WEIGHTS_FILE), &Device::Cpu).unwrap()
}

/// Asserts that `adapter` saves what HF PEFT saved in `dir`: its trainable tensors, and the projections where
/// the file holds them.
fn assert_same_tensor_names(name: &str, adapter: &dyn Adapter, dir: &std::path::Path) {
    let file = saved_tensor_names(dir);
    let mut ours = trainable_names(adapter);
    if file.contains(VERA_A_KEY) {
        ours.extend([VERA_A_KEY.to_string(), VERA_B_KEY.to_string()]);
    }
    assert_eq!(ours, file, "{name}");
}

#[test]
fn hf_vera_adapters_load_with_equal_logits_and_counts_on_tiny_models() {
    peft_vera::register();
    for (model, name) in HF_TINY {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
        assert_same_tensor_names(name, adapter.as_ref(), &dir);
        assert!(reference["frozen_changed"].as_f64().unwrap() > 1e-2);
        assert_agrees_with_hf(name, &loaded, adapter.as_ref(), &reference, Agreement::TINY);
    }
}

#[test]
fn smollm2_hf_vera_adapter_matches_hf_logits_and_count() {
    peft_vera::register();
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/hf-smollm2-vera");
    let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
    assert_same_tensor_names("hf-smollm2-vera", adapter.as_ref(), &dir);
    assert!(reference["frozen_changed"].as_f64().unwrap() > 1e-2);
    assert_agrees_with_hf(
        "hf-smollm2-vera",
        &loaded,
        adapter.as_ref(),
        &reference,
        Agreement::SMOLLM2,
    );
}

#[test]
fn projections_drawn_here_equal_hf_peft_saved_ones_bit_for_bit() {
    peft_vera::register();
    for (model, name) in [HF_TINY[0], HF_TINY[1]] {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        // The config HF PEFT saved, built afresh: the projections are drawn, not read.
        let mut config: VeraConfig =
            serde_json::from_value(read_json(&dir.join("adapter_config.json"))).unwrap();
        config.common.inference_mode = false;
        let ours = config.build_vera(&mut init_loaded(&loaded, 0)).unwrap();
        let file = saved(&dir);
        for (key, drawn) in [
            (VERA_A_KEY, ours.projections().a()),
            (VERA_B_KEY, ours.projections().b()),
        ] {
            let theirs = &file[key];
            assert_eq!(drawn.dims(), theirs.dims(), "{name}: {key}");
            let a: Vec<f32> = drawn.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
            let differing = a
                .iter()
                .zip(&b)
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            assert_eq!(
                differing,
                0,
                "{name}: {key}: {differing} of {} values differ",
                a.len()
            );
        }
    }
}

#[test]
fn our_default_config_targets_what_hf_peft_targets() {
    for (model, name) in [HF_TINY[1]] {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let ours = VeraConfig::default()
            .build_vera(&mut init_loaded(&loaded, 0))
            .unwrap();
        let file = saved_tensor_names(&dir);
        let mut names = trainable_names(&ours);
        names.extend([VERA_A_KEY.to_string(), VERA_B_KEY.to_string()]);
        assert_eq!(names, file, "{name}");
        assert_trainable_count(name, &ours, &read_json(&dir.join("logits.json")));
        // The filled-in config says what HF PEFT's says.
        let hf = read_json(&dir.join("adapter_config.json"));
        let saved = serde_json::to_value(Adapter::config(&ours)).unwrap();
        for field in [
            "peft_type",
            "r",
            "fan_in_fan_out",
            "init_weights",
            "task_type",
            "d_initial",
            "projection_prng_key",
            "save_projection",
            "vera_dropout",
            "bias",
        ] {
            assert_eq!(saved[field], hf[field], "{name}: {field}");
        }
    }
}

/// Our adapters on the tiny fixture models: (model, folder, config).
fn ours_cases() -> Vec<(&'static str, &'static str, VeraConfig)> {
    vec![
        (
            "tiny-gpt2",
            "ours-tiny-gpt2-vera",
            VeraConfig {
                r: 16,
                ..VeraConfig::default()
            },
        ),
        ("tiny-llama", "ours-tiny-llama-vera", VeraConfig::default()),
        (
            "tiny-llama",
            "ours-tiny-llama-vera-noproj",
            VeraConfig {
                target_modules: Some(TargetModules::Pattern("all-linear".into())),
                projection_prng_key: 5,
                save_projection: false,
                ..VeraConfig::new(24, Vec::<String>::new())
            },
        ),
    ]
}

/// `config` for the fixture model `name`, 5 causal-LM steps at learning rate 0.05.
fn our_trained_adapter(loaded: &LoadedModel, name: &str, config: &VeraConfig) -> Box<dyn Adapter> {
    let mut cfg = config.clone();
    cfg.common.base_model_name_or_path = Some(name.to_string());
    toy_trained(loaded, &cfg, 0.05).0
}

#[test]
fn our_vera_adapters_load_in_hf_peft_with_equal_logits() {
    peft_vera::register();
    for (model, folder, config) in ours_cases() {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{folder}"));
        let fresh = our_trained_adapter(&loaded, model, &config);
        // Training moved lambda_b away from zeros.
        let moved = fresh
            .trainable()
            .iter()
            .filter(|(k, _)| k.ends_with("vera_lambda_b"))
            .map(|(_, v)| {
                v.as_tensor()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .fold(0f32, f32::max);
        assert!(
            moved > 0.05,
            "{folder}: training moved lambda_b by only {moved}"
        );
        // The committed adapter is what this code writes today (so HF PEFT's logits are about our output).
        let Some(committed) = ours_fixture(&dir, fresh.as_ref(), init_loaded(&loaded, 0)) else {
            continue;
        };
        let in_file = saved(&dir).contains_key(VERA_A_KEY);
        assert_eq!(in_file, config.save_projection, "{folder}");
        let hf = hf_logits(&dir);
        let trained = Agreement::TINY.with_min_effect(1e-3);
        assert_agrees_with_hf(folder, &loaded, committed.as_ref(), &hf, trained);
    }
}

/// The config of `ours-smollm2-vera`: the HF fixture's settings.
fn smollm2_config() -> VeraConfig {
    let mut config = VeraConfig {
        layers_to_transform: Some(LayerSelection::Many(vec![0, 14, 29])),
        projection_prng_key: 11,
        ..VeraConfig::new(8, ["q_proj", "v_proj"])
    };
    config.common.base_model_name_or_path = Some("SmolLM2-135M-Instruct.Q4_1.gguf".into());
    config
}

/// Our SmolLM2 adapter: `smollm2_config` from its default init, 3 steps on two reviews.
fn smollm2_trained_adapter(loaded: &LoadedModel) -> Box<dyn Adapter> {
    let adapter = smollm2_config()
        .build_vera(&mut init_loaded(loaded, 7))
        .unwrap();
    let task = text_lm_task(loaded.tokenizer.as_ref().unwrap(), &SMOLLM2_REVIEWS);
    train(loaded.model.as_ref(), &adapter, &task, 3, 2, 0.05);
    Box::new(adapter)
}

#[test]
fn smollm2_vera_trained_here_loads_in_hf_peft() {
    peft_vera::register();
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/ours-smollm2-vera");
    let ctx = init_loaded(&loaded, 0);
    let Some(adapter) = committed_or_written(&dir, ctx, || smollm2_trained_adapter(&loaded)) else {
        return;
    };
    let hf = hf_logits(&dir);
    assert_agrees_with_hf(
        "ours-smollm2-vera",
        &loaded,
        adapter.as_ref(),
        &hf,
        Agreement::SMOLLM2,
    );
}

#[test]
fn hf_adapter_configs_parse_with_every_field() {
    for (_, name) in HF_TINY {
        let dir = fixture(&format!("adapters/{name}"));
        let config = read_adapter_config(&dir).unwrap();
        assert_eq!(config.typetag_name(), "VERA", "{name}");
    }
}
