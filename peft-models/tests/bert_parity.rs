//! Parity with Hugging Face transformers' `BertModel`: the committed fixture `fixtures/tiny-bert/` (written by
//! `scripts/reference/bert_model.py`) holds a tiny BERT folder and the float32 last hidden states and pooler
//! outputs transformers computes for a single sequence, a right-padded batch with token type ids, that batch
//! with a key/value prefix given as past key values, and that batch with virtual tokens prepended to the word
//! embeddings (prompt tuning). The folder is loaded with `load_folder`; every value must agree within 1e-4.

use candle_core::DType;
use peft_core::hooks::{Hooks, NoHooks};
use peft_core::model::Batch;
use peft_testing::{nested_tensor, tensor_diff};
use peft_testing::{RecordedPrefix, RecordedVirtualTokens};
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

/// The fixture is committed: a missing folder is a failure, never a skip.
fn load() -> (peft_models::LoadedModel, Value) {
    peft_testing::fixture_model("tiny-bert", "states.json", "bert_model.py")
}

#[test]
fn bert_matches_transformers() {
    let (loaded, record) = load();
    let model = loaded.model.as_ref();
    let mut worst = 0f32;
    let mut names = Vec::new();
    for case in record["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().unwrap();
        names.push(name.to_string());
        let ids = nested_tensor(&case["input_ids"])
            .to_dtype(DType::U32)
            .unwrap();
        let mut mask = nested_tensor(&case["attention_mask"]);
        let mut virtual_tokens = 0;
        let hooks: Box<dyn Hooks> = if let Some(prefix) = case.get("prefix") {
            let p = prefix["len"].as_u64().unwrap() as usize;
            let keys = nested_tensor(&prefix["key"]);
            let values = nested_tensor(&prefix["value"]);
            // HF's mask covers prefix and tokens; the batch carries the tokens' part, the model adds the prefix
            // (all ones in the fixture, as HF PEFT does).
            let width = mask.dim(1).unwrap();
            let prefix_mask = mask.narrow(1, 0, p).unwrap().flatten_all().unwrap();
            assert!(prefix_mask
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|&m| m == 1.0));
            mask = mask.narrow(1, p, width - p).unwrap();
            Box::new(RecordedPrefix::new(&keys, &values))
        } else if let Some(virt) = case.get("virtual") {
            let embeddings = nested_tensor(&virt["embeddings"]);
            virtual_tokens = embeddings.dim(0).unwrap();
            Box::new(RecordedVirtualTokens(embeddings))
        } else {
            Box::new(NoHooks)
        };
        let mut batch = Batch::new(ids, mask).unwrap();
        if let Some(types) = case.get("token_type_ids") {
            batch = batch.with_token_type_ids(nested_tensor(types)).unwrap();
        }
        let out = model.forward(&batch, hooks.as_ref()).unwrap();
        assert_eq!(out.virtual_tokens, virtual_tokens, "{name}");
        let expected = nested_tensor(&case["last_hidden_state"]);
        assert_eq!(out.hidden.dims(), expected.dims(), "{name}: hidden shape");
        let hidden = tensor_diff(&out.hidden, &expected);
        let pooled = model.pooled(&out, &batch, &NoHooks).unwrap();
        let expected_pooled = nested_tensor(&case["pooler_output"]);
        assert_eq!(
            pooled.dims(),
            expected_pooled.dims(),
            "{name}: pooled shape"
        );
        let pooled = tensor_diff(&pooled, &expected_pooled);
        println!(
            "tiny-bert/{name}: max |hidden diff| = {hidden:.3e}, max |pooled diff| = {pooled:.3e}"
        );
        assert!(
            hidden < TOLERANCE,
            "{name}: last hidden states differ from transformers by {hidden}"
        );
        assert!(
            pooled < TOLERANCE,
            "{name}: pooler outputs differ from transformers by {pooled}"
        );
        worst = worst.max(hidden).max(pooled);
    }
    assert_eq!(
        names,
        [
            "single",
            "right_padded_batch",
            "batch_with_kv_prefix",
            "batch_with_virtual_tokens"
        ]
    );
    println!("tiny-bert: worst {worst:.3e}");
}

#[test]
fn folder_carries_spec_and_no_eos() {
    let (loaded, record) = load();
    let spec = loaded.model.spec();
    assert_eq!(
        (
            spec.architecture.as_str(),
            spec.num_layers,
            spec.hidden_size,
            spec.num_heads,
            spec.vocab_size,
            spec.max_positions
        ),
        ("bert", 2, 32, 4, 100, 64)
    );
    assert_eq!(spec.classifier_module, "classifier");
    assert!(spec.classifier_bias);
    assert!(spec.name_or_path.ends_with("tiny-bert"));
    assert_eq!(loaded.eos_token_id, None);
    assert!(loaded.tokenizer.is_none());
    assert!(loaded.model.lm_head().is_none());
    // transformers' num_parameters() counts the embeddings, the layers and the pooler, as the spec does.
    let expected = record["num_parameters"].as_u64().unwrap() as usize;
    assert_eq!(spec.num_parameters, expected);
}
