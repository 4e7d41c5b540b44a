//! Causal self-attention shared by the decoder models: an additive mask built once per forward pass from the
//! padding mask and the causal order, an optional key/value prefix (prefix tuning, P-tuning v2) that every
//! query sees, and grouped-query attention (key/value heads repeated to the query heads).
//!
//! The prefix behaves as Hugging Face's `past_key_values`: its positions come before the tokens, so token `t`
//! sits at key index `prefix + t` and sees every prefix position that the padding mask does not hide.
//! Encoders (BERT) attend in both directions: [`bidirectional_bias`] and [`PrefixMasks::collect_bidirectional`]
//! hide padding only.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use peft_models::attention::{attend, causal_bias};
//! let dev = Device::Cpu;
//! let mask = Tensor::ones((1, 3), DType::F32, &dev).unwrap(); // [B, keys]
//! let bias = causal_bias(&mask, 3).unwrap(); // [B, 1, queries, keys]
//! let q = Tensor::randn(0f32, 1., (1, 4, 3, 8), &dev).unwrap(); // 4 query heads
//! let k = Tensor::randn(0f32, 1., (1, 2, 3, 8), &dev).unwrap(); // 2 key/value heads
//! let v = Tensor::randn(0f32, 1., (1, 2, 3, 8), &dev).unwrap();
//! let out = attend(&q, &k, &v, None, &bias, 8f64.powf(-0.5), 0).unwrap();
//! assert_eq!(out.dims(), &[1, 3, 32]); // [B, T, heads * head_dim]
//! ```

use candle_core::{DType, Tensor};
use peft_core::hooks::{Ctx, Hooks, KvPrefix};
use peft_core::PeftError;

use crate::error::{ModelError, Result};

/// Added to the scores of hidden keys: large enough to zero their weight, small enough that a row with every
/// key hidden stays finite (no NaN from `-inf - -inf`).
pub const MASKED: f32 = -1e9;

/// The additive attention bias `[batch, 1, queries, keys]` for `queries` tokens that follow
/// `keys - queries` earlier positions (a key/value prefix): 0 where query `i` may see key `j`
/// (`j <= keys - queries + i` and `key_mask[b, j]` is 1), [`MASKED`] elsewhere.
pub fn causal_bias(key_mask: &Tensor, queries: usize) -> Result<Tensor> {
    let (batch, keys) = key_mask.dims2()?;
    if queries > keys {
        return Err(ModelError::Config(format!(
            "attention mask covers {keys} keys, fewer than the {queries} queries"
        )));
    }
    let past = keys - queries;
    let causal: Vec<f32> = (0..queries)
        .flat_map(|i| (0..keys).map(move |j| if j <= past + i { 0.0 } else { MASKED }))
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, queries, keys), key_mask.device())?;
    // 1 -> 0, 0 -> MASKED; any mask dtype (u8, u32, f32) is accepted.
    let padding = ((key_mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)? * MASKED as f64)?)
        .reshape((batch, 1, 1, keys))?;
    Ok(causal.broadcast_add(&padding)?.detach())
}

/// The additive attention bias `[batch, 1, queries, keys]` of bidirectional (encoder) attention: every query
/// sees every key whose `key_mask[b, j]` is 1 (a key/value prefix included), [`MASKED`] hides the others.
pub fn bidirectional_bias(key_mask: &Tensor, queries: usize) -> Result<Tensor> {
    let (batch, keys) = key_mask.dims2()?;
    let padding = ((key_mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)? * MASKED as f64)?)
        .reshape((batch, 1, 1, keys))?;
    Ok(padding
        .broadcast_as((batch, 1, queries, keys))?
        .contiguous()?
        .detach())
}

/// The mask over keys for a layer with a prefix of `prefix` positions: the model's mask covers either the
/// tokens only (then the prefix is visible to all: HF PEFT extends the mask with ones) or prefix and tokens.
pub fn key_mask_with_prefix(mask: &Tensor, prefix: usize, tokens: usize) -> Result<Tensor> {
    let (batch, width) = mask.dims2()?;
    if width == prefix + tokens {
        Ok(mask.to_dtype(DType::F32)?)
    } else if width == tokens {
        let ones = Tensor::ones((batch, prefix), DType::F32, mask.device())?;
        Ok(Tensor::cat(&[&ones, &mask.to_dtype(DType::F32)?], 1)?)
    } else {
        Err(ModelError::Core(PeftError::ShapeMismatch {
            what: "attention mask width".into(),
            expected_from: format!(
                "the model ({tokens} positions after the embeddings hook, prefix {prefix})"
            ),
            expected: vec![batch, prefix + tokens],
            got_from: "the attention mask in the hook context".into(),
            got: vec![batch, width],
        }))
    }
}

