//! The sliding-window masks of Gemma-3's local layers. Hugging Face's `sliding_window_overlay` lets a query at
//! position `pq` see a key at position `pk` only where `pk > pq - sliding_window` (on top of causality and
//! padding). Positions count each row's real keys, as everywhere in a decoder pass (`crate::decoding`): a
//! key/value prefix takes positions `0 .. P` and the tokens follow, so a left-padded row, a row continuing
//! from a key/value cache, or a row whose prompt was right-padded before decoding went on, slides its window
//! exactly where it would alone. With HF PEFT's Gemma-3 prefix cache (`DynamicCache(config)`, whose sliding
//! layers are `DynamicSlidingWindowLayer`s) a prefix position is therefore hidden from the sliding layers'
//! queries that are `sliding_window` or more positions after it, and only the global layers show the prefix to
//! every query.
//!
//! ```
//! use candle_core::Device;
//! use peft_models::gemma3::{window_bias, window_positions};
//! // A left-padded row: its three real keys sit at positions 0, 1, 2 whatever the padding.
//! let positions = window_positions(&[vec![0., 0., 1., 1., 1.]]);
//! assert_eq!(positions[0][2..], [0, 1, 2]);
//! // Window 2: the last query (position 2) sees positions 1 and 2 only.
//! let bias = window_bias(&positions, 1, 5, 2, &Device::Cpu).unwrap();
//! let row = bias.flatten_all().unwrap().to_vec1::<f32>().unwrap();
//! assert_eq!(row[2..], [peft_models::attention::MASKED, 0.0, 0.0]);
//! ```

use candle_core::{DType, Device, Tensor};

use crate::attention::MASKED;
use crate::error::{ModelError, Result};

/// Per row of a `[batch, keys]` key mask (1 for a key a query may see), the position the window counts each
/// column at. A real key's position is the count of real keys before it: the position the decoder pass rotates
/// it at. A masked column sits one past the column before it, so padding after a row's last real token takes
/// the positions Hugging Face's index positions give it: its (never read) output then comes out as HF's, whose
/// windows count columns.
pub fn window_positions(key_mask: &[Vec<f32>]) -> Vec<Vec<i64>> {
    key_mask
        .iter()
        .map(|row| {
            let (mut real, mut last) = (0i64, -1i64);
            row.iter()
                .map(|&m| {
                    last = if m > 0.5 {
                        real += 1;
                        real - 1
                    } else {
                        last + 1
                    };
                    last
                })
                .collect()
        })
        .collect()
}

/// `[batch, 1, queries, keys]`: 0 where the key lies within `window` positions of the query
/// (`pk > pq - window`), [`MASKED`] elsewhere. The queries are the last `queries` columns of `positions`
/// (from [`window_positions`]) and the keys its last `keys` columns (a layer without a key/value prefix holds
/// the tokens' keys only). The window alone does not hide the future: it is added to a causal bias.
pub fn window_bias(
    positions: &[Vec<i64>],
    queries: usize,
    keys: usize,
    window: usize,
    device: &Device,
) -> Result<Tensor> {
    let width = positions.first().map_or(0, |r| r.len());
    if positions.iter().any(|r| r.len() != width) || queries > width || keys > width {
        return Err(ModelError::Config(format!(
            "a sliding window over {queries} queries and {keys} keys was given positions of {width} columns"
        )));
    }
    let window = i64::try_from(window).unwrap_or(i64::MAX);
    let mut values = Vec::with_capacity(positions.len() * queries * keys);
    for row in positions {
        let (q, k) = (&row[width - queries..], &row[width - keys..]);
        for &pq in q {
            // `pq - pk < window`, written so that a huge window cannot overflow.
            values.extend(k.iter().map(|&pk| {
                if pq.saturating_sub(pk) < window {
                    0.0
                } else {
                    MASKED
                }
            }));
        }
    }
    Ok(Tensor::from_vec(
        values,
        (positions.len(), 1, queries, keys),
        device,
    )?)
}

/// The additive masks of the sliding layers in one forward pass: the pass's causal and padding bias of a layer
/// with the window added, built once per key count (on a prompt's pass a layer with a key/value prefix holds
/// more keys than one without).
///
/// Two details make fully masked rows (a padding query whose whole window is padding) come out as Hugging
/// Face's: every masked entry is exactly [`MASKED`] (HF's masks are boolean, so such a row attends uniformly to
/// every key it holds), and of the keys before this pass's tokens (a prefix, or the cache) a sliding layer holds
/// only the last `sliding_window - 1`, as HF's sliding cache layer (`DynamicSlidingWindowLayer`) stores them.
/// The earlier ones get `2 * MASKED`: a row that sees any key gives them no weight either way, a fully masked
/// row then spreads over the keys HF holds. Dropping them outright would be the same for HF's batches, but not
/// where a row's prefix is padded to a neighbour's: there a column HF would drop can be in a real query's
/// window.
pub(crate) struct SlidingMasks {
    window: usize,
    positions: Vec<Vec<i64>>,
    queries: usize,
    built: Vec<(usize, Tensor)>,
}

impl SlidingMasks {
    /// Windows of `window` positions for the `queries` tokens of a pass whose `[batch, keys]` mask over every
    /// key it attends to (prefix or cache, then the tokens) is `key_mask`.
    pub fn new(key_mask: &Tensor, queries: usize, window: usize) -> Result<Self> {
        let rows: Vec<Vec<f32>> = key_mask.to_dtype(DType::F32)?.to_vec2()?;
        Ok(SlidingMasks {
            window,
            positions: window_positions(&rows),
            queries,
            built: Vec::new(),
        })
    }

    /// The bias of a sliding layer whose bias without the window is `base` (`[batch, 1, queries, keys]`).
    pub fn bias(&mut self, base: &Tensor) -> Result<Tensor> {
        let (_, _, queries, keys) = base.dims4()?;
        if let Some((_, t)) = self.built.iter().find(|(k, _)| *k == keys) {
            return Ok(t.clone());
        }
        if queries != self.queries {
            return Err(ModelError::Config(format!(
                "a sliding layer's bias covers {queries} queries, the pass {}",
                self.queries
            )));
        }
        let window = window_bias(&self.positions, queries, keys, self.window, base.device())?;
        // Hidden twice (padding and window, or causality) is hidden once: every masked score gets MASKED.
        let mut bias = base.broadcast_add(&window)?.clamp(MASKED, 0f32)?;
        // HF keeps `cache[-(window - 1):]`; with a window of 1 that slice is the whole cache.
        let (before, keep) = (keys - queries, self.window.saturating_sub(1));
        if keep > 0 && before > keep {
            let drop = before - keep;
            let scale: Vec<f32> = (0..keys)
                .map(|k| if k < drop { 2.0 } else { 1.0 })
                .collect();
            let scale = Tensor::from_vec(scale, (1, 1, 1, keys), base.device())?;
            bias = bias.broadcast_mul(&scale)?;
        }
        let bias = bias.detach();
        self.built.push((keys, bias.clone()));
        Ok(bias)
    }
}
