//! Prefix tuning interoperates with HF PEFT in both directions, on fixtures written by
//! `scripts/reference/prefix_tuning.py`: adapters HF PEFT saved (with and without projection, on GPT-2, the
//! grouped-query tiny LLaMA and SmolLM2) load here with HF's logits, padded batches included, and adapters
//! trained here load in HF PEFT with our logits. The trainable-parameter counts equal HF PEFT's.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-prefix --test hf_parity` rewrites the `ours-*-prefix*` adapters
//! (then run the script's `ours` mode to refresh `hf_logits.json`).

use std::path::{Path, PathBuf};

use candle_core::{Device, IndexOp, Tensor};
use peft_core::adapter_io::{load_adapter, read_adapter_config, save_adapter};
use peft_core::generate::last_logits;
use peft_core::hooks::Hooks;
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::model::{BaseModel, Batch};
use peft_core::task::{CausalLm, LmExample};
use peft_core::train::{TrainConfig, Trainer};
use peft_models::LoadedModel;
use peft_prefix::PrefixTuningConfig;
use rand::SeedableRng;
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn tiny(name: &str) -> LoadedModel {
    peft_models::load_folder(&fixture(name), &Device::Cpu).unwrap()
}

fn init(loaded: &LoadedModel, seed: u64) -> InitCtx<'_> {
    InitCtx {
        model: loaded.model.as_ref(),
        tokenizer: loaded.tokenizer.as_ref(),
        rng: rand::rngs::StdRng::seed_from_u64(seed),
    }
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn worst(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len());
    ours.iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Max |ours - reference| over the full last-position logits of every unpadded case and of every row of the
/// padded batch (at its last real token).
fn tiny_logits_diff(model: &dyn BaseModel, hooks: &dyn Hooks, reference: &Value) -> f32 {
    let mut diff = 0f32;
    for case in reference["cases"].as_array().unwrap() {
        let ours: Vec<f32> = last_logits(model, hooks, &u32s(&case["input_ids"]))
            .unwrap()
            .to_vec1()
            .unwrap();
        diff = diff.max(worst(&ours, &f32s(&case["logits"])));
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
        diff = diff.max(worst(&ours, &f32s(&padded["logits"][b])));
    }
    diff
}

/// Max |ours - reference| over the top-20 ids of each SmolLM2 case; the top-1 token must agree.
fn top_logits_diff(model: &dyn BaseModel, hooks: &dyn Hooks, reference: &Value) -> f32 {
    let mut diff = 0f32;
    for case in reference["cases"].as_array().unwrap() {
        let ours: Vec<f32> = last_logits(model, hooks, &u32s(&case["input_ids"]))
            .unwrap()
            .to_vec1()
            .unwrap();
        let top = case["top"].as_array().unwrap();
        for pair in top {
            let (id, logit) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            diff = diff.max((ours[id] - logit).abs());
        }
        let best = (0..ours.len()).fold(0, |b, i| if ours[i] > ours[b] { i } else { b });
        assert_eq!(
            best as u64,
            top[0][0].as_u64().unwrap(),
            "different top-1 token"
        );
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
    config.build(&mut init(loaded, 0)).unwrap().num_trainable()
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
        let reference = read_json(&dir.join("logits.json"));
        let adapter_loaded = load_adapter(&dir, &mut init(&loaded, 0)).unwrap();
        assert!(
            adapter_loaded.warnings.is_empty(),
            "{:?}",
            adapter_loaded.warnings
        );
        let diff = tiny_logits_diff(
            loaded.model.as_ref(),
            adapter_loaded.adapter.as_ref(),
            &reference,
        );
        eprintln!("{adapter}: max |logit diff| vs HF PEFT {diff:e}");
        assert!(diff < 1e-4, "{adapter}: max |logit diff| {diff}");
        // Loaded for inference, the prefix is the folded tensor whatever the projection.
        assert_eq!(adapter_loaded.adapter.trainable().len(), 1);
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
    let adapter = cfg.build(&mut init(loaded, 7)).unwrap();
    let seqs: Vec<LmExample> = [
        [5u32, 6, 7, 8, 9, 10],
        [11, 12, 13, 14, 15, 16],
        [20, 21, 20, 21, 20, 21],
    ]
    .iter()
    .map(|s| LmExample {
        input_ids: s.to_vec(),
        labels: s.iter().map(|&i| i as i64).collect(),
    })
    .collect();
    let task = CausalLm::new(seqs.clone(), seqs, 0).unwrap();
    let out = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        max_steps: 5,
        batch_size: 2,
        learning_rate: 0.05,
        output_dir: out.path().to_path_buf(),
        progress: false,
        ..TrainConfig::default()
    };
    Trainer::new(loaded.model.as_ref(), adapter.as_ref(), &task, config)
        .run()
        .unwrap();
    adapter
}

