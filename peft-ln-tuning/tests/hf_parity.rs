//! LayerNorm tuning interoperates with HF PEFT in both directions, on fixtures written by
//! `scripts/reference/ln_tuning.py`: adapters HF PEFT saved (tuned tensors moved away from the frozen ones)
//! load here with HF's logits, HF's trainable count and HF's tensor names, defaults and a regular expression
//! with `exclude_modules` alike; our default config selects what HF PEFT's does; and adapters trained here
//! load in HF PEFT with our logits. On the tiny models and on SmolLM2 (whose tests skip, saying why, where its
//! weights are absent).
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-ln-tuning --test hf_parity` rewrites the `ours-*-ln-tuning`
//! adapters (then run the script's `ours` mode to refresh `hf_logits.json`).

use peft_core::adapter_io::read_adapter_config;
use peft_core::method::{Adapter, PeftMethod};
use peft_ln_tuning::{LnTuningConfig, TargetModules};
use peft_models::LoadedModel;
use peft_testing::{
    assert_agrees_with_hf, assert_trainable_count, committed_or_written, fixture, hf_fixture,
    hf_logits, init_loaded, ours_fixture, read_json, saved_tensor_names, smollm2, text_lm_task,
    tiny, toy_trained, train, trainable_names, Agreement, SMOLLM2_REVIEWS,
};

/// (base model fixture, HF adapter fixture).
const HF_TINY: [(&str, &str); 3] = [
    ("tiny-gpt2", "hf-tiny-gpt2-ln-tuning"),
    ("tiny-llama", "hf-tiny-llama-ln-tuning"),
    ("tiny-gpt2", "hf-tiny-gpt2-ln-tuning-regex"),
];

#[test]
fn hf_ln_tuning_adapters_load_with_equal_logits_and_counts_on_tiny_models() {
    peft_ln_tuning::register();
    for (model, name) in HF_TINY {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
        assert_eq!(
            trainable_names(adapter.as_ref()),
            saved_tensor_names(&dir),
            "{name}"
        );
        assert!(reference["frozen_changed"].as_f64().unwrap() > 1e-2);
        assert_agrees_with_hf(name, &loaded, adapter.as_ref(), &reference, Agreement::TINY);
    }
}

#[test]
fn smollm2_hf_ln_tuning_adapter_matches_hf_logits_and_count() {
    peft_ln_tuning::register();
    let Some(loaded) = smollm2() else { return };
    let name = "hf-smollm2-ln-tuning";
    let dir = fixture(&format!("adapters/{name}"));
    let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
    assert_eq!(
        trainable_names(adapter.as_ref()),
        saved_tensor_names(&dir),
        "{name}"
    );
    assert!(reference["frozen_changed"].as_f64().unwrap() > 1e-2);
    assert_agrees_with_hf(
        name,
        &loaded,
        adapter.as_ref(),
        &reference,
        Agreement::SMOLLM2,
    );
}

#[test]
fn our_default_config_targets_what_hf_peft_targets() {
    for (model, name) in [HF_TINY[0], HF_TINY[1]] {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let ours = LnTuningConfig::default()
            .build_ln_tuning(&mut init_loaded(&loaded, 0))
            .unwrap();
        assert_eq!(trainable_names(&ours), saved_tensor_names(&dir), "{name}");
        assert_trainable_count(name, &ours, &read_json(&dir.join("logits.json")));
        // The filled-in config says what HF PEFT's says (HF saves target_modules from a set; the fixture
        // sorts it).
        let hf = read_json(&dir.join("adapter_config.json"));
        let saved = serde_json::to_value(Adapter::config(&ours)).unwrap();
        for field in [
            "peft_type",
            "task_type",
            "exclude_modules",
            "modules_to_save",
        ] {
            assert_eq!(saved[field], hf[field], "{name}: {field}");
        }
        let mut targets: Vec<String> =
            serde_json::from_value(saved["target_modules"].clone()).unwrap();
        targets.sort();
        assert_eq!(
            serde_json::to_value(targets).unwrap(),
            hf["target_modules"],
            "{name}"
        );
    }
}

/// Our adapters on the tiny fixture models: (model, folder, config).
fn ours_cases() -> Vec<(&'static str, &'static str, LnTuningConfig)> {
    vec![
        (
            "tiny-gpt2",
            "ours-tiny-gpt2-ln-tuning",
            LnTuningConfig::default(),
        ),
        (
            "tiny-llama",
            "ours-tiny-llama-ln-tuning",
            LnTuningConfig {
                exclude_modules: Some(TargetModules::list(["model.layers.0.input_layernorm"])),
                ..LnTuningConfig::default()
            },
        ),
    ]
}

#[test]
fn our_ln_tuning_adapters_load_in_hf_peft_with_equal_logits() {
    peft_ln_tuning::register();
    for (model, folder, config) in ours_cases() {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{folder}"));
        let mut config = config.clone();
        config.common.base_model_name_or_path = Some(model.to_string());
        let frozen = config
            .build(&mut init_loaded(&loaded, 0))
            .unwrap()
            .tensors()
            .unwrap();
        let (fresh, _) = toy_trained(&loaded, &config, 0.05);
        // Training moved every tuned tensor away from the frozen one.
        for ((key, start), (_, now)) in frozen.iter().zip(fresh.tensors().unwrap()) {
            let moved = peft_core::compare::max_abs_diff(start, &now).unwrap();
            assert!(
                moved > 1e-2,
                "{folder}: training moved {key} by only {moved}"
            );
        }
        // The committed adapter is what this code writes today (so HF PEFT's logits are about our output).
        let Some(committed) = ours_fixture(&dir, fresh.as_ref(), init_loaded(&loaded, 0)) else {
            continue;
        };
        let hf = hf_logits(&dir);
        assert_trainable_count(folder, committed.as_ref(), &hf);
        let trained = Agreement::TINY.with_min_effect(1e-3);
        assert_agrees_with_hf(folder, &loaded, committed.as_ref(), &hf, trained);
    }
}

/// Our SmolLM2 adapter: the norms of layers 0 and 29 and the final norm, 3 steps on two reviews.
fn smollm2_trained_adapter(loaded: &LoadedModel) -> Box<dyn Adapter> {
    let mut config = LnTuningConfig {
        target_modules: Some(TargetModules::Pattern(
            r"model\.(layers\.(0|29)\..*layernorm|norm)".into(),
        )),
        ..LnTuningConfig::default()
    };
    config.common.base_model_name_or_path = Some("SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let adapter = config.build_ln_tuning(&mut init_loaded(loaded, 7)).unwrap();
    let task = text_lm_task(loaded.tokenizer.as_ref().unwrap(), &SMOLLM2_REVIEWS);
    train(loaded.model.as_ref(), &adapter, &task, 3, 2, 0.05);
    Box::new(adapter)
}

#[test]
fn smollm2_ln_tuning_trained_here_loads_in_hf_peft() {
    peft_ln_tuning::register();
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/ours-smollm2-ln-tuning");
    let ctx = init_loaded(&loaded, 0);
    let Some(adapter) = committed_or_written(&dir, ctx, || smollm2_trained_adapter(&loaded)) else {
        return;
    };
    // Five norms of 576: the input and post-attention norms of two layers, and the final norm.
    assert_eq!(adapter.num_trainable(), 5 * 576);
    let hf = hf_logits(&dir);
    assert_agrees_with_hf(
        "ours-smollm2-ln-tuning",
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
        assert_eq!(config.typetag_name(), "LN_TUNING", "{name}");
    }
}
