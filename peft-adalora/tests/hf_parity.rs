//! AdaLoRA interoperates with HF PEFT in both directions, on fixtures written by `scripts/reference/adalora.py`:
//! adapters HF PEFT trained a few steps with its allocator (so `lora_E` is non-zero and a rank pattern cut the
//! factors) load here at the pattern's ranks with HF's logits and HF's parameter counts, and adapters trained
//! here (the allocator writing the pattern) load in HF PEFT with our logits.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-adalora --test hf_parity` rewrites the `ours-*-adalora` adapters
//! (then run the script's `ours` mode to refresh `hf_logits.json`).

use peft_adalora::{AdaLoraConfig, RankPattern, TargetModules};
use peft_core::adapter_io::read_adapter_config;
use peft_core::method::Adapter;
use peft_core::tuner::LayerSelection;
use peft_models::LoadedModel;
use peft_testing::{
    assert_agrees_with_hf, committed_or_written, fixture, hf_fixture, hf_logits, init_loaded,
    ours_fixture, read_json, saved_tensor_names, smollm2, text_lm_task, tiny, toy_trained, train,
    trainable_names, Agreement, SMOLLM2_REVIEWS,
};

/// (base model fixture, HF adapter fixture).
const HF_TINY: [(&str, &str); 2] = [
    ("tiny-gpt2", "hf-tiny-gpt2-adalora"),
    ("tiny-llama", "hf-tiny-llama-adalora"),
];

#[test]
fn hf_adalora_adapters_load_at_their_rank_pattern_with_equal_logits_and_counts() {
    peft_adalora::register();
    for (model, name) in HF_TINY {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
        assert_eq!(
            trainable_names(adapter.as_ref()),
            saved_tensor_names(&dir),
            "{name}"
        );
        // The pattern cut some module below init_r: the fixture tests the resizing.
        let pattern: RankPattern =
            serde_json::from_value(reference["rank_pattern"].clone()).unwrap();
        assert!(pattern.values().any(|f| f.contains(&false)), "{name}");
        assert!(reference["frozen_changed"].as_f64().unwrap() > 1e-2);
        assert_agrees_with_hf(name, &loaded, adapter.as_ref(), &reference, Agreement::TINY);
        // Saved again, it is the file HF PEFT wrote: the same config pattern, the same tensors.
        let saved = serde_json::to_value(adapter.saved_config()).unwrap();
        let hf = read_json(&dir.join("adapter_config.json"));
        for field in [
            "rank_pattern",
            "init_r",
            "target_r",
            "lora_alpha",
            "total_step",
            "deltaT",
        ] {
            assert_eq!(saved[field], hf[field], "{name}: {field}");
        }
    }
}

#[test]
fn smollm2_hf_adalora_adapter_loads_at_its_rank_pattern_with_hf_logits() {
    peft_adalora::register();
    let Some(loaded) = smollm2() else { return };
    let name = "hf-smollm2-adalora";
    let dir = fixture(&format!("adapters/{name}"));
    let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
    assert_eq!(
        trainable_names(adapter.as_ref()),
        saved_tensor_names(&dir),
        "{name}"
    );
    // HF's allocator pruned one module to rank 0 (layer 0's q_proj): it loads as a module with no update.
    let pattern: RankPattern = serde_json::from_value(reference["rank_pattern"].clone()).unwrap();
    assert!(pattern.values().any(|f| !f.contains(&true)), "{pattern:?}");
    assert!(reference["frozen_changed"].as_f64().unwrap() > 1e-2);
    assert_agrees_with_hf(
        name,
        &loaded,
        adapter.as_ref(),
        &reference,
        Agreement::SMOLLM2,
    );
}

