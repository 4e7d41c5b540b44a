//! Parity of T5 with Hugging Face transformers: the committed fixtures (written by
//! `scripts/reference/t5_model.py`) hold a tiny T5 v1.1 folder (`tiny-t5`: gated-gelu, untied head) and a tiny
//! T5 v1.0 folder (`tiny-t5/relu-tied`: relu, tied and scaled head, d_kv != d_model / heads, 3 decoder blocks
//! over 2 encoder blocks), with the float32 decoder logits transformers computes for a single sequence, a
//! right-padded batch, the batch with a decoder self-attention prefix passed as HF PEFT passes prefix tuning,
//! and the batch with virtual tokens prepended to the encoder input. The folders are loaded with `load_folder`
//! and every logit must agree within 1e-4, through `forward` and decoding one id at a time through the cache.
//! The relative position buckets are checked against transformers' over a range of distances.

use candle_core::{DType, Tensor};
use peft_core::hooks::{Hooks, NoHooks};
use peft_core::model::{Batch, DecoderCache};
use peft_models::t5::relative_position::bucket;
use peft_testing::{nested_tensor, tensor_diff};
use peft_testing::{RecordedPrefix, RecordedVirtualTokens};
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

fn load(name: &str) -> (peft_models::LoadedModel, Value) {
    peft_testing::fixture_model(name, "logits.json", "t5_model.py")
}

fn ids(v: &Value) -> Tensor {
    nested_tensor(v).to_dtype(DType::U32).unwrap()
}

fn hooks_of(case: &Value) -> Box<dyn Hooks> {
    if let Some(prefix) = case.get("prefix").filter(|p| !p.is_null()) {
        let (keys, values) = (
            nested_tensor(&prefix["key"]),
            nested_tensor(&prefix["value"]),
        );
        assert_eq!(
            keys.dim(3).unwrap(),
            prefix["len"].as_u64().unwrap() as usize
        );
        Box::new(RecordedPrefix::new(&keys, &values))
    } else if let Some(virtual_tokens) = case.get("virtual_tokens").filter(|v| !v.is_null()) {
        Box::new(RecordedVirtualTokens(nested_tensor(virtual_tokens)))
    } else {
        Box::new(NoHooks)
    }
}

/// Checks every case of a fixture, through `forward` and step by step through the decoder cache; returns the
/// largest absolute logit difference of each way.
fn check(name: &str) -> (f32, f32) {
    let (loaded, record) = load(name);
    let model = loaded.model.as_ref();
    let ed = model.encoder_decoder().expect("T5 is an encoder-decoder");
    let (mut worst_full, mut worst_steps) = (0f32, 0f32);
    for case in record["cases"].as_array().expect("cases") {
        let case_name = case["name"].as_str().unwrap();
        let decoder_ids = ids(&case["decoder_input_ids"]);
        let batch = Batch::new(
            ids(&case["input_ids"]),
            nested_tensor(&case["attention_mask"]),
        )
        .unwrap()
        .with_decoder_input_ids(decoder_ids.clone())
        .unwrap();
        let expected = nested_tensor(&case["logits"]);
        let hooks = hooks_of(case);

        let out = model.forward(&batch, hooks.as_ref()).unwrap();
        assert_eq!(out.virtual_tokens, 0);
        let logits = model.logits(&out.hidden).unwrap();
        assert_eq!(
            logits.dims(),
            expected.dims(),
            "{name}/{case_name}: logits shape"
        );
        let full = tensor_diff(&logits, &expected);

        // One decoder id at a time through the cache.
        let encoded = ed.encode(&batch, hooks.as_ref()).unwrap();
        let mut cache = DecoderCache::default();
        let steps: Vec<Tensor> = (0..decoder_ids.dim(1).unwrap())
            .map(|t| {
                let step = decoder_ids.narrow(1, t, 1).unwrap();
                ed.decode(&encoded, &step, &mut cache, hooks.as_ref())
                    .unwrap()
            })
            .collect();
        let stepped = model.logits(&Tensor::cat(&steps, 1).unwrap()).unwrap();
        let steps = tensor_diff(&stepped, &expected);

        println!("{name}/{case_name}: max |logit diff| = {full:.3e} (forward), {steps:.3e} (cached steps)");
        assert!(
            full < TOLERANCE,
            "{name}/{case_name}: forward logits differ from transformers by {full}"
        );
        assert!(
            steps < TOLERANCE,
            "{name}/{case_name}: cached-step logits differ from transformers by {steps}"
        );
        worst_full = worst_full.max(full);
        worst_steps = worst_steps.max(steps);
    }
    (worst_full, worst_steps)
}

#[test]
fn gated_untied_t5_matches_transformers() {
    let (full, steps) = check("tiny-t5");
    println!("tiny-t5: worst {full:.3e} (forward), {steps:.3e} (cached steps)");
}

#[test]
fn relu_tied_t5_matches_transformers() {
    let (full, steps) = check("tiny-t5/relu-tied");
    println!("tiny-t5/relu-tied: worst {full:.3e} (forward), {steps:.3e} (cached steps)");
}

#[test]
fn relative_position_buckets_match_transformers() {
    for name in ["tiny-t5", "tiny-t5/relu-tied"] {
        let (_, record) = load(name);
        for row in record["buckets"].as_array().expect("buckets") {
            let (nb, md) = (
                row["num_buckets"].as_u64().unwrap() as usize,
                row["max_distance"].as_u64().unwrap() as usize,
            );
            let bidirectional = row["bidirectional"].as_bool().unwrap();
            let positions = row["relative_positions"].as_array().unwrap();
            let expected = row["buckets"].as_array().unwrap();
            assert!(positions.len() > 100);
            for (rel, want) in positions.iter().zip(expected) {
                let rel = rel.as_i64().unwrap();
                assert_eq!(
                    bucket(rel, bidirectional, nb, md) as u64,
                    want.as_u64().unwrap(),
                    "{name}: relative position {rel}, {nb} buckets, max distance {md}, bidirectional {bidirectional}"
                );
            }
        }
    }
}

#[test]
fn folders_carry_spec_eos_and_parameter_counts() {
    for (name, head_dim, decoder_blocks, untied) in
        [("tiny-t5", 8, 2, true), ("tiny-t5/relu-tied", 6, 3, false)]
    {
        let (loaded, record) = load(name);
        let model = loaded.model.as_ref();
        let spec = model.spec();
        assert_eq!(
            (
                spec.architecture.as_str(),
                spec.num_layers,
                spec.hidden_size,
                spec.vocab_size
            ),
            ("t5", 2, 32, 100),
            "{name}"
        );
        assert_eq!(
            (spec.num_heads, spec.num_kv_heads, spec.head_dim),
            (4, 4, head_dim),
            "{name}"
        );
        assert!(spec.is_encoder_decoder);
        let last = format!(
            "decoder.block.{}.layer.2.DenseReluDense.wo",
            decoder_blocks - 1
        );
        assert!(spec.find_site(&last).is_some(), "{name}: {last}");
        assert_eq!(loaded.eos_token_id, Some(1));
        assert_eq!(model.encoder_decoder().unwrap().decoder_start_token_id(), 0);
        let has_head = model
            .parameters()
            .iter()
            .any(|(n, _)| n == "lm_head.weight");
        assert_eq!(has_head, untied, "{name}");
        // transformers' num_parameters() counts the tied embeddings once, as the spec does.
        let expected = record["num_parameters"].as_u64().expect("num_parameters") as usize;
        assert_eq!(spec.num_parameters, expected, "{name}");
    }
}
