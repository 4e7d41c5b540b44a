//! IA3 interoperates with HF PEFT in both directions, on fixtures written by `scripts/reference/ia3.py`:
//! adapters HF PEFT saved (vectors moved away from ones) load here with HF's logits and HF's trainable count,
//! and adapters trained here load in HF PEFT with our logits.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-ia3-example --test hf_parity` rewrites the `ours-*-ia3` adapters
//! (then run the script's `ours` mode to refresh `hf_logits.json`).

use std::collections::BTreeSet;

use peft_core::adapter_io::{load_adapter, WEIGHTS_FILE};
use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_ia3_example::Ia3Config;
use peft_models::LoadedModel;
use peft_testing::{
    fixture, full_logits_diff, hf_fixture, hf_logits, ids_of, init_loaded, logits, ours_fixture,
    read_json, smollm2, text_cases_top_diffs, text_lm_task, tiny, top_diff, top_logits_diff,
    toy_trained, train, write_fixture, writing_fixtures, SMOLLM2_REVIEWS,
};

/// (base model fixture, HF adapter fixture).
const HF_TINY: [(&str, &str); 3] = [
    ("tiny-gpt2", "hf-tiny-gpt2-ia3"),
    ("tiny-llama", "hf-tiny-llama-ia3"),
    ("tiny-llama", "hf-tiny-llama-ia3-all-linear"),
];

fn saved_keys(dir: &std::path::Path) -> BTreeSet<String> {
    let tensors =
        candle_core::safetensors::load(dir.join(WEIGHTS_FILE), &candle_core::Device::Cpu).unwrap();
    tensors.into_keys().collect()
}

fn trainable_names(adapter: &dyn Adapter) -> BTreeSet<String> {
    adapter.trainable().into_iter().map(|(k, _)| k).collect()
}

#[test]
fn hf_ia3_adapters_load_with_equal_logits_and_counts_on_tiny_models() {
    peft_ia3_example::register();
    for (model, name) in HF_TINY {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
        assert_eq!(
            adapter.num_trainable() as u64,
            reference["trainable_parameters"].as_u64().unwrap(),
            "{name}: trainable count differs from HF PEFT's"
        );
        assert_eq!(
            trainable_names(adapter.as_ref()),
            saved_keys(&dir),
            "{name}"
        );
        for case in reference["cases"].as_array().unwrap() {
            let diff = full_logits_diff(loaded.model.as_ref(), adapter.as_ref(), case);
            eprintln!("{name}: max |logit diff| vs HF PEFT {diff:e}");
            assert!(diff < 1e-4, "{name}: max |logit diff| {diff}");
            // The fixture is no identity adapter: the frozen model's logits are far from HF's.
            let frozen = full_logits_diff(loaded.model.as_ref(), &NoHooks, case);
            assert!(
                frozen > 1e-2,
                "{name}: the adapter changes logits by only {frozen}"
            );
        }
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
        assert_eq!(trainable_names(ours.as_ref()), saved_keys(&dir), "{name}");
        assert_eq!(
            ours.num_trainable() as u64,
            read_json(&dir.join("logits.json"))["trainable_parameters"]
                .as_u64()
                .unwrap()
        );
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
        assert_eq!(
            hf["ia3_parameters"].as_u64().unwrap(),
            committed.num_trainable() as u64
        );
        for case in hf["cases"].as_array().unwrap() {
            let diff = full_logits_diff(loaded.model.as_ref(), committed.as_ref(), case);
            eprintln!("ours-{name}-ia3: max |logit diff| vs HF PEFT {diff:e}");
            assert!(diff < 1e-4, "{name}: max |logit diff| vs HF PEFT {diff}");
        }
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
    assert_eq!(
        ours.num_trainable() as u64,
        reference["trainable_parameters"].as_u64().unwrap()
    );
    assert_eq!(trainable_names(ours.as_ref()), saved_keys(&dir));
    for (text, diff) in text_cases_top_diffs(&loaded, adapter.as_ref(), &reference) {
        eprintln!("hf-smollm2-ia3: max |top-20 logit diff| {diff:e} for {text:?}");
        assert!(diff < 1e-3, "max |logit diff| {diff} for {text:?}");
    }
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
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/ours-smollm2-ia3");
    if writing_fixtures() {
        let adapter = smollm2_trained_adapter(&loaded);
        write_fixture(&dir, adapter.as_ref(), loaded.model.as_ref());
        return;
    }
    peft_ia3_example::register();
    let adapter = load_adapter(&dir, &mut init_loaded(&loaded, 0))
        .unwrap()
        .adapter;
    let hf = hf_logits(&dir);
    assert_eq!(
        hf["ia3_parameters"].as_u64().unwrap(),
        adapter.num_trainable() as u64
    );
    for case in hf["cases"].as_array().unwrap() {
        let diff = top_logits_diff(loaded.model.as_ref(), adapter.as_ref(), case);
        eprintln!("ours-smollm2-ia3: max |top-20 logit diff| vs HF PEFT {diff:e}");
        assert!(diff < 1e-3, "max |logit diff| vs HF PEFT {diff}");
        // Over the reference's top-20 ids (the frozen model's top-1 may differ).
        let frozen = top_diff(
            &logits(loaded.model.as_ref(), &NoHooks, &ids_of(case)),
            case,
        );
        assert!(
            frozen > 1e-3,
            "the trained adapter is indistinguishable from the frozen model ({frozen})"
        );
    }
}
