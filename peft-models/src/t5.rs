//! T5 (`T5ForConditionalGeneration`: T5 v1.0, T5 v1.1, flan-t5) as a frozen encoder-decoder: T5 layer norms
//! (RMS, no bias), attention without score scaling plus a relative position bias (bidirectional buckets in the
//! encoder, causal ones in the decoder, computed by each stack's first block and shared by its blocks),
//! cross-attention over the encoder states, and a `relu` (`wo(relu(wi x))`) or gated (`wo(gelu(wi_0 x) * wi_1 x)`)
//! feed-forward. The head is `lm_head.weight` (T5 v1.1, flan-t5) or the `shared` embeddings with the decoder output
//! scaled by `d_model^-0.5` (T5 v1.0), folded into the [`FrozenLinear`] that [`BaseModel::lm_head`] returns.
//!
//! The hooks meet T5 as HF PEFT's `PeftModelForSeq2SeqLM` does: the embeddings hook (prompt tuning, P-tuning)
//! prepends virtual tokens to the encoder input, and the encoder mask gains leading ones; the
//! `attention_prefix` hook (prefix tuning) feeds the self-attention of each decoder block, as HF PEFT's prefix
//! becomes the decoder's self-attention cache, so that real decoder tokens sit at positions `prefix..` for the
//! relative position bias; the encoder gets no prefix. Every projection (`q`, `k`, `v`, `o` of `SelfAttention` and
//! `EncDecAttention`, `wi` / `wi_0` / `wi_1` / `wo`) is a linear site and every layer norm a norm site, under
//! Hugging Face's module names with the block index as layer (`decoder.block.1.layer.1.EncDecAttention.q`,
//! layer 1). The relative attention bias tables are frozen parameters, not sites.
//!
//! [`BaseModel::forward`] encodes the input ids and decodes all `decoder_input_ids`; it returns the decoder's final
//! states. [`EncoderDecoder`] decodes step by step through a [`DecoderCache`]; both give the same states.
//!
//! Choices where HF leaves room: `spec.num_layers` is the encoder depth (HF PEFT's `num_layers` for T5); a
//! checkpoint whose `num_decoder_layers` differs is supported, and the `attention_prefix` hook is asked for every
//! decoder block `0..num_decoder_layers` (a prefix-tuning adapter built for fewer layers refuses the rest by name,
//! where HF PEFT would fail on the shapes). A decoder block the hook gives no prefix attends to the real tokens
//! only, still at positions `prefix..`. `spec.max_positions` is the config's `n_positions`, else 512: T5 has no
//! position table, so the model enforces no limit; the number tells tasks how far to truncate. The
//! `attention_prefix` hook gets a context over the decoder positions (a mask of ones, no virtual tokens).
//!
//! ```
//! use candle_core::Tensor;
//! use peft_core::hooks::NoHooks;
//! use peft_core::model::{BaseModel, Batch, DecoderCache};
//! let t5 = peft_models::t5::tiny(0);
//! let dev = t5.device().clone();
//! let decoder_ids = Tensor::new(&[[0u32, 7, 9]], &dev).unwrap();
//! let batch = Batch::single(&[5, 6, 7, 1], &dev).unwrap().with_decoder_input_ids(decoder_ids).unwrap();
//! let out = t5.forward(&batch, &NoHooks).unwrap();
//! assert_eq!(out.hidden.dims(), &[1, 3, 32]); // one state per decoder id
//! assert_eq!(t5.logits(&out.hidden).unwrap().dims(), &[1, 3, 128]);
//!
//! // Step by step through the cache: the same states.
//! let ed = t5.encoder_decoder().unwrap();
//! let encoded = ed.encode(&batch, &NoHooks).unwrap();
//! let mut cache = DecoderCache::default();
//! let mut diff = 0f32;
//! for (t, id) in [0u32, 7, 9].into_iter().enumerate() {
//!     let step = Tensor::new(&[[id]], &dev).unwrap();
//!     let h = ed.decode(&encoded, &step, &mut cache, &NoHooks).unwrap();
//!     let full = out.hidden.narrow(1, t, 1).unwrap();
//!     diff = diff.max(peft_core::compare::max_abs_diff(&h, &full).unwrap());
//! }
//! assert!(diff < 1e-5);
//! ```