/// `[batch, seq, heads * head_dim]` -> `[batch, heads, seq, head_dim]`, contiguous; one op, one graph node
/// (see `peft_kernels::split_heads`).
pub fn split_heads(x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    Ok(peft_kernels::split_heads(x, heads, head_dim)?)
}

/// `[batch, kv_heads, seq, head_dim]` -> `[batch, kv_heads * n_rep, seq, head_dim]`, each key/value head
/// repeated for the `n_rep` query heads of its group (head `h` reads kv head `h / n_rep`).
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, s, d))?
        .reshape((b, kv * n_rep, s, d))?)
}

/// Checks a hook's prefix against the layer's keys and broadcasts a batch-1 prefix to the batch.
pub(crate) fn fit_prefix(
    prefix: &KvPrefix,
    keys: &Tensor,
    layer: usize,
) -> Result<(Tensor, Tensor)> {
    let (b, kv, _, d) = keys.dims4()?;
    let p = prefix.len();
    let mut out = Vec::with_capacity(2);
    for (what, t) in [("key", &prefix.key), ("value", &prefix.value)] {
        let dims = t.dims();
        let fits = dims.len() == 4
            && (dims[0] == b || dims[0] == 1)
            && dims[1] == kv
            && dims[2] == p
            && dims[3] == d;
        if !fits {
            return Err(ModelError::Core(PeftError::ShapeMismatch {
                what: format!("attention prefix {what} of layer {layer}"),
                expected_from: "the model ([batch, kv_heads, prefix_len, head_dim])".into(),
                expected: vec![b, kv, p, d],
                got_from: "the attention_prefix hook".into(),
                got: dims.to_vec(),
            }));
        }
        out.push(t.to_dtype(keys.dtype())?.broadcast_as((b, kv, p, d))?);
    }
    let value = out.pop().expect("two tensors");
    let key = out.pop().expect("two tensors");
    Ok((key, value))
}

/// Scaled dot-product attention of queries `[B, heads, T, D]` over keys and values `[B, kv_heads, T, D]`
/// (already rotated where the model uses RoPE), with an optional prefix `[B or 1, kv_heads, P, D]`
/// prepended unrotated, and the additive `bias` `[B, 1, T, P + T]` from [`causal_bias`]. Returns
/// `[B, T, heads * D]`. `layer` only names the layer in errors.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    prefix: Option<&KvPrefix>,
    bias: &Tensor,
    scale: f64,
    layer: usize,
) -> Result<Tensor> {
    let (b, heads, t, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(ModelError::Config(format!(
            "{heads} query heads cannot share {kv_heads} key/value heads"
        )));
    }
    let (k, v) = match prefix {
        Some(p) if !p.is_empty() => {
            let (pk, pv) = fit_prefix(p, k, layer)?;
            (Tensor::cat(&[&pk, k], 2)?, Tensor::cat(&[&pv, v], 2)?)
        }
        _ => (k.clone(), v.clone()),
    };
    let out = peft_kernels::scaled_dot_product_attention(q, &k, &v, bias, scale)?;
    debug_assert_eq!(out.dims(), &[b, t, heads * d]);
    Ok(out)
}

/// The key/value prefixes the hooks return for every layer of one forward pass, and the additive masks that go
/// with them, built once before the first layer.
#[derive(Debug, Clone)]
pub struct PrefixMasks {
    prefixes: Vec<Option<KvPrefix>>,
    len: usize,
    with_prefix: Tensor,
    without_prefix: Tensor,
}

impl PrefixMasks {
    /// Asks `hooks` for the prefix of each of `layers` layers, for `seq` positions after the embeddings hook.
    /// Every layer that has a prefix must have the same length (it sets the positions of the real tokens);
    /// a layer without one attends to the tokens only.
    pub fn collect(hooks: &dyn Hooks, layers: usize, ctx: &Ctx, seq: usize) -> Result<Self> {
        Self::collect_with(hooks, layers, ctx, seq, causal_bias)
    }

