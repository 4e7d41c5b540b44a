//! Gemma-3's text model (transformers' `Gemma3ForCausalLM`, `model_type = "gemma3_text"`) as a frozen model:
//! token embeddings scaled by `sqrt(hidden_size)`, Gemma's RMS norms (`x / rms(x) * (1 + w)`) before and after
//! both the attention and the MLP, per-head RMS norms on the queries and keys before RoPE, grouped-query
//! attention scaled by `query_pre_attn_scalar ** -0.5`, sliding-window layers (local RoPE base) between global
//! ones (`rope_theta`), a `gelu_pytorch_tanh`-gated MLP, optional final logit soft-capping, and a head tied to
//! the embeddings by default. Parameter and site names are Hugging Face's. Generation runs with a key/value
//! cache ([`BaseModel::forward_cached`]); the sliding layers count their window in positions, so a cached step,
//! a padded row or a prefixed one sees the keys it would see alone.
//!
//! ```
//! use candle_core::IndexOp;
//! use peft_core::hooks::NoHooks;
//! use peft_core::kv_cache::KvCache;
//! use peft_core::model::{BaseModel, Batch};
//! let model = peft_models::tiny::gemma3(0);
//! let batch = Batch::single(&[1, 2, 3], model.device()).unwrap();
//! let out = model.forward(&batch, &NoHooks).unwrap();
//! assert_eq!(out.hidden.dims(), &[1, 3, model.spec().hidden_size]);
//! assert!(model.spec().find_site("model.layers.1.self_attn.q_norm").is_some());
//! // The prompt's pass, then one cached step: the last state is the uncached pass's.
//! let mut cache = KvCache::new();
//! let dev = model.device();
//! model.forward_cached(&Batch::single(&[1, 2], dev).unwrap(), &mut cache, &NoHooks).unwrap();
//! let step = model.forward_cached(&Batch::single(&[3], dev).unwrap(), &mut cache, &NoHooks).unwrap();
//! let diff = (out.hidden.i((0, 2)).unwrap() - step.hidden.i((0, 0)).unwrap()).unwrap();
//! assert!(diff.abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() < 1e-5);
//! ```

use candle_core::{Device, Tensor};
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::Hooks;
use peft_core::kv_cache::KvCache;
use peft_core::model::{require_lm_head, BaseModel, Batch, Output};
use peft_core::spec::{ModelSpec, Role, SiteId};

use crate::attention::{attend, split_heads};
use crate::config::{Gemma3Attention, Gemma3Config};
use crate::config_checks::{check_eps, check_layer_count, check_size, check_sizes};
use crate::decoding::DecoderPass;
use crate::embedding::{lookup, Rows, TokenTable};
use crate::error::{ModelError, Result};
use crate::parts::{linear_at, linear_at_mut, projection_fields, Activation, Loader, Projection};
use crate::rope::{Rope, RopeTables};
use crate::tensor_usage::Allowed;
use crate::weights::WeightMap;

mod folder;
mod mask;
mod norm;
mod softcap;

pub(crate) use folder::from_folder;
pub use mask::{window_bias, window_positions};
pub use norm::GemmaRmsNorm;
pub use softcap::softcap;

use mask::SlidingMasks;

/// A tied head's copy (`tie_word_embeddings = true`): transformers ties it to the embeddings and ignores it.
pub const TIED_HEAD: Allowed = Allowed::new(
    "lm_head.weight",
    "with tie_word_embeddings the head is the token embeddings",
);

/// One decoder layer.
#[derive(Debug, Clone)]
struct Layer {
    kind: Gemma3Attention,
    input_layernorm: GemmaRmsNorm,
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    q_norm: GemmaRmsNorm,
    k_norm: GemmaRmsNorm,
    o_proj: Projection,
    post_attention_layernorm: GemmaRmsNorm,
    pre_feedforward_layernorm: GemmaRmsNorm,
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
    post_feedforward_layernorm: GemmaRmsNorm,
}

