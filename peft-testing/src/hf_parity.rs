//! The checks every `*/tests/*hf_parity.rs` makes of an adapter against a reference file HF PEFT's side wrote
//! (`logits.json` of an `hf-*` fixture, `hf_logits.json` of an `ours-*` one): our trainable count is HF PEFT's,
//! our logits agree with every case's within a tolerance, and the adapter is no no-op.
//!
//! ```
//! use peft_core::hooks::NoHooks;
//! use peft_testing::{assert_cases_agree, hf_trainable_count, logits, tiny, Agreement};
//!
//! let loaded = tiny("tiny-llama");
//! let ids = [3u32, 1, 4, 1, 5];
//! let case = serde_json::json!({"input_ids": ids, "logits": logits(loaded.model.as_ref(), &NoHooks, &ids)});
//! // The frozen model agrees with itself (no effect is asked of it: it *is* a no-op).
//! let agreement = Agreement { tolerance: 1e-6, min_effect: None };
//! let cases = serde_json::json!([case]);
//! assert_eq!(assert_cases_agree("frozen", &loaded, &NoHooks, &cases, agreement), 0.0);
//!
//! // Each script names HF PEFT's count in its own way; the reader takes whichever is there.
//! assert_eq!(hf_trainable_count(&serde_json::json!({"vera_parameters": 12})), 12);
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use peft_core::adapter_io::{load_adapter, WEIGHTS_FILE};
use peft_core::hooks::{Hooks, NoHooks};
use peft_core::method::{Adapter, InitCtx};
use peft_models::LoadedModel;
use serde_json::Value;

use crate::{
    assert_same_top1, checked_ids, ids_of, logits, max_diff, top_diff, write_fixture,
    writing_fixtures,
};

/// The names under which the reference scripts record HF PEFT's count of trainable parameters.
pub const COUNT_KEYS: [&str; 5] = [
    "num_trainable",
    "trainable_parameters",
    "vera_parameters",
    "lycoris_parameters",
    "ia3_parameters",
];

/// HF PEFT's count of trainable parameters in a reference file, under whichever of [`COUNT_KEYS`] its script
/// wrote (exactly one of them).
pub fn hf_trainable_count(reference: &Value) -> u64 {
    let counts: Vec<u64> = COUNT_KEYS
        .iter()
        .filter_map(|key| reference.get(key))
        .map(|v| v.as_u64().expect("a count"))
        .collect();
    assert_eq!(
        counts.len(),
        1,
        "a reference file holds exactly one of {COUNT_KEYS:?}"
    );
    counts[0]
}

/// Asserts that `adapter` has as many trainable parameters as HF PEFT counted in `reference`.
pub fn assert_trainable_count(name: &str, adapter: &dyn Adapter, reference: &Value) {
    assert_eq!(
        adapter.num_trainable() as u64,
        hf_trainable_count(reference),
        "{name}: trainable parameters differ from HF PEFT's count"
    );
}

/// How closely our logits must follow a reference's cases.
#[derive(Clone, Copy, Debug)]
pub struct Agreement {
    /// The largest |ours - reference| allowed at any logit a case holds.
    pub tolerance: f32,
    /// Where set, the adapter is no no-op: at every case the frozen model is farther than this from the
    /// reference, and the adapter moves our logits by more than this.
    pub min_effect: Option<f32>,
}

impl Agreement {
    /// HF fixtures on the tiny models: full logits within 1e-4 of HF PEFT's, the frozen model's over 1e-2 away.
    pub const TINY: Agreement = Agreement {
        tolerance: 1e-4,
        min_effect: Some(1e-2),
    };
    /// Cases on SmolLM2: the 20 largest logits within 1e-3 of HF PEFT's, the frozen model's over 1e-2 away.
    pub const SMOLLM2: Agreement = Agreement {
        tolerance: 1e-3,
        min_effect: Some(1e-2),
    };

    /// The same tolerance, asking `floor` of the adapter's effect (a briefly trained adapter moves less).
    pub fn with_min_effect(self, floor: f32) -> Self {
        Agreement {
            min_effect: Some(floor),
            ..self
        }
    }

    /// The same tolerance, asking no effect (of a merged adapter, whose frozen model is the adapted one).
    pub fn merged(self) -> Self {
        Agreement {
            min_effect: None,
            ..self
        }
    }
}

/// How one case compared.
#[derive(Clone, Copy, Debug)]
pub struct CaseComparison {
    /// Max |ours - reference| over the logits the case holds.
    pub diff: f32,
    /// Max |frozen model - reference| over the same logits.
    pub frozen: f32,
    /// Max |ours - frozen model| over the whole vocabulary.
    pub moved: f32,
}