/// Our SmolLM2 adapter: q_proj and v_proj of layers 0 and 29 from rank 4 to an average of 2, 4 steps (batch
/// 1) on two reviews, the allocator pruning at steps 2 and 3.
fn smollm2_trained_adapter(loaded: &LoadedModel) -> Box<dyn Adapter> {
    let mut config = AdaLoraConfig {
        tinit: 1,
        tfinal: 1,
        layers_to_transform: Some(LayerSelection::Many(vec![0, 29])),
        ..AdaLoraConfig::new(4, 2, 4, ["q_proj", "v_proj"])
    };
    config.common.base_model_name_or_path = Some("SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let adapter = config.build_adalora(&mut init_loaded(loaded, 7)).unwrap();
    let task = text_lm_task(loaded.tokenizer.as_ref().unwrap(), &SMOLLM2_REVIEWS);
    train(loaded.model.as_ref(), &adapter, &task, 4, 1, 0.01);
    Box::new(adapter)
}

#[test]
fn smollm2_adalora_trained_here_loads_in_hf_peft() {
    peft_adalora::register();
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/ours-smollm2-adalora");
    let ctx = init_loaded(&loaded, 0);
    let Some(adapter) = committed_or_written(&dir, ctx, || smollm2_trained_adapter(&loaded)) else {
        return;
    };
    // The pattern the allocator wrote cut some module below rank 4.
    let saved = serde_json::to_value(adapter.saved_config()).unwrap();
    let pattern: RankPattern = serde_json::from_value(saved["rank_pattern"].clone()).unwrap();
    assert_eq!(pattern.len(), 4, "{pattern:?}");
    assert!(pattern.values().any(|f| f.contains(&false)), "{pattern:?}");
    let hf = hf_logits(&dir);
    assert_agrees_with_hf(
        "ours-smollm2-adalora",
        &loaded,
        adapter.as_ref(),
        &hf,
        Agreement::SMOLLM2.with_min_effect(1e-3),
    );
}

#[test]
fn a_fresh_build_of_hf_configs_has_hf_peft_s_training_count() {
    peft_adalora::register();
    for (model, name) in HF_TINY {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let mut config: AdaLoraConfig =
            serde_json::from_value(read_json(&dir.join("adapter_config.json"))).unwrap();
        config.common.inference_mode = false;
        config.rank_pattern = None;
        let fresh = config.build_adalora(&mut init_loaded(&loaded, 0)).unwrap();
        let reference = read_json(&dir.join("logits.json"));
        assert_eq!(
            fresh.num_trainable() as u64,
            reference["training_parameters"].as_u64().unwrap(),
            "{name}"
        );
    }
}

/// Our adapters on the tiny fixture models: (model, folder, config), each laid out over the 5 steps of
/// `toy_trained`.
fn ours_cases() -> Vec<(&'static str, &'static str, AdaLoraConfig)> {
    vec![
        (
            "tiny-gpt2",
            "ours-tiny-gpt2-adalora",
            AdaLoraConfig {
                target_r: 4,
                tinit: 1,
                tfinal: 1,
                lora_alpha: 16.0,
                target_modules: None,
                ..AdaLoraConfig::new(6, 4, 5, Vec::<String>::new())
            },
        ),
        (
            "tiny-llama",
            "ours-tiny-llama-adalora",
            AdaLoraConfig {
                target_r: 2,
                tfinal: 2,
                orth_reg_weight: 0.1,
                ..AdaLoraConfig::new(4, 2, 5, ["q_proj", "v_proj", "down_proj"])
            },
        ),
    ]
}

/// `config` for the fixture model `name`, 5 causal-LM steps at learning rate 0.05.
fn our_trained_adapter(
    loaded: &LoadedModel,
    name: &str,
    config: &AdaLoraConfig,
) -> Box<dyn Adapter> {
    let mut cfg = config.clone();
    cfg.common.base_model_name_or_path = Some(name.to_string());
    toy_trained(loaded, &cfg, 0.05).0
}

#[test]
fn our_adalora_adapters_load_in_hf_peft_with_equal_logits() {
    peft_adalora::register();
    for (model, folder, config) in ours_cases() {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{folder}"));
        let fresh = our_trained_adapter(&loaded, model, &config);
        // The allocator wrote a pattern that drops some triplets.
        let saved = serde_json::to_value(fresh.saved_config()).unwrap();
        let pattern: RankPattern = serde_json::from_value(saved["rank_pattern"].clone()).unwrap();
        assert!(
            pattern.values().any(|f| f.contains(&false)),
            "{folder}: {pattern:?}"
        );
        let Some(committed) = ours_fixture(&dir, fresh.as_ref(), init_loaded(&loaded, 0)) else {
            continue;
        };
        let hf = hf_logits(&dir);
        let trained = Agreement::TINY.with_min_effect(1e-3);
        assert_agrees_with_hf(folder, &loaded, committed.as_ref(), &hf, trained);
    }
}

#[test]
fn hf_adapter_configs_parse_with_every_field() {
    for (_, name) in HF_TINY {
        let dir = fixture(&format!("adapters/{name}"));
        let config = read_adapter_config(&dir).unwrap();
        assert_eq!(config.typetag_name(), "ADALORA", "{name}");
        // Written back, every field HF PEFT wrote is there with its value.
        let hf = read_json(&dir.join("adapter_config.json"));
        let ours = serde_json::to_value(&config).unwrap();
        for (key, value) in hf.as_object().unwrap() {
            assert_eq!(&ours[key], value, "{name}: {key}");
        }
        let _ = TargetModules::list(["c_attn"]);
    }
}