#[test]
fn our_prefix_adapters_load_in_hf_peft_with_equal_logits() {
    let write = std::env::var_os("PEFT_WRITE_FIXTURES").is_some();
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
        if write {
            save_adapter(&dir, fresh.as_ref(), loaded.model.spec()).unwrap();
            eprintln!("wrote {}", dir.display());
            continue;
        }
        // The committed adapter is what this code writes today (so HF PEFT's logits are about our output).
        let config = read_adapter_config(&dir).unwrap();
        assert_eq!(config.typetag_name(), "PREFIX_TUNING");
        let committed = load_adapter(&dir, &mut init(&loaded, 0)).unwrap().adapter;
        let drift = peft_core::compare::max_abs_diff(
            &fresh.tensors().unwrap()[0].1,
            &committed.tensors().unwrap()[0].1,
        )
        .unwrap();
        assert!(
            drift < 1e-5,
            "{folder}: training today differs from the committed adapter by {drift}"
        );
        let hf = read_json(&dir.join("hf_logits.json"));
        assert_eq!(hf["peft_loaded"], true);
        let diff = tiny_logits_diff(loaded.model.as_ref(), committed.as_ref(), &hf);
        eprintln!("{folder}: max |logit diff| vs HF PEFT {diff:e}");
        assert!(diff < 1e-4, "{folder}: max |logit diff| vs HF PEFT {diff}");
    }
}

/// The SmolLM2 GGUF, from `PEFT_SMOLLM2_GGUF` or the zoo cache.
fn smollm2() -> Option<LoadedModel> {
    let path = peft_models::zoo::local_path("smollm2-135m", "PEFT_SMOLLM2_GGUF");
    match path {
        Some(p) if p.is_file() => Some(peft_models::gguf::load_gguf(&p, &Device::Cpu).unwrap()),
        _ => {
            eprintln!(
                "skipping: SmolLM2-135M is not in the zoo cache (run `peft fetch smollm2-135m`)"
            );
            None
        }
    }
}

#[test]
fn smollm2_hf_prefix_adapter_matches_with_grouped_query_attention() {
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/hf-smollm2-prefix");
    let reference = read_json(&dir.join("logits.json"));
    let adapter = load_adapter(&dir, &mut init(&loaded, 0)).unwrap().adapter;
    // 9 query heads share 3 key/value heads of 64: HF PEFT sizes the prefix 3 x 64.
    let config = read_json(&dir.join("adapter_config.json"));
    assert_eq!(
        (
            config["token_dim"].as_u64(),
            config["num_attention_heads"].as_u64()
        ),
        (Some(192), Some(3))
    );
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let ids = tokenizer
            .encode(case["text"].as_str().unwrap(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(
            ids,
            u32s(&case["input_ids"]),
            "input ids differ for {:?}",
            case["text"]
        );
    }
    let diff = top_logits_diff(loaded.model.as_ref(), adapter.as_ref(), &reference);
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
