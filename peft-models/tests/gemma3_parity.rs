//! Gemma-3 parity with Hugging Face transformers (fixtures written by `scripts/reference/gemma3_model.py`):
//!
//! - `fixtures/tiny-gemma3/`: a random Gemma3ForCausalLM folder (a sliding layer with a window shorter than the
//!   sequences, a global layer) and its float32 logits, plain, right-padded, and after a key/value prefix in the
//!   cache HF PEFT builds for Gemma-3; `tiny-gemma3/softcap/` the same with attention and final logit
//!   soft-capping set (transformers' Gemma-3 applies the final one only), stored as float16. Every logit within
//!   1e-5 (the fixture rounds them to 6 decimals).
//! - `fixtures/gemma3-270m/logits.json`: the real Gemma-3-270M Q4_K_M GGUF as transformers loads it, the 20
//!   largest logits at every position of a few texts, from the recorded input ids; each within 1e-3. Needs the
//!   GGUF (the zoo's `gemma3-270m`, or `PEFT_GEMMA3_GGUF=<file>`); skipped, saying so, without it.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, IndexOp};
use peft_core::hooks::{Hooks, NoHooks};
use peft_core::model::Batch;
use peft_models::gguf_gemma3::load_gemma3_gguf;
use peft_models::LoadOptions;
use peft_testing::{nested_tensor, RecordedPrefix};
use serde::Deserialize;
use serde_json::Value;

const TINY_TOLERANCE: f32 = 1e-5;
const REAL_TOLERANCE: f32 = 1e-3;