    /// [`PrefixMasks::collect`] for an encoder: the masks hide padding only ([`bidirectional_bias`]).
    pub fn collect_bidirectional(
        hooks: &dyn Hooks,
        layers: usize,
        ctx: &Ctx,
        seq: usize,
    ) -> Result<Self> {
        Self::collect_with(hooks, layers, ctx, seq, bidirectional_bias)
    }

    fn collect_with(
        hooks: &dyn Hooks,
        layers: usize,
        ctx: &Ctx,
        seq: usize,
        mask_bias: fn(&Tensor, usize) -> Result<Tensor>,
    ) -> Result<Self> {
        let prefixes = (0..layers)
            .map(|l| hooks.attention_prefix(l, ctx))
            .collect::<peft_core::Result<Vec<_>>>()?;
        let mut len = None;
        for (layer, p) in prefixes.iter().enumerate() {
            let Some(p) = p.as_ref().filter(|p| !p.is_empty()) else {
                continue;
            };
            match len {
                None => len = Some(p.len()),
                Some(l) if l != p.len() => {
                    return Err(ModelError::Config(format!(
                        "the attention_prefix hook gave layer {layer} a prefix of {} positions, earlier layers {l}: \
                         every layer must have the same prefix length",
                        p.len()
                    )))
                }
                Some(_) => {}
            }
        }
        let len = len.unwrap_or(0);
        let keys = key_mask_with_prefix(&ctx.attention_mask, len, seq)?;
        let with_prefix = mask_bias(&keys, seq)?;
        let without_prefix = if len == 0 {
            with_prefix.clone()
        } else {
            mask_bias(&keys.narrow(1, len, seq)?, seq)?
        };
        Ok(PrefixMasks {
            prefixes,
            len,
            with_prefix,
            without_prefix,
        })
    }

    /// Prefix positions before the tokens (0 without a prefix): real tokens start at this position.
    pub fn prefix_len(&self) -> usize {
        self.len
    }

    /// The prefix of `layer`, if the hooks gave one.
    pub fn prefix(&self, layer: usize) -> Option<&KvPrefix> {
        self.prefixes
            .get(layer)
            .and_then(|p| p.as_ref())
            .filter(|p| !p.is_empty())
    }

