//! The decoder's self-attention cache and where prefix tuning enters it. HF PEFT hands an encoder-decoder's
//! prefix to the decoder as its self-attention cache (the cross-attention cache left empty), so a sequence's
//! cache starts as the hooks' prefix of each decoder layer; every decoding step appends its keys and values
//! behind it. Real decoder tokens therefore sit at positions `prefix..`, which the relative position bias sees.
//!
//! ```
//! use candle_core::Tensor;
//! use peft_core::hooks::NoHooks;
//! use peft_core::model::{Batch, DecoderCache, EncoderDecoder};
//! let t5 = peft_models::t5::tiny(0);
//! let dev = candle_core::Device::Cpu;
//! let encoded = t5.encode(&Batch::single(&[5, 6, 7], &dev).unwrap(), &NoHooks).unwrap();
//! let mut cache = DecoderCache::default();
//! let start = Tensor::new(&[[0u32]], &dev).unwrap();
//! t5.decode(&encoded, &start, &mut cache, &NoHooks).unwrap();
//! assert_eq!((cache.seen, cache.self_attn.len()), (1, 2)); // one position, two decoder layers
//! ```

use candle_core::Tensor;
use peft_core::hooks::{Ctx, Hooks, KvPrefix};
use peft_core::model::{CachedKv, DecoderCache};
use peft_core::PeftError;

use crate::error::{ModelError, Result};

/// The shape every cached key and value of the decoder has: `[batch, heads, positions, head_dim]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KvShape {
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Starts the cache of a new sequence: each decoder layer's self-attention cache is the prefix the hooks give
/// it (asked with `ctx`, a context over the decoder positions), broadcast to the batch; the cross-attention
/// cache is empty. Every layer with a prefix must have the same length.
pub(crate) fn start(
    cache: &mut DecoderCache,
    hooks: &dyn Hooks,
    layers: usize,
    ctx: &Ctx,
    shape: KvShape,
) -> Result<()> {
    let mut self_attn = Vec::with_capacity(layers);
    let mut len: Option<(usize, usize)> = None;
    for layer in 0..layers {
        let prefix = hooks
            .attention_prefix(layer, ctx)?
            .filter(|p| !p.is_empty());
        let Some(prefix) = prefix else {
            self_attn.push(None);
            continue;
        };
        match len {
            Some((first, l)) if l != prefix.len() => {
                return Err(ModelError::Config(format!(
                    "the attention_prefix hook gave decoder layer {layer} a prefix of {} positions, decoder layer \
                     {first} {l}: every layer must have the same prefix length",
                    prefix.len()
                )))
            }
            Some(_) => {}
            None => len = Some((layer, prefix.len())),
        }
        self_attn.push(Some(fit(&prefix, shape, layer)?));
    }
    *cache = DecoderCache {
        self_attn,
        cross_attn: vec![None; layers],
        seen: 0,
    };
    Ok(())
}

/// Checks a hook's prefix against the decoder's heads and head size and broadcasts a batch-1 prefix.
fn fit(prefix: &KvPrefix, shape: KvShape, layer: usize) -> Result<CachedKv> {
    let p = prefix.len();
    let expected = [shape.batch, shape.heads, p, shape.head_dim];
    let mut out = Vec::with_capacity(2);
    for (what, t) in [("key", &prefix.key), ("value", &prefix.value)] {
        let dims = t.dims();
        let fits = dims.len() == 4
            && (dims[0] == shape.batch || dims[0] == 1)
            && dims[1..] == expected[1..];
        if !fits {
            return Err(ModelError::Core(PeftError::ShapeMismatch {
                what: format!("attention prefix {what} of decoder layer {layer}"),
                expected_from: "the T5 decoder ([batch, heads, prefix_len, d_kv])".into(),
                expected: expected.to_vec(),
                got_from: "the attention_prefix hook".into(),
                got: dims.to_vec(),
            }));
        }
        out.push(
            t.to_dtype(candle_core::DType::F32)?
                .broadcast_as(expected.as_slice())?
                .contiguous()?,
        );
    }
    let value = out.pop().expect("two tensors");
    let key = out.pop().expect("two tensors");
    Ok(CachedKv { key, value })
}

/// Checks a cache that continues a sequence against the decoder and returns the prefix length: every layer
/// holds `seen` positions, or the prefix and `seen` positions.
pub(crate) fn prefix_len(cache: &DecoderCache, layers: usize, shape: KvShape) -> Result<usize> {
    let restart = "start each sequence from DecoderCache::default()";
    if cache.self_attn.len() != layers || cache.cross_attn.len() != layers {
        return Err(ModelError::Config(format!(
            "the decoder cache holds {} self-attention and {} cross-attention layers, the T5 decoder has {layers}: \
             {restart}",
            cache.self_attn.len(),
            cache.cross_attn.len()
        )));
    }
    let mut prefix = 0;
    for (layer, kv) in cache.self_attn.iter().enumerate() {
        let held = match kv {
            Some(kv) => {
                let (b, h, n, d) = kv.key.dims4()?;
                if (b, h, d) != (shape.batch, shape.heads, shape.head_dim)
                    || kv.value.dims() != kv.key.dims()
                {
                    return Err(ModelError::Config(format!(
                        "the decoder cache of layer {layer} holds keys {:?} and values {:?}, the decoder needs \
                         [{}, {}, positions, {}]: {restart}",
                        kv.key.dims(),
                        kv.value.dims(),
                        shape.batch,
                        shape.heads,
                        shape.head_dim
                    )));
                }
                n
            }
            None => 0,
        };
        let extra = held.checked_sub(cache.seen).ok_or_else(|| {
            ModelError::Config(format!(
                "the decoder cache of layer {layer} holds {held} positions but says {} were decoded: {restart}",
                cache.seen
            ))
        })?;
        if extra != 0 && prefix != 0 && extra != prefix {
            return Err(ModelError::Config(format!(
                "the decoder cache holds prefixes of {prefix} and {extra} positions: {restart}"
            )));
        }
        prefix = prefix.max(extra);
    }
    Ok(prefix)
}

/// `cached` followed by `new` along the positions, or `new` alone.
pub(crate) fn append(cached: Option<&CachedKv>, key: Tensor, value: Tensor) -> Result<CachedKv> {
    Ok(match cached {
        Some(c) => CachedKv {
            key: Tensor::cat(&[&c.key, &key], 2)?,
            value: Tensor::cat(&[&c.value, &value], 2)?,
        },
        None => CachedKv { key, value },
    })
}
