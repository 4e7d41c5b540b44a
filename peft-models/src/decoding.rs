//! One forward pass of a decoder-only model, with or without a key/value cache: the shared bookkeeping of
//! positions, masks, prefixes and cached keys that GPT-2, LLaMA, OPT and Gemma-3 run their layers between.
//!
//! Positions count each row's real keys: the position of a token is the number of unmasked keys before it
//! (a key/value prefix, virtual tokens and earlier tokens), so a left-padded row, or a row whose virtual tokens
//! or prefix are padded to a longer neighbour's, sits where it sits alone. In a right-padded batch, real tokens
//! get `prefix + t` as before, and padding keeps its column's position, as transformers gives it.
//!
//! ```
//! use peft_core::hooks::NoHooks;
//! use peft_core::kv_cache::KvCache;
//! use peft_core::model::{BaseModel, Batch};
//! use candle_core::IndexOp;
//! let model = peft_models::tiny::llama(0);
//! let dev = model.device();
//! let full = model.forward(&Batch::single(&[1, 2, 3], dev).unwrap(), &NoHooks).unwrap();
//! let mut cache = KvCache::new();
//! model.forward_cached(&Batch::single(&[1, 2], dev).unwrap(), &mut cache, &NoHooks).unwrap();
//! let last = model.forward_cached(&Batch::single(&[3], dev).unwrap(), &mut cache, &NoHooks).unwrap();
//! let diff = (full.hidden.i((0, 2)).unwrap() - last.hidden.i((0, 0)).unwrap()).unwrap();
//! assert!(diff.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() < 1e-5);
//! ```

use candle_core::{DType, Tensor};
use peft_core::hooks::Hooks;
use peft_core::kv_cache::KvCache;
use peft_core::model::{Batch, CachedKv};

use crate::attention::{causal_bias, fit_prefix, key_mask_with_prefix, PrefixMasks};
use crate::embedding::{embed, lookup, Embedded, Rows};
use crate::error::{ModelError, Result};

/// Where the keys before this pass's tokens come from.
enum Before {
    /// A prompt's pass: the hooks' prefixes (and masks per layer, with and without one).
    Prompt(PrefixMasks),
    /// A decoding step: the cached keys of every layer and one mask over cache and new tokens.
    Cached {
        past: Vec<Option<CachedKv>>,
        bias: Tensor,
    },
}

/// The state of one decoder forward pass (see the module documentation).
pub(crate) struct DecoderPass {
    /// `[batch, seq, hidden]` input states: word embeddings after the embeddings hook (a prompt's pass) or of
    /// the new tokens (a decoding step), no positions added.
    pub x: Tensor,
    /// Virtual tokens in front of `x`'s tokens (0 on a decoding step).
    pub virtual_tokens: usize,
    before: Before,
    /// `[batch, keys]` mask over every key this pass attends to (prefix or cache, then `x`'s positions).
    key_mask: Tensor,
    /// `[batch, seq]` position of each of `x`'s positions.
    positions: Vec<Vec<u32>>,
    next_positions: Vec<u32>,
    /// Keys and values per layer, kept for the cache.
    kept: Vec<Option<CachedKv>>,
    caching: bool,
}

/// Position of every column of `mask` rows, the first column at `first[row]`: a real key's position is the
/// count of real keys before it; a masked one keeps its column's (`first + column`, what transformers gives
/// padding in a forward pass without position ids, so padded rows' outputs match its outputs there too).
/// Also returns each row's next position.
fn count_positions(mask: &[Vec<f32>], first: &[u32]) -> (Vec<Vec<u32>>, Vec<u32>) {
    let mut next = Vec::with_capacity(mask.len());
    let positions = mask
        .iter()
        .zip(first)
        .map(|(row, &start)| {
            let mut seen = start;
            let row = row
                .iter()
                .enumerate()
                .map(|(column, &m)| {
                    if m > 0.5 {
                        seen += 1;
                        seen - 1
                    } else {
                        start + column as u32
                    }
                })
                .collect();
            next.push(seen);
            row
        })
        .collect();
    (positions, next)
}

