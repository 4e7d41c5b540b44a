//! The `ours-*` fixtures: adapters trained here that HF PEFT loads (the reference scripts' `ours` mode writes
//! HF PEFT's logits for them into `hf_logits.json`).
//!
//! A test trains the adapter afresh and hands it to [`ours_fixture`]: with `PEFT_WRITE_FIXTURES` set it is
//! written to the fixture folder; otherwise the committed adapter must equal it (so that HF PEFT's logits are
//! about what this code writes today) and is returned for the logits checks.

use std::path::Path;

use peft_core::adapter_io::{load_adapter, save_adapter};
use peft_core::method::{Adapter, InitCtx};
use peft_core::model::BaseModel;
use serde_json::Value;

use crate::read_json;

/// How far a tensor trained today may be from the committed one.
pub const DRIFT_TOLERANCE: f32 = 1e-5;

/// Whether `PEFT_WRITE_FIXTURES` is set: the tests then rewrite their `ours-*` adapters instead of checking them.
pub fn writing_fixtures() -> bool {
    std::env::var_os("PEFT_WRITE_FIXTURES").is_some()
}

/// Saves `adapter` (for `model`) into `dir` in HF PEFT's layout, and says so.
pub fn write_fixture(dir: &Path, adapter: &dyn Adapter, model: &dyn BaseModel) {
    save_adapter(dir, adapter, model.spec()).unwrap();
    eprintln!("wrote {}", dir.display());
}

/// The committed adapter in `dir`, loaded with `ctx`, once every tensor of `fresh` (what this code trains today)
/// is within [`DRIFT_TOLERANCE`] of the committed one (the two hold as many tensors, at least one).
pub fn committed_adapter(
    dir: &Path,
    fresh: &dyn Adapter,
    ctx: &mut InitCtx<'_>,
) -> Box<dyn Adapter> {
    let committed = load_adapter(dir, ctx).unwrap().adapter;
    let (ours, theirs) = (fresh.tensors().unwrap(), committed.tensors().unwrap());
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    assert!(!ours.is_empty(), "{name}: the adapter has no tensors");
    assert_eq!(ours.len(), theirs.len(), "{name}: tensor counts differ");
    for ((k, a), (_, b)) in ours.iter().zip(&theirs) {
        let drift = peft_core::compare::max_abs_diff(a, b).unwrap();
        if drift < DRIFT_TOLERANCE {
            continue;
        }
        // Adam turns a gradient that is zero in exact arithmetic (GPT-2's key bias: softmax ignores a shift
        // shared by all of a query's scores) into steps of +-lr out of rounding noise, so such a tensor differs
        // between matmul kernels (AVX-512 or not) without changing any output. Then the outputs must agree.
        let vocab = ctx.model.spec().vocab_size as u32;
        let probe: Vec<u32> = (1..9).map(|i| (i * 7) % vocab).collect();
        let with = |h: &dyn Adapter| crate::logits(ctx.model, h, &probe);
        let out = crate::max_diff(&with(fresh), &with(committed.as_ref()));
        assert!(
            out < 1e-4,
            "{name}: {k} trained today differs from the committed one by {drift}, and the logits by {out}"
        );
    }
    committed
}

/// With `PEFT_WRITE_FIXTURES` set, writes `fresh` into `dir` and gives `None` (the caller moves on); otherwise
/// the [`committed_adapter`], loaded with `ctx`.
pub fn ours_fixture(
    dir: &Path,
    fresh: &dyn Adapter,
    mut ctx: InitCtx<'_>,
) -> Option<Box<dyn Adapter>> {
    if writing_fixtures() {
        write_fixture(dir, fresh, ctx.model);
        return None;
    }
    Some(committed_adapter(dir, fresh, &mut ctx))
}

/// `hf_logits.json` in `dir` (what HF PEFT computed with our adapter loaded); asserts that HF PEFT did load it.
pub fn hf_logits(dir: &Path) -> Value {
    let hf = read_json(&dir.join("hf_logits.json"));
    assert_eq!(hf["peft_loaded"], true, "{}", dir.display());
    hf
}
