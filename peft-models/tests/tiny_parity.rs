//! Parity with Hugging Face transformers: the committed fixtures (written by
//! `scripts/reference/tiny_models.py`) hold tiny GPT-2 and LLaMA folders and the float32 logits transformers
//! computes for them, plain, right-padded, and with a key/value prefix given as past key values. The folders
//! are loaded with `load_folder` and every logit must agree within 1e-4.

use peft_core::hooks::{Hooks, NoHooks};
use peft_core::model::Batch;
use peft_testing::nested_tensor;
use peft_testing::RecordedPrefix;
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

fn load(name: &str) -> (peft_models::LoadedModel, Value) {
    peft_testing::fixture_model(name, "logits.json", "tiny_models.py")
}

/// Checks every case of a fixture; returns the largest absolute logit difference.
fn check(name: &str) -> f32 {
    let (loaded, record) = load(name);
    let model = loaded.model.as_ref();
    let mut worst = 0f32;
    for case in record["cases"].as_array().expect("cases") {
        let case_name = case["name"].as_str().unwrap();
        let ids = nested_tensor(&case["input_ids"])
            .to_dtype(candle_core::DType::U32)
            .unwrap();
        let mut mask = nested_tensor(&case["attention_mask"]);
        let expected = nested_tensor(&case["logits"]);
        let hooks: Box<dyn Hooks> = match case.get("prefix").filter(|p| !p.is_null()) {
            Some(prefix) => {
                let p = prefix["len"].as_u64().unwrap() as usize;
                let keys = nested_tensor(&prefix["key"]);
                let values = nested_tensor(&prefix["value"]);
                // HF's mask covers prefix and tokens; the batch carries the tokens' part, the model adds the
                // prefix (all ones in the fixture, as HF PEFT does).
                let width = mask.dim(1).unwrap();
                let prefix_mask = mask
                    .narrow(1, 0, p)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                assert!(prefix_mask.iter().all(|&m| m == 1.0));
                mask = mask.narrow(1, p, width - p).unwrap();
                Box::new(RecordedPrefix::new(&keys, &values))
            }
            None => Box::new(NoHooks),
        };
        let batch = Batch::new(ids, mask).unwrap();
        let out = model.forward(&batch, hooks.as_ref()).unwrap();
        assert_eq!(out.virtual_tokens, 0);
        let logits = model.logits(&out.hidden).unwrap();
        assert_eq!(
            logits.dims(),
            expected.dims(),
            "{name}/{case_name}: logits shape"
        );
        let diff = (logits - &expected)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        println!("{name}/{case_name}: max |logit diff| = {diff:.3e}");
        assert!(
            diff < TOLERANCE,
            "{name}/{case_name}: logits differ from transformers by {diff}"
        );
        worst = worst.max(diff);
    }
    worst
}

#[test]
fn gpt2_matches_transformers() {
    let worst = check("tiny-gpt2");
    println!("tiny-gpt2: worst {worst:.3e}");
}

#[test]
fn llama_matches_transformers() {
    let worst = check("tiny-llama");
    println!("tiny-llama: worst {worst:.3e}");
}

#[test]
fn tied_sharded_f16_llama_matches_transformers() {
    let worst = check("tiny-llama/tied");
    println!("tiny-llama/tied: worst {worst:.3e}");
}

#[test]
fn folders_carry_spec_tokenizer_and_eos() {
    let (gpt2, _) = load("tiny-gpt2");
    let spec = gpt2.model.spec();
    assert_eq!(
        (
            spec.architecture.as_str(),
            spec.num_layers,
            spec.hidden_size,
            spec.vocab_size
        ),
        ("gpt2", 2, 32, 100)
    );
    assert_eq!(spec.max_positions, 64);
    assert!(spec.name_or_path.ends_with("tiny-gpt2"));
    assert_eq!(gpt2.eos_token_id, Some(98));
    let tokenizer = gpt2.tokenizer.expect("tiny-gpt2 has a tokenizer.json");
    assert_eq!(
        tokenizer.encode("w5 w17", false).unwrap().get_ids(),
        &[5, 17]
    );

    let (llama, _) = load("tiny-llama");
    let spec = llama.model.spec();
    assert_eq!(
        (spec.num_heads, spec.num_kv_heads, spec.head_dim),
        (4, 2, 8)
    );
    assert!(llama.tokenizer.is_none());
    assert_eq!(llama.eos_token_id, Some(2));
}

#[test]
fn parameter_counts_match_transformers() {
    // transformers' num_parameters() counts a tied head once, as the spec does.
    for name in ["tiny-gpt2", "tiny-llama", "tiny-llama/tied"] {
        let (loaded, record) = load(name);
        let expected = record["num_parameters"].as_u64().expect("num_parameters") as usize;
        assert_eq!(loaded.model.spec().num_parameters, expected, "{name}");
        let listed: usize = loaded
            .model
            .parameters()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum();
        assert_eq!(listed, expected, "{name}");
    }
}
