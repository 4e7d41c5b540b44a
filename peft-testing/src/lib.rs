//! Test support shared by the workspace's method crates (and methods added from outside, like `examples/ia3`):
//! the repository's fixtures, the models tests run on, seeded init contexts, logits checks against the cases of
//! an HF fixture, the checks the `hf_parity` tests make against HF PEFT's reference files, small tasks, a short
//! run of the shared trainer, and the `ours-*` fixture round trip. Add it as a dev-dependency; nothing here is
//! meant for non-test code.
//!
//! ```
//! use peft_core::hooks::NoHooks;
//! use peft_testing::{fixture, full_logits_diff, logits, read_json, tiny};
//!
//! // A tiny HF-saved fixture model, and a case in the form the reference scripts write.
//! let loaded = tiny("tiny-gpt2");
//! let model = loaded.model.as_ref();
//! let ids = [5u32, 17, 42, 8];
//! let case = serde_json::json!({"input_ids": ids, "logits": logits(model, &NoHooks, &ids)});
//! assert_eq!(full_logits_diff(model, &NoHooks, &case), 0.0);
//!
//! // The fixtures HF PEFT wrote hold such cases.
//! let hf = read_json(&fixture("adapters/hf-tiny-gpt2-lora/logits.json"));
//! assert!(!hf["cases"].as_array().unwrap().is_empty());
//! ```
//!
//! Tests on real weights or `../shared/data` skip, saying why, where those are absent (`let Some(loaded) =
//! smollm2() else { return };`), and fail instead under `PEFT_REQUIRE_ASSETS=1`, as CI runs them.

mod assets;
mod contract;
mod hf;
mod hf_parity;
mod init;
mod json;
mod logits;
mod models;
mod ours;
mod parity;
mod paths;
mod tasks;
mod text_cases;
mod train;

pub use assets::{absent, minilm, shared_data, smollm2, zoo_model_path, REQUIRE_ASSETS};
pub use contract::{
    assert_contract_on_tiny_models, assert_data_parallel_exact, assert_resume_exact,
};
pub use hf::hf_fixture;
pub use hf_parity::{
    assert_agrees_with_hf, assert_cases_agree, assert_trainable_count, committed_or_written,
    compare_case, hf_trainable_count, saved_tensor_names, trainable_names, Agreement,
    CaseComparison, COUNT_KEYS,
};
pub use init::{init, init_loaded};
pub use json::{f32s, ids_of, read_json, u32s};
pub use logits::{assert_same_top1, full_logits_diff, logits, max_diff, top_diff, top_logits_diff};
pub use models::{seeded_tiny_models, tiny, WithSpec};
pub use ours::{
    committed_adapter, hf_logits, ours_fixture, write_fixture, writing_fixtures, DRIFT_TOLERANCE,
};
pub use parity::{
    fixture_model, nested_tensor, tensor_diff, RecordedPrefix, RecordedVirtualTokens,
};
pub use paths::{fixture, root};
pub use tasks::{
    lm_task, partly_unlabelled_lm_task, ragged_lm_task, rule_lm_task, text_lm_task,
    toy_classification_task, toy_lm_task, SMOLLM2_REVIEWS, UNLABELLED_EXAMPLE,
};
pub use text_cases::{checked_ids, text_cases_top_diffs};
pub use train::{toy_trained, train};
