//! What the model parity tests (`peft-models/tests/*_parity.rs`) share: a committed fixture folder loaded with
//! its reference JSON, the nested JSON arrays of the reference scripts as tensors, and hooks that feed a
//! recorded key/value prefix or recorded virtual tokens.

use candle_core::{Device, Tensor};
use peft_core::hooks::{Ctx, Hooks, KvPrefix};
use peft_models::folder::load_folder;
use peft_models::LoadedModel;
use serde_json::Value;

use crate::paths::fixture;

/// The fixture model folder `fixtures/<rel>` and its reference file `json` (`logits.json`), both written by
/// `script`. The fixtures are committed: a missing or broken one is a failure naming the script, never a skip.
pub fn fixture_model(rel: &str, json: &str, script: &str) -> (LoadedModel, Value) {
    let dir = fixture(rel);
    let loaded = load_folder(&dir, &Device::Cpu).unwrap_or_else(|e| {
        panic!(
            "fixture {} does not load ({e}); regenerate it with scripts/reference/{script}",
            dir.display()
        )
    });
    let text = std::fs::read_to_string(dir.join(json)).unwrap_or_else(|e| {
        panic!(
            "{}/{json}: {e}; regenerate it with scripts/reference/{script}",
            dir.display()
        )
    });
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{json}: {e}"));
    (loaded, value)
}

/// A nested JSON array of numbers as an f32 tensor of the same shape.
pub fn nested_tensor(v: &Value) -> Tensor {
    fn shape(v: &Value, dims: &mut Vec<usize>) {
        if let Some(a) = v.as_array() {
            dims.push(a.len());
            if let Some(first) = a.first() {
                shape(first, dims);
            }
        }
    }
    fn flatten(v: &Value, out: &mut Vec<f32>) {
        match v.as_array() {
            Some(a) => a.iter().for_each(|x| flatten(x, out)),
            None => out.push(v.as_f64().expect("a number") as f32),
        }
    }
    let mut dims = Vec::new();
    shape(v, &mut dims);
    let mut values = Vec::new();
    flatten(v, &mut values);
    Tensor::from_vec(values, dims, &Device::Cpu).expect("a rectangular array")
}

/// Largest absolute difference of two tensors of one shape.
pub fn tensor_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).expect("tensors of one shape")
}

/// Hooks returning a recorded key/value prefix per layer, as HF's past key values (or HF PEFT's decoder cache).
pub struct RecordedPrefix {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
}

impl RecordedPrefix {
    /// From keys and values stacked by layer: `[layers, batch, heads, prefix, head_dim]` each.
    pub fn new(keys: &Tensor, values: &Tensor) -> Self {
        let layers = keys.dim(0).expect("stacked keys");
        RecordedPrefix {
            keys: (0..layers).map(|l| keys.get(l).unwrap()).collect(),
            values: (0..layers).map(|l| values.get(l).unwrap()).collect(),
        }
    }
}

impl Hooks for RecordedPrefix {
    fn attention_prefix(&self, layer: usize, _ctx: &Ctx) -> peft_core::Result<Option<KvPrefix>> {
        Ok(Some(KvPrefix {
            key: self.keys[layer].clone(),
            value: self.values[layer].clone(),
        }))
    }
}

/// Hooks prepending recorded virtual-token embeddings `[n, hidden]` to every row, as prompt tuning does
/// (for an encoder-decoder, to the encoder's input).
pub struct RecordedVirtualTokens(pub Tensor);

impl Hooks for RecordedVirtualTokens {
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> peft_core::Result<Tensor> {
        let (b, _, h) = x.dims3()?;
        let n = self.0.dim(0)?;
        ctx.prepend_virtual_tokens(n)?;
        let prompt = self.0.unsqueeze(0)?.broadcast_as((b, n, h))?;
        Ok(Tensor::cat(&[&prompt, &x], 1)?)
    }
}