/// Checks every case of a tiny fixture; returns the largest absolute logit difference.
fn check_tiny(name: &str, cases_expected: usize) -> f32 {
    let (loaded, record) = peft_testing::fixture_model(name, "logits.json", "gemma3_model.py");
    let model = loaded.model.as_ref();
    assert_eq!(model.spec().architecture, "gemma3_text");
    let cases = record["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), cases_expected, "{name}: cases");
    let mut worst = 0f32;
    for case in cases {
        let case_name = case["name"].as_str().unwrap();
        let ids = nested_tensor(&case["input_ids"])
            .to_dtype(DType::U32)
            .unwrap();
        let mut mask = nested_tensor(&case["attention_mask"]);
        let expected = nested_tensor(&case["logits"]);
        let hooks: Box<dyn Hooks> = match case.get("prefix").filter(|p| !p.is_null()) {
            Some(prefix) => {
                let p = prefix["len"].as_u64().unwrap() as usize;
                let width = mask.dim(1).unwrap();
                // HF's mask covers prefix and tokens (all ones over the prefix); the batch carries the tokens'.
                mask = mask.narrow(1, p, width - p).unwrap();
                Box::new(RecordedPrefix::new(
                    &nested_tensor(&prefix["key"]),
                    &nested_tensor(&prefix["value"]),
                ))
            }
            None => Box::new(NoHooks),
        };
        let out = model
            .forward(&Batch::new(ids, mask).unwrap(), hooks.as_ref())
            .unwrap();
        let logits = model.logits(&out.hidden).unwrap();
        assert_eq!(logits.dims(), expected.dims(), "{name}/{case_name}");
        let diff = peft_core::compare::max_abs_diff(&logits, &expected).unwrap();
        println!("{name}/{case_name}: max |logit diff| = {diff:.3e}");
        assert!(
            diff < TINY_TOLERANCE,
            "{name}/{case_name}: logits differ from transformers by {diff}"
        );
        worst = worst.max(diff);
    }
    let expected = record["num_parameters"].as_u64().unwrap() as usize;
    assert_eq!(model.spec().num_parameters, expected, "{name}: parameters");
    worst
}

#[test]
fn tiny_gemma3_matches_transformers() {
    let worst = check_tiny("tiny-gemma3", 3);
    println!("tiny-gemma3: worst {worst:.3e}");
}

#[test]
fn tiny_softcapped_gemma3_matches_transformers() {
    let worst = check_tiny("tiny-gemma3/softcap", 2);
    println!("tiny-gemma3/softcap: worst {worst:.3e}");
}

#[derive(Deserialize)]
struct Fixture {
    meta: Value,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    input_ids: Vec<u32>,
    /// Per position, the 20 largest logits as (id, value), largest first.
    top: Vec<Vec<(u32, f32)>>,
}

/// The zoo's Gemma-3-270M GGUF (`peft fetch gemma3-270m`, or `PEFT_GEMMA3_GGUF=<file>`), or `None` after the
/// shared skip helper said why.
fn gemma3_gguf() -> Option<PathBuf> {
    peft_testing::zoo_model_path("gemma3-270m", "PEFT_GEMMA3_GGUF")
}

#[test]
fn gemma3_270m_gguf_matches_transformers() {
    let Some(gguf) = gemma3_gguf() else { return };
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gemma3-270m/logits.json");
    let fixture: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(fixture.meta["top_k"], 20);
    assert!(fixture.cases.len() >= 3);

    let dev = Device::Cpu;
    let started = Instant::now();
    let loaded = load_gemma3_gguf(&gguf, &dev, LoadOptions::default()).unwrap();
    println!("loaded in {:.1?}", started.elapsed());
    let model = loaded.model.as_ref();
    let spec = model.spec();
    assert_eq!(
        (spec.num_layers, spec.hidden_size, spec.vocab_size),
        (18, 640, 262_144)
    );
    assert_eq!(
        (spec.num_heads, spec.num_kv_heads, spec.head_dim),
        (4, 1, 256)
    );

    let mut worst = 0f32;
    for case in &fixture.cases {
        let ids = &case.input_ids;
        let out = model
            .forward(&Batch::single(ids, &dev).unwrap(), &NoHooks)
            .unwrap();
        let logits = model.logits(&out.hidden.i(0).unwrap()).unwrap(); // [T, vocab]
        assert_eq!(case.top.len(), ids.len(), "{:?}: positions", case.text);
        for (t, top) in case.top.iter().enumerate() {
            let row: Vec<f32> = logits.i(t).unwrap().to_vec1().unwrap();
            let mut ours: Vec<(u32, f32)> = row
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l))
                .collect();
            ours.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (rank, (&(ref_id, ref_logit), &(our_id, our_logit))) in
                top.iter().zip(&ours).enumerate()
            {
                let diff = (row[ref_id as usize] - ref_logit).abs();
                worst = worst.max(diff);
                assert!(
                    diff <= REAL_TOLERANCE,
                    "{:?} position {t}: logit of token {ref_id} is {} here, {ref_logit} in transformers",
                    case.text,
                    row[ref_id as usize]
                );
                // A different id at a rank is fine only where the two logits tie within the tolerance.
                assert!(
                    our_id == ref_id || (our_logit - ref_logit).abs() <= REAL_TOLERANCE,
                    "{:?} position {t} rank {rank}: token {our_id} ({our_logit}) here, {ref_id} ({ref_logit}) in \
                     transformers",
                    case.text
                );
            }
        }
    }
    println!(
        "Gemma-3-270M GGUF: max |logit - transformers| over every position's top-20: {worst:.3e}"
    );

    // Forward time of one 32-token text (the measure the report quotes; no assertion on it).
    let ids: Vec<u32> = (0..32).map(|i| 1000 + 37 * i).collect();
    let batch = Batch::single(&ids, &dev).unwrap();
    model.forward(&batch, &NoHooks).unwrap();
    let started = Instant::now();
    let runs = 3;
    for _ in 0..runs {
        let out = model.forward(&batch, &NoHooks).unwrap();
        model.logits(&out.hidden.i((0, 31)).unwrap()).unwrap();
    }
    println!(
        "Gemma-3-270M forward of 32 tokens (+ last-position logits): {:.1?} per run",
        started.elapsed() / runs
    );
}
