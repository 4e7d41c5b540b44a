//! LoRA interoperates with HF PEFT in both directions, on fixtures written by `scripts/reference/lora.py`:
//! adapters HF PEFT saved (none of them a no-op) load here with HF's logits and HF's trainable-parameter count,
//! and adapters trained here load in HF PEFT with our logits. Merged adapters give the same logits.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-lora --test hf_parity` rewrites the `ours-*-lora*` adapters (then
//! run the script's `ours` mode to refresh their `hf_logits.json`).

use peft_core::adapter_io::load_adapter;
use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_lora::{BiasMode, InitLoraWeights, LayerSelection, LayersPattern, LoraConfig};
use peft_models::LoadedModel;
use peft_testing::{
    checked_ids, fixture, full_logits_diff, hf_fixture, hf_logits, ids_of, init, logits, max_diff,
    ours_fixture, read_json, smollm2, text_lm_task, tiny, top_logits_diff, toy_trained, train,
    write_fixture, writing_fixtures, SMOLLM2_REVIEWS,
};

/// HF adapter folders on the tiny models, with the base model each was made for.
const HF_TINY: [(&str, &str); 3] = [
    ("hf-tiny-gpt2-lora", "tiny-gpt2"),
    ("hf-tiny-llama-lora", "tiny-llama"),
    ("hf-tiny-llama-lora-rslora", "tiny-llama"),
];

#[test]
fn hf_lora_adapters_load_with_equal_logits_and_trainable_counts_on_tiny_models() {
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
            // The adapter matters: without it the logits are far from HF PEFT's.
            assert!(
                full_logits_diff(model, &NoHooks, case) > 1e-2,
                "{folder} is a no-op"
            );
        }
        // Merged into the weights, the same logits.
        adapter.merge_into(loaded.model.as_mut()).unwrap();
        for case in reference["cases"].as_array().unwrap() {
            let diff = full_logits_diff(loaded.model.as_ref(), adapter.as_ref(), case);
            assert!(diff < 1e-4, "{folder} merged: max |logit diff| {diff}");
        }
    }
}

/// The configs of the `ours-*` adapters: the HF fixtures' settings, trained from HF PEFT's default init.
fn our_config(folder: &str) -> LoraConfig {
    let llama = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"];
    match folder {
        "ours-tiny-gpt2-lora" => LoraConfig {
            lora_dropout: 0.1,
            bias: BiasMode::All,
            ..LoraConfig::new(4, ["c_attn", "c_proj"])
        },
        "ours-tiny-llama-lora" => LoraConfig {
            lora_alpha: 16.0,
            ..LoraConfig::new(4, llama)
        },
        "ours-tiny-llama-lora-rslora" => LoraConfig {
            use_rslora: true,
            layers_to_transform: Some(LayerSelection::Many(vec![1])),
            layers_pattern: Some(LayersPattern::One("layers".into())),
            rank_pattern: [("o_proj".to_string(), 2)].into(),
            alpha_pattern: [("down_proj".to_string(), 4.0)].into(),
            init_lora_weights: InitLoraWeights::Named("gaussian".into()),
            ..LoraConfig::new(4, llama)
        },
        "ours-smollm2-lora" => LoraConfig {
            layers_to_transform: Some(LayerSelection::Many(vec![0, 14, 29])),
            ..LoraConfig::new(4, ["q_proj", "v_proj"])
        },
        other => panic!("no config for {other}"),
    }
}

/// Our adapter for a tiny fixture model, from HF PEFT's default init (B = 0): training moves B.
fn our_trained_adapter(loaded: &LoadedModel, folder: &str, base: &str) -> Box<dyn Adapter> {
    let mut config = our_config(folder);
    config.common.base_model_name_or_path = Some(base.to_string());
    toy_trained(loaded, &config, 0.05).0
}

fn max_abs_b(adapter: &dyn Adapter) -> f32 {
    adapter
        .tensors()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.contains("lora_B"))
        .map(|(_, t)| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0.0, f32::max)
}

