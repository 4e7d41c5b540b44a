//! HF PEFT's adapter fixtures (`fixtures/adapters/hf-*`): adapters HF PEFT saved, and in `logits.json` what it
//! computed with them.

use std::path::Path;

use peft_core::adapter_io::load_adapter;
use peft_core::method::{Adapter, InitCtx};
use serde_json::Value;

use crate::read_json;

/// The HF PEFT adapter in `dir`, loaded with `ctx` (asserting that loading warned of nothing), and the
/// reference in its `logits.json`.
pub fn hf_fixture(dir: &Path, ctx: &mut InitCtx<'_>) -> (Box<dyn Adapter>, Value) {
    let loaded = load_adapter(dir, ctx).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    (loaded.adapter, read_json(&dir.join("logits.json")))
}