mod config;
mod decoder_cache;
pub mod relative_position;
mod tiny;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::{Ctx, Hooks};
use peft_core::model::{BaseModel, Batch, DecoderCache, Encoded, EncoderDecoder, Output};
use peft_core::spec::{ModelSpec, Role, SiteId};
use peft_core::PeftError;
use peft_kernels::frozen::FrozenGemm;
use serde_json::Value;

pub use config::{T5Config, DEFAULT_CONTEXT};
pub use tiny::{tiny, tiny_config, tiny_weights, tiny_with};

use crate::attention::{attend, causal_bias, split_heads, MASKED};
use crate::config_checks::check_layer_count;
use crate::embedding::lookup;
use crate::error::{ModelError, Result};
use crate::parts::{
    linear_at, linear_at_mut, projection_fields, Activation, Loader, Projection, RmsNorm,
};
use crate::tensor_usage::Allowed;
use crate::weights::WeightMap;
use decoder_cache::KvShape;
use relative_position::RelativeBias;

/// The four projections of one attention (`SelfAttention` or `EncDecAttention`).
#[derive(Debug, Clone)]
struct Attention {
    q: Projection,
    k: Projection,
    v: Projection,
    o: Projection,
}

impl Attention {
    fn load(
        ld: &mut Loader<'_>,
        module: &str,
        layer: usize,
        d: usize,
        inner: usize,
    ) -> Result<Self> {
        // Cross-attention (`EncDecAttention`) plays the same roles as self-attention, as HF PEFT's defaults
        // (`q`, `v`) select both.
        let mut proj = |role, p: &str, i, o| {
            ld.linear(role, &format!("{module}.{p}"), Some(layer), i, o, false)
        };
        Ok(Attention {
            q: proj(Role::Query, "q", d, inner)?,
            k: proj(Role::Key, "k", d, inner)?,
            v: proj(Role::Value, "v", d, inner)?,
            o: proj(Role::AttentionOutput, "o", inner, d)?,
        })
    }
}

projection_fields!(Attention: [q, k, v, o]);

/// `DenseReluDense`: `wo(act(wi x))`, or gated `wo(act(wi_0 x) * wi_1 x)`.
#[derive(Debug, Clone)]
enum Dense {
    Plain {
        wi: Projection,
        wo: Projection,
    },
    Gated {
        wi_0: Projection,
        wi_1: Projection,
        wo: Projection,
    },
}

/// The feed-forward sub-layer (`T5LayerFF`): norm, dense, residual.
#[derive(Debug, Clone)]
struct FeedForward {
    layer_norm: RmsNorm,
    dense: Dense,
    act: Activation,
}