projection_fields!(Layer: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]);

/// Gemma-3 (text) with frozen weights; implements [`BaseModel`].
#[derive(Debug, Clone)]
pub struct Gemma3 {
    config: Gemma3Config,
    spec: ModelSpec,
    device: Device,
    embed_tokens: TokenTable,
    /// `sqrt(hidden_size)` rounded to f32, as transformers' `embed_scale` buffer holds it.
    embed_scale: f64,
    local_rope: Rope,
    global_rope: Rope,
    layers: Vec<Layer>,
    norm: GemmaRmsNorm,
    activation: Activation,
    lm_head: FrozenLinear,
    parameters: Vec<(String, Tensor)>,
}

/// The token table as Gemma reads it: every row times `embed_scale`, before the embeddings hook runs (HF PEFT
/// meets Gemma's embeddings scaled), and for the tokens of a decoding step.
struct ScaledTable<'a> {
    table: &'a TokenTable,
    scale: f64,
}

impl Rows for ScaledTable<'_> {
    fn dims2(&self) -> Result<(usize, usize)> {
        self.table.dims2()
    }

    fn select(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.table.select(ids)?.affine(self.scale, 0.0)?)
    }
}

/// The rotary base `theta` under the config key `key`, checked.
fn check_theta(key: &str, theta: f64) -> Result<()> {
    if theta.is_finite() && theta > 0.0 {
        Ok(())
    } else {
        Err(ModelError::Config(format!(
            "`{key}` = {theta} must be a finite number above 0 (a rotary base, such as 10000)"
        )))
    }
}

/// A soft-cap setting, checked: absent, or a finite number above 0.
fn check_cap(key: &str, cap: Option<f64>) -> Result<()> {
    match cap {
        Some(c) if !(c.is_finite() && c > 0.0) => Err(ModelError::Config(format!(
            "`{key}` = {c} must be a finite number above 0, or null for no soft-capping"
        ))),
        _ => Ok(()),
    }
}

