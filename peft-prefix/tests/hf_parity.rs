//! Prefix tuning interoperates with HF PEFT in both directions, on fixtures written by
//! `scripts/reference/prefix_tuning.py`: adapters HF PEFT saved (with and without projection, on GPT-2, the
//! grouped-query tiny LLaMA and SmolLM2) load here with HF's logits, padded batches included, and adapters
//! trained here load in HF PEFT with our logits. The trainable-parameter counts equal HF PEFT's.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-prefix --test hf_parity` rewrites the `ours-*-prefix*` adapters
//! (then run the script's `ours` mode to refresh `hf_logits.json`).

use std::path::Path;

use candle_core::{Device, IndexOp, Tensor};
use peft_core::adapter_io::{load_adapter, read_adapter_config};
use peft_core::hooks::Hooks;
use peft_core::method::{Adapter, CommonConfig, PeftMethod};
use peft_core::model::{BaseModel, Batch};
use peft_models::LoadedModel;
use peft_prefix::PrefixTuningConfig;
use peft_testing::{
    f32s, fixture, full_logits_diff, hf_fixture, hf_logits, init_loaded, max_diff, ours_fixture,
    read_json, smollm2, text_cases_top_diffs, tiny, toy_trained, u32s,
};
use serde_json::Value;

/// Max |ours - reference| over the full last-position logits of every unpadded case and of every row of the
/// padded batch (at its last real token).
fn tiny_logits_diff(model: &dyn BaseModel, hooks: &dyn Hooks, reference: &Value) -> f32 {
    let mut diff = 0f32;
    for case in reference["cases"].as_array().unwrap() {
        diff = diff.max(full_logits_diff(model, hooks, case));
    }
    let padded = &reference["padded"];
    let rows: Vec<Vec<u32>> = padded["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    let mask: Vec<Vec<u32>> = padded["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    assert!(
        mask.iter().any(|m| m.contains(&0)),
        "the padded case has padding"
    );
    let batch = Batch::new(
        Tensor::new(rows, &Device::Cpu).unwrap(),
        Tensor::new(mask.clone(), &Device::Cpu).unwrap(),
    )
    .unwrap();
    let out = peft_core::grad::no_grad(|| model.forward(&batch, hooks)).unwrap();
    for (b, m) in mask.iter().enumerate() {
        let last = m.iter().filter(|&&x| x == 1).count() - 1;
        let hidden = out.hidden.i((b, out.virtual_tokens + last)).unwrap();
        let ours: Vec<f32> = model
            .logits(&hidden.unsqueeze(0).unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        diff = diff.max(max_diff(&ours, &f32s(&padded["logits"][b])));
    }
    diff
}

/// The trainable-parameter count of `dir`'s config built for training on `model` (HF PEFT's count was taken
/// before it saved, with `inference_mode` false).
fn trainable_for_training(dir: &Path, loaded: &LoadedModel, projection: Option<bool>) -> usize {
    let mut config: PrefixTuningConfig =
        serde_json::from_value(read_json(&dir.join("adapter_config.json"))).unwrap();
    config.common = CommonConfig {
        inference_mode: false,
        ..config.common
    };
    if let Some(p) = projection {
        config.prefix_projection = p;
    }
    config
        .build(&mut init_loaded(loaded, 0))
        .unwrap()
        .num_trainable()
}

#[test]
fn hf_prefix_adapters_load_with_equal_logits_on_tiny_models() {
    for (model_name, adapter) in [
        ("tiny-gpt2", "hf-tiny-gpt2-prefix"),
        ("tiny-llama", "hf-tiny-llama-prefix"),
        ("tiny-llama", "hf-tiny-llama-prefix-proj"),
    ] {
        let loaded = tiny(model_name);
        let dir = fixture(&format!("adapters/{adapter}"));
        let (adapter_loaded, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
        let diff = tiny_logits_diff(loaded.model.as_ref(), adapter_loaded.as_ref(), &reference);
        eprintln!("{adapter}: max |logit diff| vs HF PEFT {diff:e}");
        assert!(diff < 1e-4, "{adapter}: max |logit diff| {diff}");
        // Loaded for inference, the prefix is the folded tensor whatever the projection.
        assert_eq!(adapter_loaded.trainable().len(), 1);
        let count = trainable_for_training(&dir, &loaded, None);
        assert_eq!(
            count as u64,
            reference["trainable_params"].as_u64().unwrap(),
            "{adapter}: trainable parameters differ from HF PEFT's"
        );
    }
}

/// Our adapter for a tiny fixture model: seed 7, then 5 steps of causal-LM training with the shared trainer.
fn our_trained_adapter(loaded: &LoadedModel, name: &str, projection: bool) -> Box<dyn Adapter> {
    let mut cfg = if projection {
        PrefixTuningConfig::with_projection(3, Some(12))
    } else {
        PrefixTuningConfig::p_tuning_v2(3)
    };
    cfg.common.base_model_name_or_path = Some(name.to_string());
    toy_trained(loaded, &cfg, 0.05).0
}

#[test]
fn our_prefix_adapters_load_in_hf_peft_with_equal_logits() {
    for (name, projection) in [
        ("tiny-gpt2", false),
        ("tiny-llama", false),
        ("tiny-gpt2", true),
        ("tiny-llama", true),
    ] {
        let loaded = tiny(name);
        let folder = format!(
            "ours-{name}-prefix{}",
            if projection { "-proj" } else { "" }
        );
        let dir = fixture(&format!("adapters/{folder}"));
        let fresh = our_trained_adapter(&loaded, name, projection);
        // The committed adapter is what this code writes today (so HF PEFT's logits are about our output).
        let Some(committed) = ours_fixture(&dir, fresh.as_ref(), init_loaded(&loaded, 0)) else {
            continue;
        };
        let config = read_adapter_config(&dir).unwrap();
        assert_eq!(config.typetag_name(), "PREFIX_TUNING");
        let diff = tiny_logits_diff(loaded.model.as_ref(), committed.as_ref(), &hf_logits(&dir));
        eprintln!("{folder}: max |logit diff| vs HF PEFT {diff:e}");
        assert!(diff < 1e-4, "{folder}: max |logit diff| vs HF PEFT {diff}");
    }
}

#[test]
fn smollm2_hf_prefix_adapter_matches_with_grouped_query_attention() {
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/hf-smollm2-prefix");
    let reference = read_json(&dir.join("logits.json"));
    let adapter = load_adapter(&dir, &mut init_loaded(&loaded, 0))
        .unwrap()
        .adapter;
    // 9 query heads share 3 key/value heads of 64: HF PEFT sizes the prefix 3 x 64.
    let config = read_json(&dir.join("adapter_config.json"));
    assert_eq!(
        (
            config["token_dim"].as_u64(),
            config["num_attention_heads"].as_u64()
        ),
        (Some(192), Some(3))
    );
    let diff = text_cases_top_diffs(&loaded, adapter.as_ref(), &reference)
        .into_iter()
        .fold(0f32, |worst, (_, diff)| worst.max(diff));
    eprintln!("hf-smollm2-prefix: max |top-20 logit diff| vs HF PEFT {diff:e}");
    assert!(diff < 1e-3, "max |logit diff| {diff}");
    for (projection, key) in [
        (false, "trainable_params"),
        (true, "trainable_params_with_projection"),
    ] {
        assert_eq!(
            trainable_for_training(&dir, &loaded, Some(projection)) as u64,
            reference[key].as_u64().unwrap(),
            "{key}"
        );
    }
}
