//! all-MiniLM-L6-v2 (the zoo's `minilm-l6`, real weights) against sentence-transformers: the committed
//! `fixtures/minilm/embeddings.json` (written by `scripts/reference/minilm_embed.py` with transformers) holds the
//! tokenizer's ids and the sentence embeddings (mean of the last hidden states over real tokens, L2-normalised)
//! of a few sentences, and the pooler output of the first. The model comes from the zoo cache; where it has not
//! been fetched the tests skip, saying so.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use peft_core::hooks::NoHooks;
use peft_core::model::Batch;
use peft_models::sentence::sentence_embedding;
use peft_testing::minilm;
use serde_json::Value;

/// Cosine every embedding must reach against sentence-transformers'.
const MIN_COSINE: f32 = 0.99999;

fn record() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/minilm/embeddings.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate it with scripts/reference/minilm_embed.py",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("embeddings.json is valid JSON")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0., f32::max)
}

#[test]
fn minilm_matches_sentence_transformers() {
    let Some(loaded) = minilm() else { return };
    let record = record();
    let cases = record["cases"].as_array().expect("cases");
    let model = loaded.model.as_ref();
    let spec = model.spec();
    assert_eq!(
        (
            spec.architecture.as_str(),
            spec.num_layers,
            spec.hidden_size,
            spec.num_heads
        ),
        ("bert", 6, 384, 12)
    );

    // The tokenizer: the folder's tokenizer.json pads every encoding to 128 by itself; without padding its ids
    // equal transformers'.
    let mut tokenizer = loaded
        .tokenizer
        .clone()
        .expect("minilm-l6 has a tokenizer.json");
    tokenizer.with_padding(None);
    let mut rows = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected = u32s(&case["input_ids"]);
        let ours = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(ours, expected, "token ids of {text:?}");
        rows.push(expected);
    }

    // Each sentence alone.
    let dev = Device::Cpu;
    for (case, ids) in cases.iter().zip(&rows) {
        let text = case["text"].as_str().unwrap();
        let expected = f32s(&case["embedding"]);
        let batch = Batch::single(ids, &dev).unwrap();
        let ours = sentence_embedding(model, &batch, &NoHooks).unwrap();
        let ours = ours.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let (cos, diff) = (cosine(&ours, &expected), max_abs_diff(&ours, &expected));
        println!(
            "single  {:3} tokens: cosine {cos:.8}, max |diff| {diff:.3e}  {text:.40}",
            ids.len()
        );
        assert!(cos > MIN_COSINE, "{text:?}: cosine {cos}");
    }

    // All sentences as one right-padded batch: padding must not change any embedding.
    let longest = rows.iter().map(Vec::len).max().unwrap();
    let pad = 0u32;
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for row in &rows {
        ids.extend(
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, longest - row.len())),
        );
        mask.extend((0..longest).map(|i| if i < row.len() { 1f32 } else { 0. }));
    }
    let n = rows.len();
    let batch = Batch::new(
        Tensor::from_vec(ids, (n, longest), &dev).unwrap(),
        Tensor::from_vec(mask, (n, longest), &dev).unwrap(),
    )
    .unwrap();
    let batched = sentence_embedding(model, &batch, &NoHooks)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (case, ours) in cases.iter().zip(&batched) {
        let text = case["text"].as_str().unwrap();
        let expected = f32s(&case["embedding"]);
        let (cos, diff) = (cosine(ours, &expected), max_abs_diff(ours, &expected));
        println!(
            "batched (padded to {longest}): cosine {cos:.8}, max |diff| {diff:.3e}  {text:.40}"
        );
        assert!(cos > MIN_COSINE, "{text:?} in a padded batch: cosine {cos}");
    }

    // The pooler output of the first sentence.
    let first = Batch::single(&rows[0], &dev).unwrap();
    let out = model.forward(&first, &NoHooks).unwrap();
    let pooled = model.pooled(&out, &first, &NoHooks).unwrap();
    assert_eq!(pooled.dtype(), DType::F32);
    let pooled = pooled.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
    let expected = f32s(&record["pooler_output_of_first"]);
    let (cos, diff) = (cosine(&pooled, &expected), max_abs_diff(&pooled, &expected));
    println!("pooler output: cosine {cos:.8}, max |diff| {diff:.3e}");
    assert!(cos > MIN_COSINE, "pooler output: cosine {cos}");
    assert!(diff < 1e-4, "pooler output: max |diff| {diff}");
}