#[test]
fn our_lora_adapters_load_in_hf_peft_with_equal_logits() {
    let ours = [
        ("ours-tiny-gpt2-lora", "tiny-gpt2"),
        ("ours-tiny-llama-lora", "tiny-llama"),
        ("ours-tiny-llama-lora-rslora", "tiny-llama"),
    ];
    for (folder, base) in ours {
        let loaded = tiny(base);
        let model = loaded.model.as_ref();
        let dir = fixture(&format!("adapters/{folder}"));
        let fresh = our_trained_adapter(&loaded, folder, base);
        assert!(
            max_abs_b(fresh.as_ref()) > 1e-3,
            "{folder}: training left B at zero"
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

#[test]
fn smollm2_hf_lora_adapter_matches_hf_logits_merged_and_unmerged() {
    let Some(mut loaded) = smollm2() else { return };
    let dir = fixture("adapters/hf-smollm2-lora");
    let adapter = load_adapter(&dir, &mut init(loaded.model.as_ref(), 0))
        .unwrap()
        .adapter;
    let reference = read_json(&dir.join("logits.json"));
    assert_eq!(
        adapter.num_trainable() as u64,
        reference["num_trainable"].as_u64().unwrap()
    );
    let tokenizer = loaded.tokenizer.clone().unwrap();
    for merged in [false, true] {
        if merged {
            adapter.merge_into(loaded.model.as_mut()).unwrap();
        }
        for case in reference["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids = checked_ids(&tokenizer, case);
            let diff = top_logits_diff(loaded.model.as_ref(), adapter.as_ref(), case);
            eprintln!("hf-smollm2-lora (merged: {merged}): max top-20 |logit diff| {diff:.2e}");
            assert!(
                diff < 1e-3,
                "merged {merged}: max |logit diff| {diff} for {text:?}"
            );
            if !merged {
                let base = logits(loaded.model.as_ref(), &NoHooks, &ids);
                let with = logits(loaded.model.as_ref(), adapter.as_ref(), &ids);
                assert!(max_diff(&base, &with) > 1e-2, "the HF adapter is a no-op");
            }
        }
    }
}

#[test]
fn smollm2_lora_trained_here_loads_in_hf_peft() {
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/ours-smollm2-lora");
    let model = loaded.model.as_ref();
    if writing_fixtures() {
        let task = text_lm_task(loaded.tokenizer.as_ref().unwrap(), &SMOLLM2_REVIEWS);
        let mut config = our_config("ours-smollm2-lora");
        config.common.base_model_name_or_path = Some("SmolLM2-135M-Instruct.Q4_1.gguf".into());
        let adapter = config.build(&mut init(model, 7)).unwrap();
        train(model, adapter.as_ref(), &task, 3, 2, 0.01);
        write_fixture(&dir, adapter.as_ref(), model);
        return;
    }
    let adapter = load_adapter(&dir, &mut init(model, 0)).unwrap().adapter;
    assert!(
        max_abs_b(adapter.as_ref()) > 1e-3,
        "the committed adapter was not trained"
    );
    let hf = hf_logits(&dir);
    assert_eq!(
        adapter.num_trainable() as u64,
        hf["num_trainable"].as_u64().unwrap()
    );
    for case in hf["cases"].as_array().unwrap() {
        let diff = top_logits_diff(model, adapter.as_ref(), case);
        eprintln!("ours-smollm2-lora: max top-20 |logit diff| vs HF PEFT {diff:.2e}");
        assert!(diff < 1e-3, "max |logit diff| vs HF PEFT {diff}");
        let ids = ids_of(case);
        let moved = max_diff(
            &logits(model, &NoHooks, &ids),
            &logits(model, adapter.as_ref(), &ids),
        );
        assert!(
            moved > 1e-2,
            "the trained adapter moves the logits by only {moved}"
        );
    }
}