impl Gemma3 {
    /// Builds the model from checkpoint tensors with Hugging Face names (`model.embed_tokens.weight`,
    /// `model.layers.{i}.self_attn.q_proj.weight`, `model.layers.{i}.self_attn.q_norm.weight`, ...,
    /// `lm_head.weight` unless `tie_word_embeddings`). Norm weights are the raw `w` of `1 + w`, as Hugging Face
    /// stores them. `name_or_path` is recorded in the spec.
    pub fn from_weights(
        cfg: &Gemma3Config,
        weights: &WeightMap,
        name_or_path: &str,
    ) -> Result<Gemma3> {
        let (h, heads, kv_heads, d) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        check_sizes(&[
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", h),
            ("intermediate_size", cfg.intermediate_size),
            ("num_attention_heads", heads),
            ("num_key_value_heads", kv_heads),
            ("head_dim", d),
            ("max_position_embeddings", cfg.max_position_embeddings),
        ])?;
        if heads % kv_heads != 0 {
            return Err(ModelError::Config(format!(
                "Gemma-3 num_attention_heads {heads} must be a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        check_eps("rms_norm_eps", cfg.rms_norm_eps)?;
        check_theta("rope_theta", cfg.rope_theta)?;
        check_theta("rope_local_base_freq", cfg.rope_local_base_freq)?;
        if !(cfg.query_pre_attn_scalar.is_finite() && cfg.query_pre_attn_scalar > 0.0) {
            return Err(ModelError::Config(format!(
                "`query_pre_attn_scalar` = {} must be a finite number above 0 (scores are scaled by its inverse \
                 square root)",
                cfg.query_pre_attn_scalar
            )));
        }
        check_cap("final_logit_softcapping", cfg.final_logit_softcapping)?;
        if cfg.use_bidirectional_attention == Some(true) {
            return Err(ModelError::Config(
                "`use_bidirectional_attention` = true (an embedding model such as EmbeddingGemma) is not \
                 supported: only causal Gemma-3 is implemented"
                    .into(),
            ));
        }
        let kinds = cfg.layer_kinds()?;
        if kinds.contains(&Gemma3Attention::Sliding) {
            match cfg.sliding_window {
                Some(w) => check_size("sliding_window", w)?,
                None => {
                    return Err(ModelError::Config(
                        "`sliding_window` is null but `layer_types` has sliding_attention layers"
                            .into(),
                    ))
                }
            }
        }
        let activation = Activation::parse(&cfg.hidden_activation)?;
        check_layer_count(
            "num_hidden_layers",
            cfg.num_hidden_layers,
            weights,
            "model.layers",
        )?;
        let local_rope = Rope::new(d, cfg.rope_local_base_freq)?;
        let global_rope = Rope::new(d, cfg.rope_theta)?;
        let mut spec = ModelSpec::new(
            "gemma3_text",
            cfg.num_hidden_layers,
            h,
            heads,
            kv_heads,
            cfg.vocab_size,
            cfg.max_position_embeddings,
        );
        spec.head_dim = d;
        spec.name_or_path = name_or_path.to_string();
        let mut ld = Loader::new(weights, spec);
        let eps = cfg.rms_norm_eps;
        let norm = |ld: &mut Loader, role: Role, module: &str, layer: Option<usize>, dim: usize| {
            GemmaRmsNorm::new(ld.rms_norm(role, module, layer, dim, eps)?)
        };

        let embed_tokens = ld.token_table("model.embed_tokens.weight", cfg.vocab_size, h)?;
        let (q_out, kv_out, inner, ab) = (
            heads * d,
            kv_heads * d,
            cfg.intermediate_size,
            cfg.attention_bias,
        );
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for (i, kind) in kinds.into_iter().enumerate() {
            let p = format!("model.layers.{i}");
            let (a, m) = (format!("{p}.self_attn"), format!("{p}.mlp"));
            let l = Some(i);
            layers.push(Layer {
                kind,
                input_layernorm: norm(
                    &mut ld,
                    Role::AttentionNorm,
                    &format!("{p}.input_layernorm"),
                    l,
                    h,
                )?,
                q_proj: ld.linear(Role::Query, &format!("{a}.q_proj"), l, h, q_out, ab)?,
                k_proj: ld.linear(Role::Key, &format!("{a}.k_proj"), l, h, kv_out, ab)?,
                v_proj: ld.linear(Role::Value, &format!("{a}.v_proj"), l, h, kv_out, ab)?,
                // Per-head norms inside the attention, not the layer's pre-attention norm: `Other`, so that
                // role-based norm defaults (LN tuning) leave them out, as HF PEFT's gemma3_text table does.
                q_norm: norm(&mut ld, Role::Other, &format!("{a}.q_norm"), l, d)?,
                k_norm: norm(&mut ld, Role::Other, &format!("{a}.k_norm"), l, d)?,
                o_proj: ld.linear(
                    Role::AttentionOutput,
                    &format!("{a}.o_proj"),
                    l,
                    q_out,
                    h,
                    ab,
                )?,
                // Normalises the attention's output (post-norm): the attention's second norm.
                post_attention_layernorm: norm(
                    &mut ld,
                    Role::AttentionNorm,
                    &format!("{p}.post_attention_layernorm"),
                    l,
                    h,
                )?,
                pre_feedforward_layernorm: norm(
                    &mut ld,
                    Role::MlpNorm,
                    &format!("{p}.pre_feedforward_layernorm"),
                    l,
                    h,
                )?,
                gate_proj: ld.linear(
                    Role::MlpGate,
                    &format!("{m}.gate_proj"),
                    l,
                    h,
                    inner,
                    false,
                )?,
                up_proj: ld.linear(Role::MlpUp, &format!("{m}.up_proj"), l, h, inner, false)?,
                down_proj: ld.linear(
                    Role::MlpDown,
                    &format!("{m}.down_proj"),
                    l,
                    inner,
                    h,
                    false,
                )?,
                post_feedforward_layernorm: norm(
                    &mut ld,
                    Role::MlpNorm,
                    &format!("{p}.post_feedforward_layernorm"),
                    l,
                    h,
                )?,
            });
        }
        let final_norm = norm(&mut ld, Role::FinalNorm, "model.norm", None, h)?;
        let lm_head = if cfg.tie_word_embeddings {
            ld.tied_head(&embed_tokens)?
        } else {
            ld.head("lm_head.weight", cfg.vocab_size, h)?
        };
        let allowed: &[Allowed] = if cfg.tie_word_embeddings {
            &[TIED_HEAD]
        } else {
            &[]
        };
        let (spec, parameters) = ld.finish(allowed)?;
        Ok(Gemma3 {
            config: cfg.clone(),
            spec,
            device: weights.device(),
            embed_scale: (h as f64).sqrt() as f32 as f64,
            embed_tokens,
            local_rope,
            global_rope,
            layers,
            norm: final_norm,
            activation,
            lm_head,
            parameters,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Gemma3Config {
        &self.config
    }

    /// Whether each layer slides (`true`) or attends globally, in order.
    pub fn sliding_layers(&self) -> Vec<bool> {
        self.layers
            .iter()
            .map(|l| l.kind == Gemma3Attention::Sliding)
            .collect()
    }

    /// Word embeddings times `sqrt(hidden_size)`: what transformers' `Gemma3TextScaledWordEmbedding` returns,
    /// so also what HF PEFT's prompt methods see as the word embeddings (virtual tokens are not scaled).
    fn scaled_embeddings(&self, ids: &Tensor) -> Result<Tensor> {
        lookup(&self.scaled_table(), ids)
    }

    fn scaled_table(&self) -> ScaledTable<'_> {
        ScaledTable {
            table: &self.embed_tokens,
            scale: self.embed_scale,
        }
    }

    /// `cap * tanh(logits / cap)` where the config sets `final_logit_softcapping`.
    fn cap_logits(&self, logits: Tensor) -> Result<Tensor> {
        match self.config.final_logit_softcapping {
            Some(cap) => softcap(&logits, cap),
            None => Ok(logits),
        }
    }

    /// One decoder layer; `sliding` holds the window of a sliding layer's pass.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        rope: &RopeTables,
        pass: &mut DecoderPass,
        sliding: Option<&mut SlidingMasks>,
        index: usize,
        hooks: &dyn Hooks,
    ) -> Result<Tensor> {
        let (heads, kv_heads, d) = (
            self.spec.num_heads,
            self.spec.num_kv_heads,
            self.spec.head_dim,
        );
        let normed = layer.input_layernorm.forward(x, hooks)?;
        let q = split_heads(&layer.q_proj.forward(&normed, hooks)?, heads, d)?;
        let q = rope.apply(&layer.q_norm.forward(&q, hooks)?)?;
        // Real keys are normed and rotated at their positions; prefix keys are used as given (HF's cache).
        let k = split_heads(&layer.k_proj.forward(&normed, hooks)?, kv_heads, d)?;
        let k = rope.apply(&layer.k_norm.forward(&k, hooks)?)?;
        let v = split_heads(&layer.v_proj.forward(&normed, hooks)?, kv_heads, d)?;
        let (k, v, bias) = pass.keys_values(index, k, v)?;
        let bias = match sliding {
            Some(window) => window.bias(&bias)?,
            None => bias,
        };
        let scale = self.config.query_pre_attn_scalar.powf(-0.5);
        let attn = attend(&q, &k, &v, None, &bias, scale, index)?;
        let attn = layer.o_proj.forward(&attn, hooks)?;
        let x = (x + layer.post_attention_layernorm.forward(&attn, hooks)?)?;
        let normed = layer.pre_feedforward_layernorm.forward(&x, hooks)?;
        let gate = self
            .activation
            .apply(&layer.gate_proj.forward(&normed, hooks)?)?;
        let inner = (gate * layer.up_proj.forward(&normed, hooks)?)?;
        let mlp = layer.down_proj.forward(&inner, hooks)?;
        Ok((&x + layer.post_feedforward_layernorm.forward(&mlp, hooks)?)?)
    }

    /// The forward pass, with a key/value cache or without.
    fn run(&self, batch: &Batch, cache: Option<&mut KvCache>, hooks: &dyn Hooks) -> Result<Output> {
        let mut pass = DecoderPass::begin(
            &self.scaled_table(),
            batch,
            hooks,
            cache.as_deref(),
            self.spec.num_layers,
            self.spec.max_positions,
            "max_position_embeddings",
        )?;
        // Virtual tokens take positions like real ones; a key/value prefix (or the cache) pushes the tokens
        // after it. Both rotary bases rotate at the same per-row positions.
        let local = self
            .local_rope
            .tables_at(pass.position_rows(), &self.device)?;
        let global = self
            .global_rope
            .tables_at(pass.position_rows(), &self.device)?;
        let mut x = pass.x.clone();
        let slides = self
            .layers
            .iter()
            .any(|l| l.kind == Gemma3Attention::Sliding);
        let mut sliding = match self.config.sliding_window.filter(|_| slides) {
            Some(window) => Some(SlidingMasks::new(pass.key_mask(), x.dim(1)?, window)?),
            None => None,
        };
        x = hooks.layers(self.layers.len(), x, &mut |i, x| {
            let layer = &self.layers[i];
            Ok(match layer.kind {
                Gemma3Attention::Sliding => {
                    let window = sliding.as_mut();
                    self.layer_forward(layer, x, &local, &mut pass, window, i, hooks)?
                }
                Gemma3Attention::Full => {
                    self.layer_forward(layer, x, &global, &mut pass, None, i, hooks)?
                }
            })
        })?;
        let hidden = self.norm.forward(&x, hooks)?;
        let virtual_tokens = pass.virtual_tokens;
        pass.finish(cache)?;
        Ok(Output {
            hidden,
            virtual_tokens,
        })
    }
}

impl BaseModel for Gemma3 {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn embed_tokens(&self, ids: &Tensor) -> peft_core::Result<Tensor> {
        Ok(self.scaled_embeddings(ids)?)
    }

    fn forward(&self, batch: &Batch, hooks: &dyn Hooks) -> peft_core::Result<Output> {
        Ok(self.run(batch, None, hooks)?)
    }

    fn forward_cached(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        hooks: &dyn Hooks,
    ) -> peft_core::Result<Output> {
        Ok(self.run(batch, Some(cache), hooks)?)
    }

    fn has_kv_cache(&self) -> bool {
        true
    }

    fn supports_gradient_checkpointing(&self) -> bool {
        true
    }

    fn lm_head(&self) -> Option<&FrozenLinear> {
        Some(&self.lm_head)
    }

    fn logits(&self, hidden: &Tensor) -> peft_core::Result<Tensor> {
        let logits = require_lm_head(&self.spec, Some(&self.lm_head))?.forward(hidden)?;
        Ok(self.cap_logits(logits)?)
    }

    fn logits_of(&self, hidden: &Tensor, token_ids: &[u32]) -> peft_core::Result<Tensor> {
        let logits = self.lm_head.rows(token_ids)?.forward(hidden)?;
        Ok(self.cap_logits(logits)?)
    }

    fn frozen_linear(&self, site: SiteId) -> Option<&FrozenLinear> {
        linear_at(self.layers.iter().flat_map(Layer::projections), site)
    }

    fn frozen_linear_mut(&mut self, site: SiteId) -> Option<&mut FrozenLinear> {
        linear_at_mut(
            self.layers.iter_mut().flat_map(Layer::projections_mut),
            site,
        )
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.parameters.clone()
    }
}

#[cfg(test)]
mod tests;