impl FeedForward {
    fn load(ld: &mut Loader<'_>, module: &str, layer: usize, cfg: &T5Config) -> Result<Self> {
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let dense = |ld: &mut Loader<'_>, role, p: &str, i, o| {
            ld.linear(
                role,
                &format!("{module}.DenseReluDense.{p}"),
                Some(layer),
                i,
                o,
                false,
            )
        };
        let dense = if cfg.is_gated()? {
            Dense::Gated {
                // `act(wi_0 x) * wi_1 x`: the activated branch is the gate, as LLaMA's `gate_proj`.
                wi_0: dense(ld, Role::MlpGate, "wi_0", d, ff)?,
                wi_1: dense(ld, Role::MlpUp, "wi_1", d, ff)?,
                wo: dense(ld, Role::MlpDown, "wo", ff, d)?,
            }
        } else {
            Dense::Plain {
                wi: dense(ld, Role::MlpUp, "wi", d, ff)?,
                wo: dense(ld, Role::MlpDown, "wo", ff, d)?,
            }
        };
        let layer_norm = ld.rms_norm(
            Role::MlpNorm,
            &format!("{module}.layer_norm"),
            Some(layer),
            d,
            cfg.layer_norm_epsilon,
        )?;
        Ok(FeedForward {
            layer_norm,
            dense,
            act: cfg.activation()?,
        })
    }

    fn forward(&self, x: &Tensor, hooks: &dyn Hooks) -> Result<Tensor> {
        let h = self.layer_norm.forward(x, hooks)?;
        let y = match &self.dense {
            Dense::Plain { wi, wo } => {
                wo.forward(&self.act.apply(&wi.forward(&h, hooks)?)?, hooks)?
            }
            Dense::Gated { wi_0, wi_1, wo } => {
                let gate = self.act.apply(&wi_0.forward(&h, hooks)?)?;
                wo.forward(&(gate * wi_1.forward(&h, hooks)?)?, hooks)?
            }
        };
        Ok((x + y)?)
    }

    fn projections(&self) -> Vec<&Projection> {
        match &self.dense {
            Dense::Plain { wi, wo } => vec![wi, wo],
            Dense::Gated { wi_0, wi_1, wo } => vec![wi_0, wi_1, wo],
        }
    }

    fn projections_mut(&mut self) -> Vec<&mut Projection> {
        match &mut self.dense {
            Dense::Plain { wi, wo } => vec![wi, wo],
            Dense::Gated { wi_0, wi_1, wo } => vec![wi_0, wi_1, wo],
        }
    }
}

/// An encoder block: self-attention (`layer.0`), feed-forward (`layer.1`).
#[derive(Debug, Clone)]
struct EncoderBlock {
    self_attn: Attention,
    self_attn_norm: RmsNorm,
    ff: FeedForward,
}

/// A decoder block: causal self-attention (`layer.0`), cross-attention (`layer.1`), feed-forward (`layer.2`).
#[derive(Debug, Clone)]
struct DecoderBlock {
    self_attn: Attention,
    self_attn_norm: RmsNorm,
    cross_attn: Attention,
    cross_attn_norm: RmsNorm,
    ff: FeedForward,
}

impl EncoderBlock {
    fn projections(&self) -> impl Iterator<Item = &Projection> {
        self.self_attn.projections().chain(self.ff.projections())
    }

    fn projections_mut(&mut self) -> impl Iterator<Item = &mut Projection> {
        let ff = self.ff.projections_mut();
        self.self_attn.projections_mut().chain(ff)
    }
}

impl DecoderBlock {
    fn projections(&self) -> impl Iterator<Item = &Projection> {
        let attn = self
            .self_attn
            .projections()
            .chain(self.cross_attn.projections());
        attn.chain(self.ff.projections())
    }

    fn projections_mut(&mut self) -> impl Iterator<Item = &mut Projection> {
        let (cross, ff) = (self.cross_attn.projections_mut(), self.ff.projections_mut());
        self.self_attn.projections_mut().chain(cross).chain(ff)
    }
}

/// T5 with frozen weights; implements [`BaseModel`] and [`EncoderDecoder`].
#[derive(Debug, Clone)]
pub struct T5 {
    config: T5Config,
    spec: ModelSpec,
    device: Device,
    shared: Tensor,
    encoder_bias: RelativeBias,
    encoder: Vec<EncoderBlock>,
    encoder_norm: RmsNorm,
    decoder_bias: RelativeBias,
    decoder: Vec<DecoderBlock>,
    decoder_norm: RmsNorm,
    lm_head: FrozenLinear,
    parameters: Vec<(String, Tensor)>,
}

/// Tensors a T5 checkpoint may hold that the model does not read.
pub const ALLOWED_UNUSED: &[Allowed] = &[
    Allowed::new(
        "encoder.embed_tokens.weight",
        "a tied copy of `shared.weight` (transformers ties the two and reads `shared`)",
    ),
    Allowed::new(
        "decoder.embed_tokens.weight",
        "a tied copy of `shared.weight` (transformers ties the two and reads `shared`)",
    ),
    Allowed::new(
        "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
        "cross-attention has no position bias; T5 v1.0 checkpoints (t5-small) carry this unused table, which \
         transformers ignores too",
    ),
];