impl DecoderPass {
    /// Starts a pass over `batch` for a model of `layers` layers whose word embeddings are `table`: a prompt's
    /// pass when `cache` is `None` or empty (the embeddings and prefix hooks run), a decoding step otherwise.
    /// Positions past `max_positions` are refused, naming the model's `limit_name`.
    pub fn begin(
        table: &(impl Rows + ?Sized),
        batch: &Batch,
        hooks: &dyn Hooks,
        cache: Option<&KvCache>,
        layers: usize,
        max_positions: usize,
        limit_name: &str,
    ) -> Result<Self> {
        let caching = cache.is_some();
        match cache.filter(|c| !c.is_empty()) {
            None => {
                let Embedded {
                    x,
                    ctx,
                    masks,
                    start,
                } = embed(table, batch, hooks, layers, max_positions, limit_name)?;
                let seq = x.dim(1)?;
                let key_mask = key_mask_with_prefix(&ctx.attention_mask, start, seq)?;
                let rows = key_mask.dims2()?.0;
                let (all, next) = count_positions(&key_mask.to_vec2()?, &vec![0; rows]);
                let positions = all.into_iter().map(|r| r[start..].to_vec()).collect();
                if caching && start > 0 {
                    if let Some(layer) = (0..layers).find(|&l| masks.prefix(l).is_none()) {
                        return Err(ModelError::Config(format!(
                            "the hooks give some layers a key/value prefix but not layer {layer}: a key/value cache \
                             needs every layer to have one or none"
                        )));
                    }
                }
                Ok(DecoderPass {
                    x,
                    virtual_tokens: ctx.virtual_tokens,
                    before: Before::Prompt(masks),
                    key_mask,
                    positions,
                    next_positions: next,
                    kept: vec![None; layers],
                    caching,
                })
            }
            Some(cache) => {
                let (rows, seq) = batch.shape();
                if cache.rows() != rows {
                    return Err(ModelError::Config(format!(
                        "a decoding step of {rows} rows was given a key/value cache of {} rows",
                        cache.rows()
                    )));
                }
                let new_mask = batch.attention_mask.to_dtype(DType::F32)?;
                let (positions, next) =
                    count_positions(&new_mask.to_vec2()?, cache.next_positions());
                if let Some(&last) = next.iter().max() {
                    if last as usize > max_positions {
                        return Err(ModelError::Config(format!(
                            "{last} positions exceed {limit_name} {max_positions}"
                        )));
                    }
                }
                let past_mask = cache.key_mask().expect("a filled cache has a mask");
                let key_mask = Tensor::cat(&[past_mask, &new_mask], 1)?;
                let bias = causal_bias(&key_mask, seq)?;
                let past = (0..layers).map(|l| cache.layer(l).cloned()).collect();
                Ok(DecoderPass {
                    x: lookup(table, &batch.input_ids)?,
                    virtual_tokens: 0,
                    before: Before::Cached { past, bias },
                    key_mask,
                    positions,
                    next_positions: next,
                    kept: vec![None; layers],
                    caching,
                })
            }
        }
    }

    /// `[batch, seq]` u32 positions of `x`'s positions.
    pub fn positions(&self) -> Result<Tensor> {
        Ok(Tensor::new(self.positions.clone(), self.x.device())?)
    }

    /// The positions as rows of numbers.
    pub fn position_rows(&self) -> &[Vec<u32>] {
        &self.positions
    }

    /// `[batch, keys]` mask over the keys of a layer that has a prefix (or of every layer on a decoding step):
    /// prefix or cache, then this pass's positions.
    pub fn key_mask(&self) -> &Tensor {
        &self.key_mask
    }

    /// Layer `layer`'s keys and values with what comes before them (its prefix on a prompt's pass, the cache on
    /// a decoding step), and the additive mask `[batch, 1, seq, keys]` over them. `k` and `v` are
    /// `[batch, kv_heads, seq, head_dim]`, already rotated where the model rotates them. When caching, they
    /// are kept for [`DecoderPass::finish`].
    pub fn keys_values(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (k, v, bias) = match &self.before {
            Before::Prompt(masks) => match masks.prefix(layer) {
                Some(prefix) => {
                    let (pk, pv) = fit_prefix(prefix, &k, layer)?;
                    (
                        Tensor::cat(&[&pk, &k], 2)?,
                        Tensor::cat(&[&pv, &v], 2)?,
                        masks.bias(layer).clone(),
                    )
                }
                None => (k, v, masks.bias(layer).clone()),
            },
            Before::Cached { past, bias } => {
                let past = past[layer].as_ref().ok_or_else(|| {
                    ModelError::Config(format!("the key/value cache has no keys for layer {layer}"))
                })?;
                (
                    Tensor::cat(&[&past.key, &k.to_dtype(past.key.dtype())?], 2)?,
                    Tensor::cat(&[&past.value, &v.to_dtype(past.value.dtype())?], 2)?,
                    bias.clone(),
                )
            }
        };
        if self.caching {
            self.kept[layer] = Some(CachedKv {
                key: k.detach(),
                value: v.detach(),
            });
        }
        Ok((k, v, bias))
    }

    /// Ends the pass: the cache, if one was given, now holds every layer's keys and values.
    pub fn finish(self, cache: Option<&mut KvCache>) -> Result<()> {
        if let Some(cache) = cache {
            cache.store(self.kept, self.key_mask, self.next_positions)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_real_keys_and_continue_from_the_cache() {
        let mask = vec![vec![0., 0., 1., 1.], vec![1., 1., 1., 0.]];
        let (pos, next) = count_positions(&mask, &[0, 0]);
        assert_eq!(pos, vec![vec![0, 1, 0, 1], vec![0, 1, 2, 3]]);
        assert_eq!(next, vec![2, 3]);
        let (pos, next) = count_positions(&[vec![1.], vec![0.]], &next);
        assert_eq!(pos, vec![vec![2], vec![3]]);
        assert_eq!(next, vec![3, 3]);
    }
}
