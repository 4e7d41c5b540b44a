//! Prompt tuning interoperates with HF PEFT in both directions, on fixtures written by
//! `scripts/reference/prompt_tuning.py`: adapters HF PEFT saved load here with HF's logits, and adapters saved
//! here load in HF PEFT with our logits.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-prompt --test hf_parity` rewrites the `ours-*` adapters (then run
//! the script's `ours` mode to refresh `hf_logits.json`).

use std::path::{Path, PathBuf};

use candle_core::Device;
use peft_core::adapter_io::{load_adapter, save_adapter};
use peft_core::generate::last_logits;
use peft_core::hooks::Hooks;
use peft_core::method::{Adapter, InitCtx, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::task::{CausalLm, LmExample};
use peft_core::train::{TrainConfig, Trainer};
use peft_models::LoadedModel;
use peft_prompt::{PromptTuningConfig, PromptTuningInit};
use rand::SeedableRng;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
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

fn ids_of(case: &Value) -> Vec<u32> {
    case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// Max |ours - reference| over full-vocabulary logits.
fn full_logits_diff(model: &dyn BaseModel, hooks: &dyn Hooks, case: &Value, key: &str) -> f32 {
    let ours: Vec<f32> = last_logits(model, hooks, &ids_of(case))
        .unwrap()
        .to_vec1()
        .unwrap();
    let reference: Vec<f32> = case[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(ours.len(), reference.len());
    ours.iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Checks our logits against a top-20 reference: each listed id's logit within `tol`.
fn top_logits_diff(model: &dyn BaseModel, hooks: &dyn Hooks, case: &Value) -> f32 {
    let ours: Vec<f32> = last_logits(model, hooks, &ids_of(case))
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut worst = 0f32;
    for pair in case["top"].as_array().unwrap() {
        let (id, logit) = (
            pair[0].as_u64().unwrap() as usize,
            pair[1].as_f64().unwrap() as f32,
        );
        worst = worst.max((ours[id] - logit).abs());
    }
    let best_ours = ours
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0;
    assert_eq!(
        best_ours as u64,
        case["top"][0][0].as_u64().unwrap(),
        "different top-1 token"
    );
    worst
}

#[test]
fn hf_prompt_adapters_load_with_equal_logits_on_tiny_models() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let loaded = tiny(name);
        let dir = fixture(&format!("adapters/hf-{name}-random"));
        let adapter = load_adapter(&dir, &mut init(&loaded, 0)).unwrap();
        assert!(adapter.warnings.is_empty(), "{:?}", adapter.warnings);
        for case in read_json(&dir.join("logits.json"))["cases"]
            .as_array()
            .unwrap()
        {
            let diff = full_logits_diff(
                loaded.model.as_ref(),
                adapter.adapter.as_ref(),
                case,
                "logits",
            );
            assert!(diff < 1e-4, "{name}: max |logit diff| {diff}");
        }
    }
}

/// Our adapter for a tiny fixture model: RANDOM init (seed 7), then 5 steps of causal-LM training.
fn our_trained_adapter(loaded: &LoadedModel, name: &str) -> Box<dyn Adapter> {
    let mut cfg = PromptTuningConfig::new(4, PromptTuningInit::Random);
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
fn our_prompt_adapters_load_in_hf_peft_with_equal_logits() {
    let write = std::env::var_os("PEFT_WRITE_FIXTURES").is_some();
    for name in ["tiny-gpt2", "tiny-llama"] {
        let loaded = tiny(name);
        let dir = fixture(&format!("adapters/ours-{name}"));
        let fresh = our_trained_adapter(&loaded, name);
        if write {
            save_adapter(&dir, fresh.as_ref(), loaded.model.spec()).unwrap();
            eprintln!("wrote {}", dir.display());
            continue;
        }
        // The committed adapter is what this code writes today (so HF PEFT's logits are about our output).
        let committed = load_adapter(&dir, &mut init(&loaded, 0)).unwrap().adapter;
        let (a, b) = (
            &fresh.tensors().unwrap()[0].1,
            &committed.tensors().unwrap()[0].1,
        );
        let drift = peft_core::compare::max_abs_diff(a, b).unwrap();
        assert!(
            drift < 1e-5,
            "{name}: training today differs from the committed adapter by {drift}"
        );
        let hf = read_json(&dir.join("hf_logits.json"));
        assert_eq!(hf["peft_loaded"], true);
        for case in hf["cases"].as_array().unwrap() {
            let diff = full_logits_diff(loaded.model.as_ref(), committed.as_ref(), case, "logits");
            assert!(diff < 1e-4, "{name}: max |logit diff| vs HF PEFT {diff}");
        }
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
fn smollm2_hf_text_adapter_matches_and_our_text_init_equals_hf() {
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/hf-smollm2-text");
    let adapter = load_adapter(&dir, &mut init(&loaded, 0)).unwrap();
    let reference = read_json(&dir.join("logits.json"));
    for case in reference["cases"].as_array().unwrap() {
        let tokenizer = loaded.tokenizer.as_ref().unwrap();
        let ids = tokenizer
            .encode(case["text"].as_str().unwrap(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, ids_of(case), "input ids differ for {:?}", case["text"]);
        let diff = top_logits_diff(loaded.model.as_ref(), adapter.adapter.as_ref(), case);
        assert!(
            diff < 1e-3,
            "max |logit diff| {diff} for {:?}",
            case["text"]
        );
    }
    // TEXT init here equals HF PEFT's TEXT init for the same text.
    let mut cfg = PromptTuningConfig::new(8, PromptTuningInit::Text);
    cfg.prompt_tuning_init_text = Some(reference["init_text"].as_str().unwrap().to_string());
    let ours = cfg.build(&mut init(&loaded, 0)).unwrap();
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
    let adapter = load_adapter(&dir, &mut init(&loaded, 0)).unwrap();
    let hf = read_json(&dir.join("hf_logits.json"));
    assert_eq!(hf["peft_loaded"], true);
    for case in hf["cases"].as_array().unwrap() {
        let diff = top_logits_diff(loaded.model.as_ref(), adapter.adapter.as_ref(), case);
        assert!(diff < 1e-3, "max |logit diff| vs HF PEFT {diff}");
    }
}