/// The name the word embeddings are stored under: `shared.weight`, or one of its tied copies.
fn embeddings_name(weights: &WeightMap) -> &'static str {
    [
        "shared.weight",
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
    ]
    .into_iter()
    .find(|n| weights.contains(n))
    .unwrap_or("shared.weight")
}

/// The additive bias `[batch, 1, 1, keys]` that hides padded keys (no causal order).
fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, k) = mask.dims2()?;
    let bias = (mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)? * MASKED as f64)?;
    Ok(bias.reshape((b, 1, 1, k))?.detach())
}

impl T5 {
    /// Builds the model from checkpoint tensors with Hugging Face names (`shared.weight` or its tied copies
    /// `encoder.embed_tokens.weight` / `decoder.embed_tokens.weight`, `encoder.block.{i}.layer.0.SelfAttention.q.weight`,
    /// ..., `lm_head.weight` where the head is untied). `name_or_path` is recorded in the spec.
    pub fn from_weights(cfg: &T5Config, weights: &WeightMap, name_or_path: &str) -> Result<T5> {
        cfg.validate()?;
        check_layer_count("num_layers", cfg.num_layers, weights, "encoder.block")?;
        let decoder_key = match cfg.num_decoder_layers {
            Some(_) => "num_decoder_layers",
            None => "num_layers (the decoder's depth where num_decoder_layers is absent)",
        };
        check_layer_count(decoder_key, cfg.decoder_layers(), weights, "decoder.block")?;
        let (d, heads, d_kv) = (cfg.d_model, cfg.num_heads, cfg.d_kv);
        let inner = heads * d_kv;
        let mut spec = ModelSpec::new(
            "t5",
            cfg.num_layers,
            d,
            heads,
            heads,
            cfg.vocab_size,
            cfg.context(),
        );
        spec.head_dim = d_kv;
        spec.is_encoder_decoder = true;
        spec.name_or_path = name_or_path.to_string();
        let mut ld = Loader::new(weights, spec);
        let eps = cfg.layer_norm_epsilon;
        let buckets = [cfg.relative_attention_num_buckets, heads];

        let shared = ld.tensor(embeddings_name(weights), &[cfg.vocab_size, d])?;
        let mut encoder = Vec::with_capacity(cfg.num_layers);
        let mut encoder_bias = None;
        for i in 0..cfg.num_layers {
            let p = format!("encoder.block.{i}.layer");
            let self_attn = Attention::load(&mut ld, &format!("{p}.0.SelfAttention"), i, d, inner)?;
            if i == 0 {
                let name = format!("{p}.0.SelfAttention.relative_attention_bias.weight");
                encoder_bias = Some(ld.tensor(&name, &buckets)?);
            }
            encoder.push(EncoderBlock {
                self_attn,
                self_attn_norm: ld.rms_norm(
                    Role::AttentionNorm,
                    &format!("{p}.0.layer_norm"),
                    Some(i),
                    d,
                    eps,
                )?,
                ff: FeedForward::load(&mut ld, &format!("{p}.1"), i, cfg)?,
            });
        }
        let encoder_norm =
            ld.rms_norm(Role::FinalNorm, "encoder.final_layer_norm", None, d, eps)?;
        let mut decoder = Vec::with_capacity(cfg.decoder_layers());
        let mut decoder_bias = None;
        for i in 0..cfg.decoder_layers() {
            let p = format!("decoder.block.{i}.layer");
            let self_attn = Attention::load(&mut ld, &format!("{p}.0.SelfAttention"), i, d, inner)?;
            if i == 0 {
                let name = format!("{p}.0.SelfAttention.relative_attention_bias.weight");
                decoder_bias = Some(ld.tensor(&name, &buckets)?);
            }
            let self_attn_norm = ld.rms_norm(
                Role::AttentionNorm,
                &format!("{p}.0.layer_norm"),
                Some(i),
                d,
                eps,
            )?;
            let cross_attn =
                Attention::load(&mut ld, &format!("{p}.1.EncDecAttention"), i, d, inner)?;
            decoder.push(DecoderBlock {
                self_attn,
                self_attn_norm,
                cross_attn,
                cross_attn_norm: ld.rms_norm(
                    Role::AttentionNorm,
                    &format!("{p}.1.layer_norm"),
                    Some(i),
                    d,
                    eps,
                )?,
                ff: FeedForward::load(&mut ld, &format!("{p}.2"), i, cfg)?,
            });
        }
        let decoder_norm =
            ld.rms_norm(Role::FinalNorm, "decoder.final_layer_norm", None, d, eps)?;

        // transformers 5 ties the head to `shared` unless the checkpoint has an `lm_head.weight` of its own.
        let own_head = match weights.contains("lm_head.weight") {
            true => {
                let head = weights.get("lm_head.weight", &[cfg.vocab_size, d])?;
                let same = peft_core::compare::max_abs_diff(&head, &shared)? == 0.0;
                // A copy equal to `shared` is read (compared) and is the head: used either way.
                ld.mark_used("lm_head.weight");
                (!same).then_some(head)
            }
            // An untied config without its head is an incomplete checkpoint: name the tensor.
            false if cfg.tie_word_embeddings == Some(false) => {
                Some(weights.get("lm_head.weight", &[cfg.vocab_size, d])?)
            }
            false => None,
        };
        let head = match own_head {
            Some(_) => ld.tensor("lm_head.weight", &[cfg.vocab_size, d])?,
            None => shared.clone(),
        };
        let head = if cfg.scales_decoder_output() {
            (head * (d as f64).powf(-0.5))?
        } else {
            head
        };
        let (spec, parameters) = ld.finish(ALLOWED_UNUSED)?;
        let max_distance = cfg.relative_attention_max_distance;
        let missing = |stack: &str| {
            ModelError::Config(format!(
                "T5 {stack} has no blocks, so no relative_attention_bias"
            ))
        };
        Ok(T5 {
            config: cfg.clone(),
            spec,
            device: shared.device().clone(),
            encoder_bias: RelativeBias::new(
                encoder_bias.ok_or_else(|| missing("encoder"))?,
                true,
                max_distance,
            ),
            decoder_bias: RelativeBias::new(
                decoder_bias.ok_or_else(|| missing("decoder"))?,
                false,
                max_distance,
            ),
            shared,
            encoder,
            encoder_norm,
            decoder,
            decoder_norm,
            lm_head: FrozenLinear::new(head, None, &FrozenGemm),
            parameters,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    fn kv_shape(&self, batch: usize) -> KvShape {
        KvShape {
            batch,
            heads: self.config.num_heads,
            head_dim: self.config.d_kv,
        }
    }

    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        split_heads(x, self.config.num_heads, self.config.d_kv)
    }

    fn encode_states(&self, batch: &Batch, hooks: &dyn Hooks) -> Result<Encoded> {
        let mut ctx = Ctx::new(batch.attention_mask.clone());
        let x = hooks.embeddings(lookup(&self.shared, &batch.input_ids)?, &mut ctx)?;
        let (b, s, _) = x.dims3()?;
        if ctx.attention_mask.dims() != [b, s] {
            return Err(ModelError::Core(PeftError::ShapeMismatch {
                what: "encoder attention mask".into(),
                expected_from: "the embeddings hook's output (virtual tokens included)".into(),
                expected: vec![b, s],
                got_from: "the attention mask in the hook context".into(),
                got: ctx.attention_mask.dims().to_vec(),
            }));
        }
        // The position bias of the first block is shared by all blocks; padded keys are hidden.
        let bias = self
            .encoder_bias
            .bias(s, s, 0)?
            .broadcast_add(&padding_bias(&ctx.attention_mask)?)?;
        let mut x = x;
        for (i, block) in self.encoder.iter().enumerate() {
            let h = block.self_attn_norm.forward(&x, hooks)?;
            let a = &block.self_attn;
            let q = self.heads(&a.q.forward(&h, hooks)?)?;
            let k = self.heads(&a.k.forward(&h, hooks)?)?;
            let v = self.heads(&a.v.forward(&h, hooks)?)?;
            // T5 folds the 1/sqrt(d) of the scores into its initialisation: no scaling.
            let out = attend(&q, &k, &v, None, &bias, 1.0, i)?;
            x = (&x + a.o.forward(&out, hooks)?)?;
            x = block.ff.forward(&x, hooks)?;
        }
        Ok(Encoded {
            hidden: self.encoder_norm.forward(&x, hooks)?,
            attention_mask: ctx.attention_mask,
        })
    }

    fn decode_states(
        &self,
        encoded: &Encoded,
        ids: &Tensor,
        cache: &mut DecoderCache,
        hooks: &dyn Hooks,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let (eb, s, ed) = encoded.hidden.dims3()?;
        if (eb, ed) != (b, self.config.d_model) || encoded.attention_mask.dims() != [b, s] {
            return Err(ModelError::Core(PeftError::ShapeMismatch {
                what: "encoder states and mask".into(),
                expected_from: format!(
                    "{b} rows of decoder ids and d_model {}",
                    self.config.d_model
                ),
                expected: vec![b, s, self.config.d_model],
                got_from: format!(
                    "the encoded input (mask {:?})",
                    encoded.attention_mask.dims()
                ),
                got: encoded.hidden.dims().to_vec(),
            }));
        }
        if t == 0 {
            return Err(ModelError::Config(
                "T5 decode was given no decoder ids".into(),
            ));
        }
        let x = lookup(&self.shared, ids)?;
        let layers = self.decoder.len();
        let shape = self.kv_shape(b);
        if cache.self_attn.is_empty() {
            let ctx = Ctx::new(Tensor::ones((b, t), DType::F32, &self.device)?);
            decoder_cache::start(cache, hooks, layers, &ctx, shape)?;
        }
        let prefix = decoder_cache::prefix_len(cache, layers, shape)?;
        // Queries sit at positions past..past + t over keys 0..past + t (the prefix first); every query sees the
        // whole prefix and the real tokens up to itself.
        let past = prefix + cache.seen;
        let keys = past + t;
        let ones = Tensor::ones((b, keys), DType::F32, &self.device)?;
        let with_prefix = self
            .decoder_bias
            .bias(t, keys, past)?
            .broadcast_add(&causal_bias(&ones, t)?)?;
        let without_prefix = with_prefix.narrow(3, prefix, keys - prefix)?;
        let cross_bias = padding_bias(&encoded.attention_mask)?;
        let mut x = x;
        for (i, block) in self.decoder.iter().enumerate() {
            let h = block.self_attn_norm.forward(&x, hooks)?;
            let a = &block.self_attn;
            let q = self.heads(&a.q.forward(&h, hooks)?)?;
            let k = self.heads(&a.k.forward(&h, hooks)?)?;
            let v = self.heads(&a.v.forward(&h, hooks)?)?;
            let kv = decoder_cache::append(cache.self_attn[i].as_ref(), k, v)?;
            let bias = if kv.key.dim(2)? == keys {
                &with_prefix
            } else {
                &without_prefix
            };
            let out = attend(&q, &kv.key, &kv.value, None, bias, 1.0, i)?;
            cache.self_attn[i] = Some(kv);
            x = (&x + a.o.forward(&out, hooks)?)?;

            let h = block.cross_attn_norm.forward(&x, hooks)?;
            let c = &block.cross_attn;
            let q = self.heads(&c.q.forward(&h, hooks)?)?;
            let kv = match &cache.cross_attn[i] {
                Some(kv) => kv.clone(),
                None => peft_core::model::CachedKv {
                    key: self.heads(&c.k.forward(&encoded.hidden, hooks)?)?,
                    value: self.heads(&c.v.forward(&encoded.hidden, hooks)?)?,
                },
            };
            // Cross-attention has no position bias, only the encoder's padding mask.
            let out = attend(&q, &kv.key, &kv.value, None, &cross_bias, 1.0, i)?;
            cache.cross_attn[i] = Some(kv);
            x = (&x + c.o.forward(&out, hooks)?)?;
            x = block.ff.forward(&x, hooks)?;
        }
        cache.seen += t;
        self.decoder_norm.forward(&x, hooks)
    }

    /// Every projection of the model: the encoder's, then the decoder's.
    fn projections(&self) -> impl Iterator<Item = &Projection> {
        let encoder = self.encoder.iter().flat_map(EncoderBlock::projections);
        encoder.chain(self.decoder.iter().flat_map(DecoderBlock::projections))
    }

    /// [`T5::projections`], mutably.
    fn projections_mut(&mut self) -> impl Iterator<Item = &mut Projection> {
        let encoder = self
            .encoder
            .iter_mut()
            .flat_map(EncoderBlock::projections_mut);
        encoder.chain(
            self.decoder
                .iter_mut()
                .flat_map(DecoderBlock::projections_mut),
        )
    }
}

impl EncoderDecoder for T5 {
    fn decoder_start_token_id(&self) -> u32 {
        self.config.decoder_start_token()
    }

    fn encode(&self, batch: &Batch, hooks: &dyn Hooks) -> peft_core::Result<Encoded> {
        Ok(self.encode_states(batch, hooks)?)
    }

    fn decode(
        &self,
        encoded: &Encoded,
        decoder_ids: &Tensor,
        cache: &mut DecoderCache,
        hooks: &dyn Hooks,
    ) -> peft_core::Result<Tensor> {
        Ok(self.decode_states(encoded, decoder_ids, cache, hooks)?)
    }
}

impl BaseModel for T5 {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn embed_tokens(&self, ids: &Tensor) -> peft_core::Result<Tensor> {
        Ok(lookup(&self.shared, ids)?)
    }

    fn forward(&self, batch: &Batch, hooks: &dyn Hooks) -> peft_core::Result<Output> {
        let ids = batch.decoder_input_ids.as_ref().ok_or_else(|| {
            PeftError::Data(format!(
                "T5 needs decoder input ids: the labels shifted right behind the decoder start token {}",
                self.config.decoder_start_token()
            ))
        })?;
        let encoded = self.encode_states(batch, hooks)?;
        let hidden = self.decode_states(&encoded, ids, &mut DecoderCache::default(), hooks)?;
        Ok(Output {
            hidden,
            virtual_tokens: 0,
        })
    }

    fn lm_head(&self) -> Option<&FrozenLinear> {
        Some(&self.lm_head)
    }

    fn encoder_decoder(&self) -> Option<&dyn EncoderDecoder> {
        Some(self)
    }

    fn pooled(
        &self,
        _out: &Output,
        _batch: &Batch,
        _hooks: &dyn Hooks,
    ) -> peft_core::Result<Tensor> {
        Err(PeftError::Unsupported(format!(
            "T5 ({}) has no pooled state for a classification head: a sequence-to-sequence model classifies by \
             generating the label, so use a verbalizer task (the label words scored at the decoder's first step) \
             instead of `classification-head`",
            self.spec.name_or_path
        )))
    }

    fn frozen_linear(&self, site: SiteId) -> Option<&FrozenLinear> {
        linear_at(self.projections(), site)
    }

    fn frozen_linear_mut(&mut self, site: SiteId) -> Option<&mut FrozenLinear> {
        linear_at_mut(self.projections_mut(), site)
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.parameters.clone()
    }
}

/// Builds the model from a folder's parsed `config.json` (at `config_path`, for errors) and its weights;
/// returns the model and its eos token id.
pub(crate) fn from_folder(
    config: Value,
    config_path: &Path,
    weights: &WeightMap,
    name: &str,
) -> Result<(Box<dyn BaseModel>, Option<u32>)> {
    let cfg: T5Config = crate::folder::parse_config(config_path, config)?;
    cfg.validate().map_err(|e| match e {
        ModelError::Config(m) => crate::folder::bad_file(config_path, m),
        other => other,
    })?;
    let eos = cfg.eos_token_id;
    Ok((Box::new(T5::from_weights(&cfg, weights, name)?), eos))
}

#[cfg(test)]
mod tests;
