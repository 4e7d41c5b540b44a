//! Last-position logits, and how far they are from a reference case of an HF fixture.
//!
//! A tiny-model case holds `input_ids` and the full-vocabulary `logits`; a SmolLM2 case holds `input_ids` and
//! `top`, the 20 largest logits as `[[id, logit], ...]` (largest first).

use peft_core::hooks::Hooks;
use peft_core::model::BaseModel;
use peft_train::generate::last_logits;
use serde_json::Value;

use crate::{f32s, ids_of};

/// The full-vocabulary logits at the last position of `ids`.
pub fn logits(model: &dyn BaseModel, hooks: &dyn Hooks, ids: &[u32]) -> Vec<f32> {
    last_logits(model, hooks, ids).unwrap().to_vec1().unwrap()
}

/// Max |a - b| elementwise; the lengths must agree.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Max |ours - reference| over the full-vocabulary `logits` of a fixture case.
pub fn full_logits_diff(model: &dyn BaseModel, hooks: &dyn Hooks, case: &Value) -> f32 {
    max_diff(&logits(model, hooks, &ids_of(case)), &f32s(&case["logits"]))
}

/// Max |ours - reference| over the ids of a case's `top` list (whatever `ours` ranks first).
pub fn top_diff(ours: &[f32], case: &Value) -> f32 {
    case["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (ours[p[0].as_u64().unwrap() as usize] - p[1].as_f64().unwrap() as f32).abs())
        .fold(0.0, f32::max)
}

/// Max |ours - reference| over a case's top-20 reference logits; our top-1 token must be the reference's.
pub fn top_logits_diff(model: &dyn BaseModel, hooks: &dyn Hooks, case: &Value) -> f32 {
    let ours = logits(model, hooks, &ids_of(case));
    assert_same_top1(&ours, case);
    top_diff(&ours, case)
}

/// Asserts that the largest of `ours` is at the id a case's `top` list ranks first.
pub fn assert_same_top1(ours: &[f32], case: &Value) {
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
}
