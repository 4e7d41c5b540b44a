//! LoRA interoperates with HF PEFT in both directions, on fixtures written by `scripts/reference/lora.py`:
//! adapters HF PEFT saved (none of them a no-op) load here with HF's logits and HF's trainable-parameter count,
//! and adapters trained here load in HF PEFT with our logits. Merged adapters give the same logits.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-lora --test hf_parity` rewrites the `ours-*-lora*` adapters (then
//! run the script's `ours` mode to refresh their `hf_logits.json`).

use peft_core::method::{Adapter, PeftMethod};
use peft_lora::{BiasMode, InitLoraWeights, LayerSelection, LayersPattern, LoraConfig};
use peft_models::LoadedModel;
use peft_testing::{
    assert_agrees_with_hf, assert_cases_agree, committed_or_written, fixture, hf_fixture,
    hf_logits, init, ours_fixture, smollm2, text_lm_task, tiny, toy_trained, train, Agreement,
    SMOLLM2_REVIEWS,
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
        assert_agrees_with_hf(
            folder,
            &loaded,
            adapter.as_ref(),
            &reference,
            Agreement::TINY,
        );
        // Merged into the weights, the same logits.
        adapter.merge_into(loaded.model.as_mut()).unwrap();
        let merged = Agreement::TINY.merged();
        let name = format!("{folder} merged");
        assert_cases_agree(
            &name,
            &loaded,
            adapter.as_ref(),
            &reference["cases"],
            merged,
        );
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
        let trained = Agreement::TINY.with_min_effect(1e-4);
        assert_agrees_with_hf(folder, &loaded, committed.as_ref(), &hf, trained);
    }
}

#[test]
fn smollm2_hf_lora_adapter_matches_hf_logits_merged_and_unmerged() {
    let Some(mut loaded) = smollm2() else { return };
    let dir = fixture("adapters/hf-smollm2-lora");
    let (adapter, reference) = hf_fixture(&dir, &mut init(loaded.model.as_ref(), 0));
    assert_agrees_with_hf(
        "hf-smollm2-lora",
        &loaded,
        adapter.as_ref(),
        &reference,
        Agreement::SMOLLM2,
    );
    adapter.merge_into(loaded.model.as_mut()).unwrap();
    let merged = Agreement::SMOLLM2.merged();
    let cases = &reference["cases"];
    assert_cases_agree(
        "hf-smollm2-lora merged",
        &loaded,
        adapter.as_ref(),
        cases,
        merged,
    );
}

/// Our SmolLM2 adapter: the HF fixture's settings from HF PEFT's default init, 3 steps on two reviews.
fn smollm2_trained_adapter(loaded: &LoadedModel) -> Box<dyn Adapter> {
    let model = loaded.model.as_ref();
    let task = text_lm_task(loaded.tokenizer.as_ref().unwrap(), &SMOLLM2_REVIEWS);
    let mut config = our_config("ours-smollm2-lora");
    config.common.base_model_name_or_path = Some("SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let adapter = config.build(&mut init(model, 7)).unwrap();
    train(model, adapter.as_ref(), &task, 3, 2, 0.01);
    adapter
}

#[test]
fn smollm2_lora_trained_here_loads_in_hf_peft() {
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/ours-smollm2-lora");
    let ctx = init(loaded.model.as_ref(), 0);
    let Some(adapter) = committed_or_written(&dir, ctx, || smollm2_trained_adapter(&loaded)) else {
        return;
    };
    assert!(
        max_abs_b(adapter.as_ref()) > 1e-3,
        "the committed adapter was not trained"
    );
    let hf = hf_logits(&dir);
    assert_agrees_with_hf(
        "ours-smollm2-lora",
        &loaded,
        adapter.as_ref(),
        &hf,
        Agreement::SMOLLM2,
    );
}
