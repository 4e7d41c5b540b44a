//! Helpers shared by this crate's integration tests: fixture paths, models, and logit comparisons.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};

use candle_core::Device;
use peft_core::generate::last_logits;
use peft_core::hooks::Hooks;
use peft_core::method::InitCtx;
use peft_core::model::BaseModel;
use peft_models::LoadedModel;
use rand::SeedableRng;
use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A path under `fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A tiny HF-saved fixture model (`tiny-gpt2`, `tiny-llama`).
pub fn tiny(name: &str) -> LoadedModel {
    peft_models::load_folder(&fixture(name), &Device::Cpu).unwrap()
}

pub fn init(model: &dyn BaseModel, seed: u64) -> InitCtx<'_> {
    InitCtx {
        model,
        tokenizer: None,
        rng: rand::rngs::StdRng::seed_from_u64(seed),
    }
}

pub fn init_loaded(loaded: &LoadedModel, seed: u64) -> InitCtx<'_> {
    InitCtx {
        model: loaded.model.as_ref(),
        tokenizer: loaded.tokenizer.as_ref(),
        rng: rand::rngs::StdRng::seed_from_u64(seed),
    }
}

pub fn ids_of(case: &Value) -> Vec<u32> {
    case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

pub fn logits(model: &dyn BaseModel, hooks: &dyn Hooks, ids: &[u32]) -> Vec<f32> {
    last_logits(model, hooks, ids).unwrap().to_vec1().unwrap()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Max |ours - reference| over the full-vocabulary logits `case[key]`.
pub fn full_logits_diff(model: &dyn BaseModel, hooks: &dyn Hooks, case: &Value, key: &str) -> f32 {
    let reference: Vec<f32> = case[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    max_diff(&logits(model, hooks, &ids_of(case)), &reference)
}

/// Max |ours - reference| over a case's top-20 reference logits; the top-1 token must agree.
pub fn top_logits_diff(model: &dyn BaseModel, hooks: &dyn Hooks, case: &Value) -> f32 {
    let ours = logits(model, hooks, &ids_of(case));
    let mut worst = 0f32;
    for pair in case["top"].as_array().unwrap() {
        let (id, logit) = (
            pair[0].as_u64().unwrap() as usize,
            pair[1].as_f64().unwrap() as f32,
        );
        worst = worst.max((ours[id] - logit).abs());
    }
    let best = ours
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0;
    assert_eq!(
        best as u64,
        case["top"][0][0].as_u64().unwrap(),
        "different top-1 token"
    );
    worst
}

/// The SmolLM2 GGUF, from `PEFT_SMOLLM2_GGUF` or the zoo cache; `None` (with the reason printed) when absent.
pub fn smollm2() -> Option<LoadedModel> {
    match peft_models::zoo::local_path("smollm2-135m", "PEFT_SMOLLM2_GGUF") {
        Some(p) if p.is_file() => Some(peft_models::gguf::load_gguf(&p, &Device::Cpu).unwrap()),
        _ => {
            eprintln!(
                "skipping: SmolLM2-135M is not in the zoo cache (run `peft fetch smollm2-135m`)"
            );
            None
        }
    }
}
