//! DoRA (`use_dora`) interoperates with HF PEFT in both directions, on fixtures written by
//! `scripts/reference/dora.py`: adapters HF PEFT saved (factors and magnitudes away from their initial values)
//! load here with HF's logits, unmerged and merged (HF PEFT's merged logits), and HF's trainable-parameter
//! count; adapters trained here load in HF PEFT with our logits.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-lora --test dora_hf_parity` rewrites the `ours-*-dora` adapters
//! (then run the script's `ours` mode to refresh their `hf_logits.json`).

use peft_core::hooks::NoHooks;
use peft_core::method::Adapter;
use peft_lora::{BiasMode, LoraConfig};
use peft_testing::{
    fixture, full_logits_diff, hf_fixture, hf_logits, init, ours_fixture, tiny, toy_trained,
};

/// HF adapter folders on the tiny models, with the base model each was made for.
const HF_TINY: [(&str, &str); 2] = [
    ("hf-tiny-gpt2-dora", "tiny-gpt2"),
    ("hf-tiny-llama-dora", "tiny-llama"),
];

#[test]
fn hf_dora_adapters_load_with_equal_logits_merged_or_not_and_equal_trainable_counts() {
    for (folder, base) in HF_TINY {
        let mut loaded = tiny(base);
        let dir = fixture(&format!("adapters/{folder}"));
        let (adapter, reference) = hf_fixture(&dir, &mut init(loaded.model.as_ref(), 0));
        assert_eq!(
            adapter.num_trainable() as u64,
            reference["num_trainable"].as_u64().unwrap(),
            "{folder}: trainable parameters differ from HF PEFT's count"
        );
        let model = loaded.model.as_ref();
        for case in reference["cases"].as_array().unwrap() {
            let diff = full_logits_diff(model, adapter.as_ref(), case);
            eprintln!("{folder}: max |logit diff| vs HF PEFT {diff:.2e}");
            assert!(diff < 1e-4, "{folder}: max |logit diff| {diff}");
            assert!(
                full_logits_diff(model, &NoHooks, case) > 1e-2,
                "{folder} is a no-op"
            );
        }
        // Merged into the weights: HF PEFT's merge_and_unload logits (and so still its unmerged ones).
        adapter.merge_into(loaded.model.as_mut()).unwrap();
        let cases = reference["cases"].as_array().unwrap();
        let merged_cases = reference["merged_cases"].as_array().unwrap();
        assert_eq!(cases.len(), merged_cases.len());
        for (case, merged) in cases.iter().zip(merged_cases) {
            let model = loaded.model.as_ref();
            let diff = full_logits_diff(model, adapter.as_ref(), merged);
            eprintln!("{folder} merged: max |logit diff| vs HF PEFT merged {diff:.2e}");
            assert!(diff < 1e-4, "{folder} merged: max |logit diff| {diff}");
            assert!(full_logits_diff(model, adapter.as_ref(), case) < 1e-4);
        }
    }
}

/// The configs of the `ours-*` adapters: the HF fixtures' settings, trained from HF PEFT's default init.
fn our_config(folder: &str) -> LoraConfig {
    let config = match folder {
        "ours-tiny-gpt2-dora" => LoraConfig {
            lora_dropout: 0.1,
            bias: BiasMode::LoraOnly,
            ..LoraConfig::new(4, ["c_attn", "c_proj"])
        },
        "ours-tiny-llama-dora" => LoraConfig {
            lora_alpha: 16.0,
            use_rslora: true,
            ..LoraConfig::new(4, ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])
        },
        other => panic!("no config for {other}"),
    };
    LoraConfig {
        use_dora: true,
        ..config
    }
}

/// Largest |m - m0| / m0 over the magnitudes, m0 the row norms of the frozen weight (where a fresh adapter
/// starts): how far training moved them.
fn magnitude_moved(adapter: &dyn Adapter, fresh: &dyn Adapter) -> f32 {
    let start: std::collections::HashMap<_, _> = fresh.tensors().unwrap().into_iter().collect();
    adapter
        .tensors()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.ends_with("lora_magnitude_vector"))
        .map(|(k, t)| peft_core::compare::max_abs_diff(t, &start[k]).unwrap())
        .fold(0.0, f32::max)
}

#[test]
fn our_dora_adapters_load_in_hf_peft_with_equal_logits() {
    let ours = [
        ("ours-tiny-gpt2-dora", "tiny-gpt2"),
        ("ours-tiny-llama-dora", "tiny-llama"),
    ];
    for (folder, base) in ours {
        let loaded = tiny(base);
        let model = loaded.model.as_ref();
        let dir = fixture(&format!("adapters/{folder}"));
        let mut config = our_config(folder);
        config.common.base_model_name_or_path = Some(base.to_string());
        let (fresh, _) = toy_trained(&loaded, &config, 0.05);
        let untrained = config.build_lora(&mut init(model, 7)).unwrap();
        assert!(
            magnitude_moved(fresh.as_ref(), &untrained) > 1e-3,
            "{folder}: training left the magnitudes where they started"
        );
        // The committed adapter is what this code trains today (so HF PEFT's logits are about our output).
        let Some(committed) = ours_fixture(&dir, fresh.as_ref(), init(model, 0)) else {
            continue;
        };
        let hf = hf_logits(&dir);
        assert_eq!(
            committed.num_trainable() as u64,
            hf["num_trainable"].as_u64().unwrap(),
            "{folder}: trainable parameters differ from HF PEFT's count"
        );
        for case in hf["cases"].as_array().unwrap() {
            let diff = full_logits_diff(model, committed.as_ref(), case);
            eprintln!("{folder}: max |logit diff| vs HF PEFT {diff:.2e}");
            assert!(diff < 1e-4, "{folder}: max |logit diff| vs HF PEFT {diff}");
            assert!(
                full_logits_diff(model, &NoHooks, case) > 1e-4,
                "{folder} is a no-op in HF PEFT"
            );
        }
    }
}