    /// The additive mask `[batch, 1, seq, keys]` for `layer`.
    pub fn bias(&self, layer: usize) -> &Tensor {
        if self.prefix(layer).is_some() {
            &self.with_prefix
        } else {
            &self.without_prefix
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        peft_core::compare::max_abs_diff(a, b).unwrap()
    }

    #[test]
    fn bias_is_causal_and_hides_padding() {
        let dev = Device::Cpu;
        let mask = Tensor::new(&[[1f32, 1., 1., 0.]], &dev).unwrap();
        let bias = causal_bias(&mask, 2)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // Two prefix keys, then two tokens; the last key is padding.
        // Query 0 sits at position 2: it sees both prefix keys and itself, not the padded key.
        assert_eq!(bias[0][..3], [0., 0., 0.]);
        assert!(bias[0][3] <= MASKED);
        assert_eq!(bias[1][..3], [0., 0., 0.]);
        assert!(bias[1][3] <= MASKED);
        // Without padding, query 0 does not see the later token.
        let causal = causal_bias(&Tensor::ones((1, 4), DType::F32, &dev).unwrap(), 2).unwrap();
        let causal = causal
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(causal, vec![vec![0., 0., 0., MASKED], vec![0., 0., 0., 0.]]);
    }

    #[test]
    fn bidirectional_bias_hides_padding_only() {
        let dev = Device::Cpu;
        let mask = Tensor::new(&[[1f32, 1., 1., 0.]], &dev).unwrap();
        let bias = bidirectional_bias(&mask, 2).unwrap();
        assert_eq!(bias.dims(), &[1, 1, 2, 4]);
        let rows = bias
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for row in rows {
            assert_eq!(row, vec![0., 0., 0., MASKED]);
        }
    }

    #[test]
    fn gqa_repeats_each_kv_head_for_its_group() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0, &dev)
            .unwrap()
            .reshape((1, 2, 1, 1))
            .unwrap();
        let r = repeat_kv(&x, 3).unwrap();
        assert_eq!(r.dims(), &[1, 6, 1, 1]);
        assert_eq!(
            r.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0., 0., 0., 1., 1., 1.]
        );
    }

    #[test]
    fn gqa_equals_attention_with_repeated_heads() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 4, 5, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, 2, 5, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, 2, 5, 8), &dev).unwrap();
        let bias = causal_bias(&Tensor::ones((2, 5), DType::F32, &dev).unwrap(), 5).unwrap();
        let gqa = attend(&q, &k, &v, None, &bias, 0.3, 0).unwrap();
        let full = attend(
            &q,
            &repeat_kv(&k, 2).unwrap(),
            &repeat_kv(&v, 2).unwrap(),
            None,
            &bias,
            0.3,
            0,
        )
        .unwrap();
        assert_eq!(gqa.dims(), &[2, 5, 32]);
        assert!(max_diff(&gqa, &full) < 1e-6);
    }

    #[test]
    fn padded_keys_do_not_change_real_queries() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (1, 2, 4, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (1, 2, 4, 4), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (1, 2, 4, 4), &dev).unwrap();
        let bias = causal_bias(&Tensor::new(&[[1f32, 1., 0., 0.]], &dev).unwrap(), 4).unwrap();
        let padded = attend(&q, &k, &v, None, &bias, 0.5, 0)
            .unwrap()
            .narrow(1, 0, 2)
            .unwrap();
        let short = |t: &Tensor| t.narrow(2, 0, 2).unwrap();
        let bias2 = causal_bias(&Tensor::ones((1, 2), DType::F32, &dev).unwrap(), 2).unwrap();
        let real = attend(&short(&q), &short(&k), &short(&v), None, &bias2, 0.5, 0).unwrap();
        assert!(max_diff(&padded, &real) < 1e-6);
    }

    #[test]
    fn prefix_is_prepended_and_seen_by_every_query() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 2, 3, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, 1, 3, 4), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, 1, 3, 4), &dev).unwrap();
        let prefix = KvPrefix {
            key: Tensor::randn(0f32, 1., (1, 1, 2, 4), &dev).unwrap(),
            value: Tensor::randn(0f32, 1., (1, 1, 2, 4), &dev).unwrap(),
        };
        let mask =
            key_mask_with_prefix(&Tensor::ones((2, 3), DType::F32, &dev).unwrap(), 2, 3).unwrap();
        assert_eq!(mask.dims(), &[2, 5]);
        let bias = causal_bias(&mask, 3).unwrap();
        let out = attend(&q, &k, &v, Some(&prefix), &bias, 0.5, 0).unwrap();
        // Same as attention over explicitly concatenated keys (the batch-1 prefix broadcast), where the
        // queries are the last three rows of a plain causal mask over five positions.
        let cat = |p: &Tensor, x: &Tensor| {
            Tensor::cat(&[&p.broadcast_as((2, 1, 2, 4)).unwrap(), x], 2).unwrap()
        };
        let full_bias = causal_bias(&Tensor::ones((2, 5), DType::F32, &dev).unwrap(), 5)
            .unwrap()
            .narrow(2, 2, 3)
            .unwrap();
        let reference = attend(
            &q,
            &cat(&prefix.key, &k),
            &cat(&prefix.value, &v),
            None,
            &full_bias,
            0.5,
            0,
        )
        .unwrap();
        assert!(max_diff(&out, &reference) < 1e-6);
    }

    #[test]
    fn wrong_prefix_shape_names_the_layer() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 3, 4), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 3, 4), DType::F32, &dev).unwrap();
        let prefix = KvPrefix {
            key: Tensor::zeros((1, 2, 2, 5), DType::F32, &dev).unwrap(),
            value: Tensor::zeros((1, 2, 2, 5), DType::F32, &dev).unwrap(),
        };
        let bias = causal_bias(&Tensor::ones((1, 5), DType::F32, &dev).unwrap(), 3).unwrap();
        let err = attend(&q, &k, &k, Some(&prefix), &bias, 1.0, 7)
            .unwrap_err()
            .to_string();
        assert!(err.contains("layer 7"), "{err}");
    }

    #[test]
    fn fully_masked_rows_stay_finite() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (1, 1, 2, 4), &dev).unwrap();
        let bias = causal_bias(&Tensor::zeros((1, 2), DType::F32, &dev).unwrap(), 2).unwrap();
        let out = attend(&q, &q, &q, None, &bias, 1.0, 0).unwrap();
        let values = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()));
    }
}
