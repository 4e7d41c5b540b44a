//! SmolLM2 cases: a text, the ids the reference's tokenizer gave it, and the reference's 20 largest logits.

use peft_core::hooks::Hooks;
use peft_models::LoadedModel;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::{ids_of, top_logits_diff};

/// The ids of a case's `text` (encoded with special tokens), after asserting that they are the case's
/// `input_ids`: the logits comparison is then about the same input.
pub fn checked_ids(tokenizer: &Tokenizer, case: &Value) -> Vec<u32> {
    let text = case["text"].as_str().unwrap();
    let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
    assert_eq!(ids, ids_of(case), "input ids differ for {text:?}");
    ids
}

/// For each case of `reference["cases"]`, in order: its text and [`top_logits_diff`] of `loaded` under `hooks`,
/// once [`checked_ids`] has found our ids for the text equal to the reference's.
pub fn text_cases_top_diffs(
    loaded: &LoadedModel,
    hooks: &dyn Hooks,
    reference: &Value,
) -> Vec<(String, f32)> {
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .expect("the model has a tokenizer");
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            checked_ids(tokenizer, case);
            let text = case["text"].as_str().unwrap().to_string();
            (text, top_logits_diff(loaded.model.as_ref(), hooks, case))
        })
        .collect()
}
