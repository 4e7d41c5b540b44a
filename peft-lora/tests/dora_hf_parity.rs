//! DoRA (`use_dora`) interoperates with HF PEFT in both directions, on fixtures written by
//! `scripts/reference/dora.py`: adapters HF PEFT saved (factors and magnitudes away from their initial values)
//! load here with HF's logits, unmerged and merged (HF PEFT's merged logits), and HF's trainable-parameter
//! count; adapters trained here load in HF PEFT with our logits. On the tiny models and on SmolLM2 (whose tests
//! skip, saying why, where its weights are absent).
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-lora --test dora_hf_parity` rewrites the `ours-*-dora` adapters
//! (then run the script's `ours` mode to refresh their `hf_logits.json`).

use peft_core::method::Adapter;
use peft_lora::{BiasMode, LayerSelection, LoraConfig};
use peft_models::LoadedModel;
use peft_testing::{
    assert_agrees_with_hf, assert_cases_agree, committed_or_written, fixture, hf_fixture,
    hf_logits, init, ours_fixture, smollm2, text_lm_task, tiny, toy_trained, train, Agreement,
    SMOLLM2_REVIEWS,
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
        assert_agrees_with_hf(
            folder,
            &loaded,
            adapter.as_ref(),
            &reference,
            Agreement::TINY,
        );
        assert_merged_agrees(
            folder,
            &mut loaded,
            adapter.as_ref(),
            &reference,
            Agreement::TINY,
        );
    }
}

/// Merges `adapter` into `loaded` and asserts that the logits are HF PEFT's after `merge_and_unload`
/// (`reference["merged_cases"]`), and so still its unmerged ones (`reference["cases"]`).
fn assert_merged_agrees(
    folder: &str,
    loaded: &mut LoadedModel,
    adapter: &dyn Adapter,
    reference: &serde_json::Value,
    agreement: Agreement,
) {
    adapter.merge_into(loaded.model.as_mut()).unwrap();
    let (cases, merged_cases) = (&reference["cases"], &reference["merged_cases"]);
    assert_eq!(
        cases.as_array().unwrap().len(),
        merged_cases.as_array().unwrap().len()
    );
    let merged = agreement.merged();
    let name = format!("{folder} merged");
    assert_cases_agree(&name, loaded, adapter, merged_cases, merged);
    assert_cases_agree(&name, loaded, adapter, cases, merged);
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
        "ours-smollm2-dora" => LoraConfig {
            layers_to_transform: Some(LayerSelection::Many(vec![0, 14, 29])),
            ..LoraConfig::new(4, ["q_proj", "v_proj"])
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
        let trained = Agreement::TINY.with_min_effect(1e-4);
        assert_agrees_with_hf(folder, &loaded, committed.as_ref(), &hf, trained);
    }
}

#[test]
fn smollm2_hf_dora_adapter_matches_hf_logits_merged_and_unmerged() {
    let Some(mut loaded) = smollm2() else { return };
    let dir = fixture("adapters/hf-smollm2-dora");
    let (adapter, reference) = hf_fixture(&dir, &mut init(loaded.model.as_ref(), 0));
    assert_agrees_with_hf(
        "hf-smollm2-dora",
        &loaded,
        adapter.as_ref(),
        &reference,
        Agreement::SMOLLM2,
    );
    assert_merged_agrees(
        "hf-smollm2-dora",
        &mut loaded,
        adapter.as_ref(),
        &reference,
        Agreement::SMOLLM2,
    );
}

/// Our SmolLM2 adapter: the HF fixture's settings from HF PEFT's default init, 3 steps on two reviews.
fn smollm2_trained_adapter(loaded: &LoadedModel) -> Box<dyn Adapter> {
    let model = loaded.model.as_ref();
    let task = text_lm_task(loaded.tokenizer.as_ref().unwrap(), &SMOLLM2_REVIEWS);
    let mut config = our_config("ours-smollm2-dora");
    config.common.base_model_name_or_path = Some("SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let adapter = config.build_lora(&mut init(model, 7)).unwrap();
    train(model, &adapter, &task, 3, 2, 0.01);
    let untrained = config.build_lora(&mut init(model, 7)).unwrap();
    let moved = magnitude_moved(&adapter, &untrained);
    assert!(
        moved > 1e-3,
        "training moved the magnitudes by only {moved}"
    );
    Box::new(adapter)
}

#[test]
fn smollm2_dora_trained_here_loads_in_hf_peft() {
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/ours-smollm2-dora");
    let ctx = init(loaded.model.as_ref(), 0);
    let Some(adapter) = committed_or_written(&dir, ctx, || smollm2_trained_adapter(&loaded)) else {
        return;
    };
    let hf = hf_logits(&dir);
    assert_agrees_with_hf(
        "ours-smollm2-dora",
        &loaded,
        adapter.as_ref(),
        &hf,
        Agreement::SMOLLM2,
    );
}
