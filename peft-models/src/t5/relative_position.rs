//! T5's relative position bias: the distance from a query to a key falls into one of a few buckets (exact for
//! short distances, logarithmic up to `max_distance`, then one shared bucket), and each bucket has a learned
//! bias per head, added to the attention scores. The encoder's buckets tell left from right (bidirectional);
//! the decoder's only count how far back a key lies.
//!
//! ```
//! use peft_models::t5::relative_position::bucket;
//! // T5's defaults: 32 buckets, max distance 128.
//! assert_eq!(bucket(-3, true, 32, 128), 3); // 3 to the left
//! assert_eq!(bucket(3, true, 32, 128), 19); // 3 to the right: the second half of the buckets
//! assert_eq!(bucket(-1000, true, 32, 128), 15); // far away: the last bucket of its direction
//! assert_eq!(bucket(5, false, 32, 128), 0); // the decoder does not tell future keys apart
//! assert_eq!(bucket(-20, false, 32, 128), 17); // logarithmic buckets beyond 16
//! ```

use candle_core::{DType, Tensor};

use crate::error::Result;

/// The bucket of `relative_position` (key position minus query position), as transformers'
/// `T5Attention._relative_position_bucket` computes it, including its float32 logarithm.
pub fn bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let (mut buckets, mut offset) = (num_buckets, 0);
    let distance = if bidirectional {
        buckets /= 2;
        if relative_position > 0 {
            offset = buckets;
        }
        relative_position.unsigned_abs()
    } else {
        (-relative_position).max(0) as u64
    };
    let max_exact = (buckets / 2) as u64;
    if distance < max_exact {
        return offset + distance as usize;
    }
    // transformers: max_exact + (log(d / max_exact) / log(max_distance / max_exact) * (buckets - max_exact)),
    // in float32 (the Python scalar log is rounded to float32), truncated.
    let ratio = (distance as f32 / max_exact as f32).ln();
    let range = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large =
        max_exact as usize + (ratio / range * (buckets - max_exact as usize) as f32) as usize;
    offset + large.min(buckets - 1)
}

/// One stack's learned bias per bucket and head (`relative_attention_bias.weight`, `[num_buckets, heads]`),
/// held by its first block and shared by every block of the stack.
#[derive(Debug, Clone)]
pub struct RelativeBias {
    weight: Tensor,
    bidirectional: bool,
    max_distance: usize,
}

impl RelativeBias {
    /// The bias of a stack: `bidirectional` for the encoder, not for the decoder.
    pub fn new(weight: Tensor, bidirectional: bool, max_distance: usize) -> Self {
        RelativeBias {
            // A variable (full fine-tuning) stays one; a checkpoint tensor never joins a gradient graph.
            weight: if weight.is_variable() {
                weight
            } else {
                weight.detach()
            },
            bidirectional,
            max_distance,
        }
    }

    /// The additive bias `[1, heads, queries, keys]` for queries at positions `past..past + queries` over keys
    /// at positions `0..keys` (transformers' `compute_bias` with `past_seen_tokens = past`).
    pub fn bias(&self, queries: usize, keys: usize, past: usize) -> Result<Tensor> {
        let (num_buckets, heads) = self.weight.dims2()?;
        let index: Vec<u32> = (0..queries)
            .flat_map(|i| {
                (0..keys).map(move |j| {
                    let relative = j as i64 - (past + i) as i64;
                    bucket(relative, self.bidirectional, num_buckets, self.max_distance) as u32
                })
            })
            .collect();
        let index = Tensor::from_vec(index, queries * keys, self.weight.device())?;
        let values = self
            .weight
            .index_select(&index, 0)?
            .reshape((queries, keys, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_dtype(DType::F32)?;
        Ok(values.contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn buckets_are_symmetric_exact_then_logarithmic_then_capped() {
        // 8 buckets, max distance 16: 4 per direction, 2 exact, then log buckets 2 and 3.
        let left: Vec<usize> = (0..20).map(|d| bucket(-d, true, 8, 16)).collect();
        let right: Vec<usize> = (0..20).map(|d| bucket(d, true, 8, 16)).collect();
        assert_eq!(left[..3], [0, 1, 2]);
        assert_eq!(right[1..3], [5, 6]);
        assert_eq!(right[0], 0, "distance 0 is in the left half");
        for d in 1..20 {
            assert_eq!(right[d], left[d] + 4, "distance {d}");
            assert!(left[d] >= left[d - 1], "monotone at {d}");
        }
        assert_eq!(left[16..], [3, 3, 3, 3]);
        // The decoder's buckets: future keys all in bucket 0, past keys over all 8 buckets.
        assert!((0..10).all(|d| bucket(d, false, 8, 16) == 0));
        assert_eq!(bucket(-3, false, 8, 16), 3);
        assert_eq!(bucket(-100, false, 8, 16), 7);
    }

    #[test]
    fn bias_indexes_the_table_by_bucket_and_head() {
        let dev = Device::Cpu;
        // 8 buckets x 2 heads; the value of bucket b, head h is 10 b + h.
        let table: Vec<f32> = (0..8)
            .flat_map(|b| (0..2).map(move |h| (10 * b + h) as f32))
            .collect();
        let weight = Tensor::from_vec(table, (8, 2), &dev).unwrap();
        let rel = RelativeBias::new(weight, false, 16);
        // Two queries at positions 3 and 4 over five keys.
        let bias = rel.bias(2, 5, 3).unwrap();
        assert_eq!(bias.dims(), &[1, 2, 2, 5]);
        let head1 = bias
            .get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let expected = |q: i64| -> Vec<f32> {
            (0..5)
                .map(|k| (10 * bucket(k - q, false, 8, 16) + 1) as f32)
                .collect()
        };
        assert_eq!(head1, vec![expected(3), expected(4)]);
    }
}