/// Compares `hooks` on `loaded` with one reference case: over the full-vocabulary `logits` of a tiny-model case,
/// or over the ids of a text case's `top` list (then our top-1 token must be the reference's, and where the
/// case has a `text` our tokenizer must give its `input_ids`).
pub fn compare_case(loaded: &LoadedModel, hooks: &dyn Hooks, case: &Value) -> CaseComparison {
    let model = loaded.model.as_ref();
    let ids = match (case.get("text"), loaded.tokenizer.as_ref()) {
        (Some(_), Some(tokenizer)) => checked_ids(tokenizer, case),
        _ => ids_of(case),
    };
    let ours = logits(model, hooks, &ids);
    let frozen = logits(model, &NoHooks, &ids);
    let moved = max_diff(&ours, &frozen);
    if case.get("logits").is_some() {
        let reference = crate::f32s(&case["logits"]);
        return CaseComparison {
            diff: max_diff(&ours, &reference),
            frozen: max_diff(&frozen, &reference),
            moved,
        };
    }
    assert_same_top1(&ours, case);
    CaseComparison {
        diff: top_diff(&ours, case),
        frozen: top_diff(&frozen, case),
        moved,
    }
}

/// Asserts that `hooks` on `loaded` agree with every case of the JSON array `cases` as `agreement` says, printing
/// each case's difference under `name`; gives the largest difference.
pub fn assert_cases_agree(
    name: &str,
    loaded: &LoadedModel,
    hooks: &dyn Hooks,
    cases: &Value,
    agreement: Agreement,
) -> f32 {
    let cases = cases.as_array().expect("an array of cases");
    assert!(!cases.is_empty(), "{name}: no cases to compare");
    let mut largest = 0f32;
    for case in cases {
        let CaseComparison {
            diff,
            frozen,
            moved,
        } = compare_case(loaded, hooks, case);
        let over = if case.get("top").is_some() {
            "top-20 "
        } else {
            ""
        };
        eprintln!("{name}: max {over}|logit diff| vs HF PEFT {diff:.2e}");
        assert!(
            diff < agreement.tolerance,
            "{name}: max {over}|logit diff| vs HF PEFT {diff} for {case_label}",
            case_label = case.get("text").unwrap_or(&case["input_ids"])
        );
        if let Some(floor) = agreement.min_effect {
            assert!(
                frozen > floor,
                "{name} is a no-op: the frozen model is within {frozen} of HF PEFT's logits"
            );
            assert!(
                moved > floor,
                "{name} is a no-op: it moves the logits by only {moved}"
            );
        }
        largest = largest.max(diff);
    }
    largest
}

/// Asserts that `adapter` (made for `loaded`) agrees with `reference` (a reference file): HF PEFT's trainable
/// count, and every case of `reference["cases"]` as `agreement` says; gives the largest difference.
pub fn assert_agrees_with_hf(
    name: &str,
    loaded: &LoadedModel,
    adapter: &dyn Adapter,
    reference: &Value,
    agreement: Agreement,
) -> f32 {
    assert_trainable_count(name, adapter, reference);
    assert_cases_agree(name, loaded, adapter, &reference["cases"], agreement)
}

/// An `ours-*` fixture too slow to train in every run (SmolLM2's): with `PEFT_WRITE_FIXTURES` set, `train()`
/// makes the adapter, it is written into `dir` and the result is `None`; otherwise the committed adapter, loaded
/// with `ctx` (its HF PEFT logits then check it; it is not compared with what training gives today).
pub fn committed_or_written(
    dir: &Path,
    mut ctx: InitCtx<'_>,
    train: impl FnOnce() -> Box<dyn Adapter>,
) -> Option<Box<dyn Adapter>> {
    if writing_fixtures() {
        write_fixture(dir, train().as_ref(), ctx.model);
        return None;
    }
    Some(load_adapter(dir, &mut ctx).unwrap().adapter)
}

/// The names of the tensors in the adapter file of the folder `dir`.
pub fn saved_tensor_names(dir: &Path) -> BTreeSet<String> {
    let path = dir.join(WEIGHTS_FILE);
    candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_keys()
        .collect()
}

/// The names of `adapter`'s trainable tensors (as it saves them).
pub fn trainable_names(adapter: &dyn Adapter) -> BTreeSet<String> {
    adapter.trainable().into_iter().map(|(k, _)| k).collect()
}
