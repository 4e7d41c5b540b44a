//! LoHa and LoKr interoperate with HF PEFT 0.21 in both directions, on fixtures written by
//! `scripts/reference/lycoris.py`: adapters HF PEFT saved (every factor moved away from its init) load here with
//! HF's logits and HF's trainable count, and adapters trained here load in HF PEFT with our logits. GPT-2's
//! fixtures come from HF PEFT on the tiny GPT-2 with its Conv1D modules as the equivalent nn.Linear (HF's LyCORIS
//! tuners refuse Conv1D; see the script). On the tiny models and on SmolLM2 (whose tests skip, saying why, where
//! its weights are absent).
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-lycoris --test hf_parity` rewrites the `ours-*` adapters (then run
//! the script's `ours` mode to refresh `hf_logits.json`).

use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_lycoris::{LayerSelection, LohaConfig, LokrConfig, LycorisFields, TargetModules};
use peft_models::LoadedModel;
use peft_testing::{
    assert_agrees_with_hf, assert_cases_agree, assert_trainable_count, committed_or_written,
    fixture, full_logits_diff, hf_fixture, hf_logits, ids_of, init_loaded, logits, max_diff,
    ours_fixture, read_json, saved_tensor_names, smollm2, text_lm_task, tiny, toy_trained, train,
    trainable_names, Agreement, SMOLLM2_REVIEWS,
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

/// The HF fixtures on SmolLM2: r=4, alpha=8 on q_proj and v_proj of layers 0, 14 and 29.
const HF_SMOLLM2: [&str; 2] = ["hf-smollm2-loha", "hf-smollm2-lokr"];

#[test]
fn hf_adapters_load_with_equal_logits_and_counts_on_tiny_models() {
    peft_lycoris::register();
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
fn smollm2_hf_adapters_match_hf_logits_and_counts_merged_and_unmerged() {
    peft_lycoris::register();
    let Some(mut loaded) = smollm2() else { return };
    for name in HF_SMOLLM2 {
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
        // Merged, the frozen model alone gives HF's logits; unmerged, the model is SmolLM2 again.
        let ids = ids_of(&reference["cases"][0]);
        let before = logits(loaded.model.as_ref(), &NoHooks, &ids);
        adapter.merge_into(loaded.model.as_mut()).unwrap();
        let merged = Agreement::SMOLLM2.merged();
        let cases = &reference["cases"];
        assert_cases_agree(&format!("{name} merged"), &loaded, &NoHooks, cases, merged);
        adapter.unmerge_from(loaded.model.as_mut()).unwrap();
        let after = logits(loaded.model.as_ref(), &NoHooks, &ids);
        let changed = max_diff(&before, &after);
        assert!(
            changed < 1e-3,
            "{name}: unmerge left the logits changed by {changed}"
        );
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
        assert_eq!(
            trainable_names(ours.as_ref()),
            saved_tensor_names(&dir),
            "{name}"
        );
        let reference = read_json(&dir.join("logits.json"));
        assert_trainable_count(name, ours.as_ref(), &reference);
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
        // Training moved the adapter away from the identity it starts as.
        let trained = Agreement::TINY.with_min_effect(1e-3);
        assert_agrees_with_hf(
            &format!("ours-{name}-{suffix}"),
            &loaded,
            committed.as_ref(),
            &hf,
            trained,
        );
    }
}

/// The `ours-*` fixtures on SmolLM2: the HF fixtures' settings, from each method's default init.
fn smollm2_cases() -> Vec<(&'static str, Box<dyn PeftMethod>)> {
    let fields = LycorisFields {
        r: 4,
        alpha: 8.0,
        target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
        layers_to_transform: Some(LayerSelection::Many(vec![0, 14, 29])),
        ..LycorisFields::default()
    };
    let loha = LohaConfig {
        lycoris: fields.clone(),
        ..LohaConfig::default()
    };
    let lokr = LokrConfig {
        lycoris: fields,
        ..LokrConfig::default()
    };
    vec![
        ("ours-smollm2-loha", Box::new(loha)),
        ("ours-smollm2-lokr", Box::new(lokr)),
    ]
}

/// `config` on SmolLM2 from its default init, 3 steps on two reviews.
fn smollm2_trained_adapter(
    loaded: &LoadedModel,
    mut config: Box<dyn PeftMethod>,
) -> Box<dyn Adapter> {
    config.common_mut().base_model_name_or_path = Some("SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let adapter = config.build(&mut init_loaded(loaded, 7)).unwrap();
    let task = text_lm_task(loaded.tokenizer.as_ref().unwrap(), &SMOLLM2_REVIEWS);
    train(loaded.model.as_ref(), adapter.as_ref(), &task, 3, 2, 0.05);
    adapter
}

#[test]
fn smollm2_adapters_trained_here_load_in_hf_peft() {
    peft_lycoris::register();
    let Some(loaded) = smollm2() else { return };
    for (folder, config) in smollm2_cases() {
        let dir = fixture(&format!("adapters/{folder}"));
        let ctx = init_loaded(&loaded, 0);
        let train = || smollm2_trained_adapter(&loaded, config);
        let Some(adapter) = committed_or_written(&dir, ctx, train) else {
            continue;
        };
        let hf = hf_logits(&dir);
        assert_agrees_with_hf(folder, &loaded, adapter.as_ref(), &hf, Agreement::SMOLLM2);
    }
}
