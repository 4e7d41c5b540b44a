//! Where each layer's keys and values sit in the flat prefix vector, exactly as HF PEFT lays them out.
//!
//! Every virtual token owns one flat row of `num_layers * 2 * token_dim` values. HF PEFT views the rows
//! `[batch, num_virtual_tokens, num_layers * 2, heads, head_dim]`, permutes them to
//! `[num_layers * 2, batch, heads, num_virtual_tokens, head_dim]` and splits that into pairs: slot `2 l` is the
//! key and slot `2 l + 1` the value of layer `l`. So within a row, the value at
//! `(2 l + kv) * token_dim + h * head_dim + d` is head `h`, dimension `d` of layer `l`'s key (`kv = 0`) or
//! value (`kv = 1`), where `token_dim = heads * head_dim` is the key/value width (under grouped-query
//! attention `heads` is the key/value head count).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use peft_prefix::layout::{layer_columns, split_layer};
//! // 3 virtual tokens, 2 layers, 2 heads of dimension 4: rows of 2 * 2 * 8 values.
//! let flat = Tensor::arange(0f32, 96., &Device::Cpu).unwrap().reshape((3, 32)).unwrap();
//! let (start, len) = layer_columns(1, 8);
//! let prefix = split_layer(&flat.narrow(1, start, len).unwrap(), 2, 4, 1).unwrap();
//! assert_eq!(prefix.key.dims(), &[1, 2, 3, 4]);
//! // Layer 1's key starts at slot 2 of token 0: column 2 * 8 = 16.
//! assert_eq!(prefix.key.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 16.);
//! ```

use candle_core::Tensor;
use peft_core::hooks::KvPrefix;
use peft_core::Result;

/// The columns `(start, len)` of layer `layer`'s key and value in a flat prefix row (`len = 2 * token_dim`).
pub fn layer_columns(layer: usize, token_dim: usize) -> (usize, usize) {
    (2 * layer * token_dim, 2 * token_dim)
}

/// Splits one layer's columns `[num_virtual_tokens, 2 * heads * head_dim]` (key then value) into a
/// [`KvPrefix`] of `[batch, heads, num_virtual_tokens, head_dim]` each, the same prefix for every row of the
/// batch (as HF PEFT repeats one prompt over the batch).
pub fn split_layer(
    columns: &Tensor,
    heads: usize,
    head_dim: usize,
    batch: usize,
) -> Result<KvPrefix> {
    let (n, _) = columns.dims2()?;
    // [nvt, 2, heads, head_dim] -> [2, heads, nvt, head_dim]: HF's permute([2, 0, 3, 1, 4]) for one layer.
    let kv = columns
        .reshape((n, 2, heads, head_dim))?
        .permute((1, 2, 0, 3))?;
    let part = |i: usize| -> Result<Tensor> {
        Ok(kv
            .narrow(0, i, 1)?
            .contiguous()?
            .broadcast_as((batch, heads, n, head_dim))?)
    };
    Ok(KvPrefix {
        key: part(0)?,
        value: part(1)?,
    })
}
