//! Prompt tuning interoperates with HF PEFT in both directions, on fixtures written by
//! `scripts/reference/prompt_tuning.py`: adapters HF PEFT saved load here with HF's logits, and adapters saved
//! here load in HF PEFT with our logits.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-prompt --test hf_parity` rewrites the `ours-*` adapters (then run
//! the script's `ours` mode to refresh `hf_logits.json`).

use peft_core::adapter_io::load_adapter;
use peft_core::method::{Adapter, PeftMethod};
use peft_models::LoadedModel;
use peft_prompt::{PromptTuningConfig, PromptTuningInit};
use peft_testing::{
    fixture, full_logits_diff, hf_fixture, hf_logits, init_loaded, ours_fixture, read_json,
    smollm2, text_cases_top_diffs, tiny, top_logits_diff, toy_trained,
};

#[test]
fn hf_prompt_adapters_load_with_equal_logits_on_tiny_models() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let loaded = tiny(name);
        let dir = fixture(&format!("adapters/hf-{name}-random"));
        let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
        for case in reference["cases"].as_array().unwrap() {
            let diff = full_logits_diff(loaded.model.as_ref(), adapter.as_ref(), case);
            assert!(diff < 1e-4, "{name}: max |logit diff| {diff}");
        }
    }
}

/// Our adapter for a tiny fixture model: RANDOM init (seed 7), then 5 steps of causal-LM training.
fn our_trained_adapter(loaded: &LoadedModel, name: &str) -> Box<dyn Adapter> {
    let mut cfg = PromptTuningConfig::new(4, PromptTuningInit::Random);
    cfg.common.base_model_name_or_path = Some(name.to_string());
    toy_trained(loaded, &cfg, 0.05).0
}

#[test]
fn our_prompt_adapters_load_in_hf_peft_with_equal_logits() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let loaded = tiny(name);
        let dir = fixture(&format!("adapters/ours-{name}"));
        let fresh = our_trained_adapter(&loaded, name);
        // The committed adapter is what this code writes today (so HF PEFT's logits are about our output).
        let Some(committed) = ours_fixture(&dir, fresh.as_ref(), init_loaded(&loaded, 0)) else {
            continue;
        };
        for case in hf_logits(&dir)["cases"].as_array().unwrap() {
            let diff = full_logits_diff(loaded.model.as_ref(), committed.as_ref(), case);
            assert!(diff < 1e-4, "{name}: max |logit diff| vs HF PEFT {diff}");
        }
    }
}

#[test]
fn smollm2_hf_text_adapter_matches_and_our_text_init_equals_hf() {
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/hf-smollm2-text");
    let adapter = load_adapter(&dir, &mut init_loaded(&loaded, 0)).unwrap();
    let reference = read_json(&dir.join("logits.json"));
    for (text, diff) in text_cases_top_diffs(&loaded, adapter.adapter.as_ref(), &reference) {
        assert!(diff < 1e-3, "max |logit diff| {diff} for {text:?}");
    }
    // TEXT init here equals HF PEFT's TEXT init for the same text.
    let mut cfg = PromptTuningConfig::new(8, PromptTuningInit::Text);
    cfg.prompt_tuning_init_text = Some(reference["init_text"].as_str().unwrap().to_string());
    let ours = cfg.build(&mut init_loaded(&loaded, 0)).unwrap();
    let (a, b) = (
        &ours.tensors().unwrap()[0].1,
        &adapter.adapter.tensors().unwrap()[0].1,
    );
    let diff = peft_core::compare::max_abs_diff(a, b).unwrap();
    assert!(diff < 1e-6, "TEXT init differs from HF PEFT's by {diff}");
}

#[test]
fn smollm2_adapter_trained_here_loads_in_hf_peft() {
    let dir = fixture("adapters/ours-smollm2-sst2");
    let Some(loaded) = smollm2() else { return };
    let adapter = load_adapter(&dir, &mut init_loaded(&loaded, 0)).unwrap();
    for case in hf_logits(&dir)["cases"].as_array().unwrap() {
        let diff = top_logits_diff(loaded.model.as_ref(), adapter.adapter.as_ref(), case);
        assert!(diff < 1e-3, "max |logit diff| vs HF PEFT {diff}");
    }
}
