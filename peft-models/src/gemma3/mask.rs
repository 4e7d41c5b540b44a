//! The sliding-window masks of Gemma-3's local layers. Hugging Face's `sliding_window_overlay` lets query
//! position `q` see key position `k` only where `k > q - sliding_window` (on top of causality and padding),
//! counted in absolute positions: a key/value prefix (prefix tuning's `past_key_values`) takes positions
//! `0 .. P` and the tokens `P ..`. With HF PEFT's Gemma-3 prefix cache (`DynamicCache(config)`, whose sliding
//! layers are `DynamicSlidingWindowLayer`s) a prefix position is therefore hidden from the sliding layers'
//! queries that are `sliding_window` or more positions after it, and only the global layers show the prefix to
//! every query. This module reproduces exactly that.

use candle_core::{Device, Tensor};
use peft_core::hooks::KvPrefix;

use crate::attention::{PrefixMasks, MASKED};
use crate::error::Result;

/// `[1, 1, queries, keys]`: 0 where key `k` lies within `window` positions of query `i`
/// (`k > past + i - window`, with `past = keys - queries` positions before the first query), [`MASKED`] before.
pub fn window_bias(queries: usize, keys: usize, window: usize, device: &Device) -> Result<Tensor> {
    let past = keys.saturating_sub(queries);
    let values: Vec<f32> = (0..queries)
        .flat_map(|i| {
            (0..keys).map(move |k| {
                if k.saturating_add(window) > past + i {
                    0.0
                } else {
                    MASKED
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(values, (1, 1, queries, keys), device)?)
}

/// The additive masks and prefixes of the sliding layers in one forward pass: each layer's causal and padding
/// bias from [`PrefixMasks`] with the window added, built once per key count (a layer with a prefix has more
/// keys than one without).
///
/// Two details make fully masked rows (a padding query whose whole window is padding) come out as Hugging
/// Face's: every masked entry is exactly [`MASKED`] (HF's masks are boolean, so such a row attends uniformly to
/// every key it holds), and a prefix longer than `sliding_window - 1` positions keeps only its last
/// `sliding_window - 1`, as HF's sliding cache layer (`DynamicSlidingWindowLayer`) stores it. The dropped
/// positions lie outside every real query's window, so nothing else changes.
pub struct SlidingMasks<'a> {
    masks: &'a PrefixMasks,
    window: usize,
    built: Vec<(usize, Tensor)>,
}

impl<'a> SlidingMasks<'a> {
    /// Windows of `window` positions over `masks`.
    pub fn new(masks: &'a PrefixMasks, window: usize) -> Self {
        SlidingMasks {
            masks,
            window,
            built: Vec::new(),
        }
    }

    /// The prefix and the additive bias of sliding `layer`.
    pub fn layer(&mut self, layer: usize) -> Result<(Option<KvPrefix>, Tensor)> {
        let bias = self.bias(layer)?;
        let Some(prefix) = self.masks.prefix(layer) else {
            return Ok((None, bias));
        };
        // HF keeps `cache[-(window - 1):]`; with a window of 1 that slice is the whole prefix.
        let keep = self.window.saturating_sub(1);
        let len = prefix.len();
        if keep == 0 || len <= keep {
            return Ok((Some(prefix.clone()), bias));
        }
        let drop = len - keep;
        let keys = bias.dim(3)?;
        let cropped = KvPrefix {
            key: prefix.key.narrow(2, drop, keep)?,
            value: prefix.value.narrow(2, drop, keep)?,
        };
        Ok((Some(cropped), bias.narrow(3, drop, keys - drop)?))
    }

    /// The bias of sliding `layer` over all its keys: causal and padding bias with the window added.
    fn bias(&mut self, layer: usize) -> Result<Tensor> {
        let base = self.masks.bias(layer);
        let (_, _, queries, keys) = base.dims4()?;
        if let Some((_, t)) = self.built.iter().find(|(k, _)| *k == keys) {
            return Ok(t.clone());
        }
        let window = window_bias(queries, keys, self.window, base.device())?;
        // Hidden twice (padding and window) is hidden once: every masked score gets the same MASKED.
        let bias = base.broadcast_add(&window)?.clamp(MASKED, 0f32)?.detach();
        self.built.push((keys, bias.clone()));
        Ok(bias)
    }
}
