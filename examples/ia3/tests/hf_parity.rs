//! IA3 interoperates with HF PEFT in both directions, on fixtures written by `scripts/reference/ia3.py`:
//! adapters HF PEFT saved (vectors moved away from ones) load here with HF's logits and HF's trainable count,
//! and adapters trained here load in HF PEFT with our logits.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-ia3-example --test hf_parity` rewrites the `ours-*-ia3` adapters
//! (then run the script's `ours` mode to refresh `hf_logits.json`).

use std::collections::BTreeSet;

use peft_core::method::{Adapter, PeftMethod};
use peft_ia3_example::Ia3Config;
use peft_models::LoadedModel;
use peft_testing::{
    assert_agrees_with_hf, assert_cases_agree, assert_trainable_count, committed_or_written,
    fixture, hf_fixture, hf_logits, init_loaded, ours_fixture, read_json, saved_tensor_names,
    smollm2, text_lm_task, tiny, toy_trained, train, trainable_names, Agreement, SMOLLM2_REVIEWS,
};

/// (base model fixture, HF adapter fixture).
const HF_TINY: [(&str, &str); 3] = [
    ("tiny-gpt2", "hf-tiny-gpt2-ia3"),
    ("tiny-llama", "hf-tiny-llama-ia3"),
    ("tiny-llama", "hf-tiny-llama-ia3-all-linear"),
];

#[test]
fn hf_ia3_adapters_load_with_equal_logits_and_counts_on_tiny_models() {
    peft_ia3_example::register();
    for (model, name) in HF_TINY {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
        assert_eq!(
            trainable_names(adapter.as_ref()),
            saved_tensor_names(&dir),
            "{name}"
        );
        assert_agrees_with_hf(name, &loaded, adapter.as_ref(), &reference, Agreement::TINY);
    }
}

#[test]
fn our_default_config_targets_what_hf_peft_targets() {
    for (model, name) in &HF_TINY[..2] {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let ours = Ia3Config::default()
            .build(&mut init_loaded(&loaded, 0))
            .unwrap();
        assert_eq!(
            trainable_names(ours.as_ref()),
            saved_tensor_names(&dir),
            "{name}"
        );
        assert_trainable_count(name, ours.as_ref(), &read_json(&dir.join("logits.json")));
        // The filled-in config says what HF PEFT's says.
        let hf = read_json(&dir.join("adapter_config.json"));
        let saved = serde_json::to_value(ours.config()).unwrap();
        for field in [
            "peft_type",
            "fan_in_fan_out",
            "init_ia3_weights",
            "task_type",
        ] {
            assert_eq!(saved[field], hf[field], "{name}: {field}");
        }
        for field in ["target_modules", "feedforward_modules"] {
            let set = |v: &serde_json::Value| -> BTreeSet<String> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect()
            };
            assert_eq!(set(&saved[field]), set(&hf[field]), "{name}: {field}");
        }
    }
}

/// Our adapter for a tiny fixture model: default IA3 config (ones), then 5 steps of causal-LM training.
fn our_trained_adapter(loaded: &LoadedModel, name: &str) -> Box<dyn Adapter> {
    let mut cfg = Ia3Config::default();
    cfg.common.base_model_name_or_path = Some(name.to_string());
    toy_trained(loaded, &cfg, 0.05).0
}

#[test]
fn our_ia3_adapters_load_in_hf_peft_with_equal_logits() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let loaded = tiny(name);
        let dir = fixture(&format!("adapters/ours-{name}-ia3"));
        let fresh = our_trained_adapter(&loaded, name);
        // The committed adapter is what this code writes today (so HF PEFT's logits are about our output).
        let Some(committed) = ours_fixture(&dir, fresh.as_ref(), init_loaded(&loaded, 0)) else {
            continue;
        };
        // Training moved the vectors away from ones.
        let moved = fresh
            .tensors()
            .unwrap()
            .iter()
            .map(|(_, t)| {
                let ones = t.ones_like().unwrap();
                peft_core::compare::max_abs_diff(t, &ones).unwrap()
            })
            .fold(0f32, f32::max);
        assert!(
            moved > 0.05,
            "{name}: training moved the vectors by only {moved}"
        );
        let hf = hf_logits(&dir);
        let trained = Agreement::TINY.with_min_effect(1e-3);
        let folder = format!("ours-{name}-ia3");
        assert_agrees_with_hf(&folder, &loaded, committed.as_ref(), &hf, trained);
    }
}

#[test]
fn smollm2_hf_ia3_adapter_matches_hf_logits_and_count() {
    peft_ia3_example::register();
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/hf-smollm2-ia3");
    let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
    let ours = Ia3Config::default()
        .build(&mut init_loaded(&loaded, 0))
        .unwrap();
    assert_trainable_count("hf-smollm2-ia3", ours.as_ref(), &reference);
    assert_eq!(trainable_names(ours.as_ref()), saved_tensor_names(&dir));
    let (cases, agreement) = (&reference["cases"], Agreement::SMOLLM2);
    assert_cases_agree(
        "hf-smollm2-ia3",
        &loaded,
        adapter.as_ref(),
        cases,
        agreement,
    );
}

/// SmolLM2 with the default IA3 config, 3 causal-LM steps on two sentences (only run to rewrite the fixture).
fn smollm2_trained_adapter(loaded: &LoadedModel) -> Box<dyn Adapter> {
    let mut cfg = Ia3Config::default();
    cfg.common.base_model_name_or_path = Some(loaded.model.spec().name_or_path.clone());
    let adapter = cfg.build(&mut init_loaded(loaded, 7)).unwrap();
    let task = text_lm_task(loaded.tokenizer.as_ref().unwrap(), &SMOLLM2_REVIEWS);
    train(loaded.model.as_ref(), adapter.as_ref(), &task, 3, 2, 0.05);
    adapter
}

#[test]
fn smollm2_ia3_adapter_trained_here_loads_in_hf_peft() {
    peft_ia3_example::register();
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/ours-smollm2-ia3");
    let ctx = init_loaded(&loaded, 0);
    let Some(adapter) = committed_or_written(&dir, ctx, || smollm2_trained_adapter(&loaded)) else {
        return;
    };
    let hf = hf_logits(&dir);
    // Over the reference's top-20 ids (the frozen model's top-1 may differ), the trained adapter is visible.
    let agreement = Agreement::SMOLLM2.with_min_effect(1e-3);
    assert_agrees_with_hf("ours-smollm2-ia3", &loaded, &*adapter, &hf, agreement);
}
