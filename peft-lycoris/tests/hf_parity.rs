//! LoHa and LoKr interoperate with HF PEFT 0.21 in both directions, on fixtures written by
//! `scripts/reference/lycoris.py`: adapters HF PEFT saved (every factor moved away from its init) load here with
//! HF's logits and HF's trainable count, and adapters trained here load in HF PEFT with our logits. GPT-2's
//! fixtures come from HF PEFT on the tiny GPT-2 with its Conv1D modules as the equivalent nn.Linear (HF's LyCORIS
//! tuners refuse Conv1D; see the script).
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-lycoris --test hf_parity` rewrites the `ours-*` adapters (then run
//! the script's `ours` mode to refresh `hf_logits.json`).

use std::collections::BTreeSet;

use peft_core::adapter_io::WEIGHTS_FILE;
use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_lycoris::{LohaConfig, LokrConfig, LycorisFields, TargetModules};
use peft_testing::{
    fixture, full_logits_diff, hf_fixture, hf_logits, init_loaded, ours_fixture, read_json, tiny,
    toy_trained,
};

/// (base model fixture, HF adapter fixture).
const HF_TINY: [(&str, &str); 7] = [
    ("tiny-gpt2", "hf-tiny-gpt2-loha"),
    ("tiny-llama", "hf-tiny-llama-loha"),
    ("tiny-llama", "hf-tiny-llama-patterns-loha"),
    ("tiny-gpt2", "hf-tiny-gpt2-lokr"),
    ("tiny-llama", "hf-tiny-llama-lokr"),
    ("tiny-llama", "hf-tiny-llama-both-lokr"),
    ("tiny-llama", "hf-tiny-llama-factor2-lokr"),
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
fn hf_adapters_load_with_equal_logits_and_counts_on_tiny_models() {
    peft_lycoris::register();
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
fn merged_hf_adapters_give_hf_logits_and_unmerge_restores_the_model() {
    peft_lycoris::register();
    for (model, name) in HF_TINY {
        let mut loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
        let case = &reference["cases"][0];
        let before = full_logits_diff(loaded.model.as_ref(), &NoHooks, case);
        adapter.merge_into(loaded.model.as_mut()).unwrap();
        // Merged, the hooks add nothing and the frozen model alone gives HF's logits.
        let merged = full_logits_diff(loaded.model.as_ref(), &NoHooks, case);
        assert!(merged < 1e-4, "{name}: merged logits differ by {merged}");
        let hooked = full_logits_diff(loaded.model.as_ref(), adapter.as_ref(), case);
        assert!(hooked < 1e-4, "{name}: merged + hooks differ by {hooked}");
        adapter.unmerge_from(loaded.model.as_mut()).unwrap();
        let after = full_logits_diff(loaded.model.as_ref(), &NoHooks, case);
        assert!(
            (after - before).abs() < 1e-4,
            "{name}: unmerge left the model changed ({before} -> {after})"
        );
    }
}

/// A default config of each method, as `build` saves it, against the HF fixture of the same defaults.
#[test]
fn our_default_configs_target_and_count_what_hf_peft_does() {
    let defaults: [(&str, &str, Box<dyn PeftMethod>); 4] = [
        (
            "tiny-gpt2",
            "hf-tiny-gpt2-loha",
            Box::new(LohaConfig::default()),
        ),
        (
            "tiny-llama",
            "hf-tiny-llama-loha",
            Box::new(LohaConfig::default()),
        ),
        (
            "tiny-gpt2",
            "hf-tiny-gpt2-lokr",
            Box::new(LokrConfig::default()),
        ),
        (
            "tiny-llama",
            "hf-tiny-llama-lokr",
            Box::new(LokrConfig::default()),
        ),
    ];
    for (model, name, config) in defaults {
        let loaded = tiny(model);
        let dir = fixture(&format!("adapters/{name}"));
        let ours = config.build(&mut init_loaded(&loaded, 0)).unwrap();
        assert_eq!(trainable_names(ours.as_ref()), saved_keys(&dir), "{name}");
        assert_eq!(
            ours.num_trainable() as u64,
            read_json(&dir.join("logits.json"))["trainable_parameters"]
                .as_u64()
                .unwrap(),
            "{name}"
        );
        // The filled-in config says what HF PEFT's says, field by field (HF's extra `auto_mapping` aside).
        let hf = read_json(&dir.join("adapter_config.json"));
        let saved = serde_json::to_value(ours.config()).unwrap();
        for (field, value) in hf.as_object().unwrap() {
            match field.as_str() {
                "auto_mapping" | "base_model_name_or_path" | "inference_mode" | "peft_version" => {}
                _ => assert_eq!(&saved[field], value, "{name}: {field}"),
            }
        }
    }
}

/// The configs of the `ours-*` fixtures: each method's defaults on both models, and LoKr's decompositions.
fn ours_cases() -> Vec<(&'static str, &'static str, Box<dyn PeftMethod>)> {
    let lokr = |fields: LycorisFields, decompose_both: bool, decompose_factor: i64| LokrConfig {
        lycoris: fields,
        decompose_both,
        decompose_factor,
        ..LokrConfig::default()
    };
    let targets = |r: usize, alpha: f64, modules: TargetModules| LycorisFields {
        r,
        alpha,
        target_modules: Some(modules),
        ..LycorisFields::default()
    };
    vec![
        ("tiny-gpt2", "loha", Box::new(LohaConfig::default())),
        ("tiny-llama", "loha", Box::new(LohaConfig::default())),
        ("tiny-gpt2", "lokr", Box::new(LokrConfig::default())),
        ("tiny-llama", "lokr", Box::new(LokrConfig::default())),
        (
            "tiny-llama",
            "both-lokr",
            Box::new(lokr(
                targets(2, 4.0, TargetModules::Pattern("all-linear".into())),
                true,
                -1,
            )),
        ),
        (
            "tiny-llama",
            "factor2-lokr",
            Box::new(lokr(
                targets(
                    4,
                    8.0,
                    TargetModules::list(["q_proj", "v_proj", "down_proj"]),
                ),
                false,
                2,
            )),
        ),
    ]
}

#[test]
fn adapters_trained_here_load_in_hf_peft_with_equal_logits() {
    for (name, suffix, mut config) in ours_cases() {
        let loaded = tiny(name);
        let dir = fixture(&format!("adapters/ours-{name}-{suffix}"));
        config.common_mut().base_model_name_or_path = Some(name.to_string());
        let (fresh, _) = toy_trained(&loaded, config.as_ref(), 0.05);
        // The committed adapter is what this code writes today (so HF PEFT's logits are about our output).
        let Some(committed) = ours_fixture(&dir, fresh.as_ref(), init_loaded(&loaded, 0)) else {
            continue;
        };
        let hf = hf_logits(&dir);
        assert_eq!(
            hf["lycoris_parameters"].as_u64().unwrap(),
            committed.num_trainable() as u64,
            "ours-{name}-{suffix}"
        );
        for case in hf["cases"].as_array().unwrap() {
            let diff = full_logits_diff(loaded.model.as_ref(), committed.as_ref(), case);
            eprintln!("ours-{name}-{suffix}: max |logit diff| vs HF PEFT {diff:e}");
            assert!(diff < 1e-4, "ours-{name}-{suffix}: max |logit diff| {diff}");
            // Training moved the adapter away from the identity it starts as.
            let frozen = full_logits_diff(loaded.model.as_ref(), &NoHooks, case);
            assert!(
                frozen > 1e-3,
                "ours-{name}-{suffix}: the trained adapter changes logits by only {frozen}"
            );
        }
    }
}
