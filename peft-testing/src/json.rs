//! Reading the JSON fixtures the reference scripts write (`logits.json`, `hf_logits.json`, ...).

use std::path::Path;

use serde_json::Value;

/// The JSON document at `path`; panics naming the path when it cannot be read.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A JSON array of token ids.
pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A JSON array of numbers, as `f32`.
pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The `input_ids` of a fixture case.
pub fn ids_of(case: &Value) -> Vec<u32> {
    u32s(&case["input_ids"])
}
