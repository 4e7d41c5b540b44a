//! OFT interoperates with HF PEFT in both directions, on fixtures written by `scripts/reference/oft.py`: adapters
//! HF PEFT made with random `oft_R` (series and exact transforms, shared blocks sized by `r`, COFT's projection,
//! trained biases) load here with HF's logits and HF's parameter counts, and adapters trained here load in HF
//! PEFT with our logits. HF PEFT refuses GPT-2's Conv1D; its GPT-2 side runs on the same model with those layers
//! made `nn.Linear`, the same function under the same module names.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-oft --test hf_parity` rewrites the `ours-*-oft*` adapters (then run
//! the script's `ours` mode to refresh `hf_logits.json`).

use peft_core::adapter_io::read_adapter_config;
use peft_core::method::Adapter;
use peft_models::LoadedModel;
use peft_oft::{BiasMode, OftConfig, TargetModules};
use peft_testing::{
    assert_agrees_with_hf, fixture, hf_fixture, hf_logits, init_loaded, ours_fixture, read_json,
    saved_tensor_names, tiny, toy_trained, trainable_names, Agreement,
};

/// (base model fixture, HF adapter fixture).
const HF_TINY: [(&str, &str); 4] = [
    ("tiny-gpt2", "hf-tiny-gpt2-oft"),
    ("tiny-llama", "hf-tiny-llama-oft"),
    ("tiny-llama", "hf-tiny-llama-oft-shared"),
    ("tiny-llama", "hf-tiny-llama-oft-coft"),
];

/// Our adapters' agreement with HF PEFT: full logits within 1e-5.
const CLOSE: Agreement = Agreement {
    tolerance: 1e-5,
    ..Agreement::TINY
};

#[test]
fn hf_oft_adapters_load_with_equal_logits_and_counts() {
    peft_oft::register();
    let mut worst = 0f32;
    for (model, name) in HF_TINY {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
        assert_eq!(
            trainable_names(adapter.as_ref()),
            saved_tensor_names(&dir),
            "{name}"
        );
        worst = worst.max(assert_agrees_with_hf(
            name,
            &loaded,
            adapter.as_ref(),
            &reference,
            CLOSE,
        ));
    }
    eprintln!("HF PEFT's OFT adapters: max |logit diff| {worst:.2e}");
}

#[test]
fn hf_oft_adapters_merged_give_the_same_logits() {
    peft_oft::register();
    for (model, name) in HF_TINY {
        let mut loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
        adapter.merge_into(loaded.model.as_mut()).unwrap();
        // Trained biases stay in the hooks; the rotation is in the weights.
        assert_agrees_with_hf(
            name,
            &loaded,
            adapter.as_ref(),
            &reference,
            Agreement {
                tolerance: 1e-4,
                ..Agreement::TINY.merged()
            },
        );
    }
}

#[test]
fn hf_adapter_configs_parse_with_every_field() {
    peft_oft::register();
    for (_, name) in HF_TINY {
        let dir = fixture(&format!("adapters/{name}"));
        let config = read_adapter_config(&dir).unwrap();
        assert_eq!(config.typetag_name(), "OFT", "{name}");
        // Written back, every field HF PEFT wrote is there with its value.
        let hf = read_json(&dir.join("adapter_config.json"));
        let ours = serde_json::to_value(&config).unwrap();
        for (key, value) in hf.as_object().unwrap() {
            assert_eq!(&ours[key], value, "{name}: {key}");
        }
    }
}

/// Our adapters on the tiny fixture models: (model, folder, config).
fn ours_cases() -> Vec<(&'static str, &'static str, OftConfig)> {
    vec![
        (
            "tiny-gpt2",
            "ours-tiny-gpt2-oft",
            // The default targets (c_attn), by role.
            OftConfig {
                oft_block_size: 8,
                bias: BiasMode::OftOnly,
                ..OftConfig::default()
            },
        ),
        (
            "tiny-llama",
            "ours-tiny-llama-oft",
            OftConfig {
                r: 4,
                oft_block_size: 0,
                use_cayley_neumann: false,
                ..OftConfig::new(["q_proj", "v_proj", "down_proj"])
            },
        ),
        (
            "tiny-llama",
            "ours-tiny-llama-oft-shared-coft",
            OftConfig {
                block_share: true,
                coft: true,
                eps: 0.5,
                num_cayley_neumann_terms: 7,
                target_modules: Some(TargetModules::Pattern("all-linear".into())),
                oft_block_size: 8,
                ..OftConfig::default()
            },
        ),
    ]
}

/// `config` for the fixture model `name`, 5 causal-LM steps at learning rate 0.05.
fn our_trained_adapter(loaded: &LoadedModel, name: &str, config: &OftConfig) -> Box<dyn Adapter> {
    let mut cfg = config.clone();
    cfg.common.base_model_name_or_path = Some(name.to_string());
    toy_trained(loaded, &cfg, 0.05).0
}

#[test]
fn our_oft_adapters_load_in_hf_peft_with_equal_logits() {
    peft_oft::register();
    let mut worst = 0f32;
    for (model, folder, config) in ours_cases() {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{folder}"));
        let fresh = our_trained_adapter(&loaded, model, &config);
        let Some(committed) = ours_fixture(&dir, fresh.as_ref(), init_loaded(&loaded, 0)) else {
            continue;
        };
        let hf = hf_logits(&dir);
        let trained = CLOSE.with_min_effect(1e-3);
        worst = worst.max(assert_agrees_with_hf(
            folder,
            &loaded,
            committed.as_ref(),
            &hf,
            trained,
        ));
    }
    eprintln!("our OFT adapters in HF PEFT: max |logit diff| {worst:.2e}");
}
