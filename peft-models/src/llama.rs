//! LLaMA (and the family that shares its layout: SmolLM2, ...) as a frozen model: RMSNorm, rotary positions
//! in Hugging Face's `rotate_half` form, grouped-query attention, a SwiGLU MLP (`down(silu(gate(x)) * up(x))`)
//! and an LM head that is its own matrix or the token embeddings (`tie_word_embeddings`). Parameter and site
//! names are Hugging Face's (`model.layers.0.self_attn.q_proj`, ...).
//!
//! ```
//! use peft_core::hooks::NoHooks;
//! use peft_core::model::{BaseModel, Batch};
//! let model = peft_models::tiny::llama(0);
//! assert!(model.spec().num_kv_heads < model.spec().num_heads); // grouped-query attention
//! let batch = Batch::single(&[1, 2, 3], model.device()).unwrap();
//! let out = model.forward(&batch, &NoHooks).unwrap();
//! assert_eq!(out.hidden.dims(), &[1, 3, model.spec().hidden_size]);
//! assert!(model.spec().find_site("model.layers.1.mlp.gate_proj").is_some());
//! ```

use candle_core::{Device, Tensor};
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::Hooks;
use peft_core::kv_cache::KvCache;
use peft_core::model::{BaseModel, Batch, Output};
use peft_core::spec::{ModelSpec, Role, SiteId};

use crate::attention::{attend, split_heads};
use crate::config::LlamaConfig;
use crate::config_checks::{check_eps, check_layer_count, check_size, check_sizes};
use crate::decoding::DecoderPass;
use crate::embedding::{lookup, TokenTable};
use crate::error::{ModelError, Result};
use crate::parts::{linear_at, linear_at_mut, projection_fields, Loader, Projection, RmsNorm};
use crate::rope::{Rope, RopeTables};
use crate::tensor_usage::Allowed;
use crate::weights::WeightMap;

/// The rotary frequencies transformers before 4.31 saved in every layer: recomputed from `rope_theta`.
pub const ROTARY_BUFFER: Allowed = Allowed::new(
    "model.layers.*.self_attn.rotary_emb.inv_freq",
    "a buffer older transformers saved; the frequencies are recomputed from rope_theta",
);

/// A tied head's copy (`tie_word_embeddings = true`): transformers ties it to the embeddings and ignores it.
pub const TIED_HEAD: Allowed = Allowed::new(
    "lm_head.weight",
    "with tie_word_embeddings the head is the token embeddings",
);

/// One decoder layer.
#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    post_attention_layernorm: RmsNorm,
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

projection_fields!(Layer: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]);

/// LLaMA with frozen weights; implements [`BaseModel`].
#[derive(Debug, Clone)]
pub struct Llama {
    config: LlamaConfig,
    spec: ModelSpec,
    device: Device,
    embed_tokens: TokenTable,
    rope: Rope,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: FrozenLinear,
    parameters: Vec<(String, Tensor)>,
}

impl Llama {
    /// Builds the model from checkpoint tensors with Hugging Face names (`model.embed_tokens.weight`,
    /// `model.layers.{i}.self_attn.q_proj.weight`, ..., `lm_head.weight` unless `tie_word_embeddings`).
    /// `name_or_path` is recorded in the spec (`base_model_name_or_path` of saved adapters).
    pub fn from_weights(
        cfg: &LlamaConfig,
        weights: &WeightMap,
        name_or_path: &str,
    ) -> Result<Llama> {
        let (h, heads, kv_heads) = (cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads());
        check_sizes(&[
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", h),
            ("intermediate_size", cfg.intermediate_size),
            ("num_attention_heads", heads),
            ("num_key_value_heads", kv_heads),
            ("max_position_embeddings", cfg.max_position_embeddings),
        ])?;
        // Divides by the heads: computed once they are known not to be zero.
        let head_dim = cfg.head_dim();
        check_size("head_dim", head_dim)?;
        if heads % kv_heads != 0 {
            return Err(ModelError::Config(format!(
                "LLaMA num_attention_heads {heads} must be a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        check_eps("rms_norm_eps", cfg.rms_norm_eps)?;
        if !(cfg.rope_theta.is_finite() && cfg.rope_theta > 0.0) {
            return Err(ModelError::Config(format!(
                "`rope_theta` = {} must be a finite number above 0 (the rotary base, such as 10000)",
                cfg.rope_theta
            )));
        }
        check_layer_count(
            "num_hidden_layers",
            cfg.num_hidden_layers,
            weights,
            "model.layers",
        )?;
        let rope = Rope::new(head_dim, cfg.rope_theta)?;
        let mut spec = ModelSpec::new(
            "llama",
            cfg.num_hidden_layers,
            h,
            heads,
            kv_heads,
            cfg.vocab_size,
            cfg.max_position_embeddings,
        );
        spec.head_dim = head_dim;
        spec.name_or_path = name_or_path.to_string();
        let mut ld = Loader::new(weights, spec);
        let eps = cfg.rms_norm_eps;

        let embed_tokens = ld.token_table("model.embed_tokens.weight", cfg.vocab_size, h)?;
        let (q_out, kv_out, inner) = (heads * head_dim, kv_heads * head_dim, cfg.intermediate_size);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let (a, m) = (format!("{p}.self_attn"), format!("{p}.mlp"));
            let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
            layers.push(Layer {
                input_layernorm: ld.rms_norm(
                    Role::AttentionNorm,
                    &format!("{p}.input_layernorm"),
                    Some(i),
                    h,
                    eps,
                )?,
                q_proj: ld.linear(Role::Query, &format!("{a}.q_proj"), Some(i), h, q_out, ab)?,
                k_proj: ld.linear(Role::Key, &format!("{a}.k_proj"), Some(i), h, kv_out, ab)?,
                v_proj: ld.linear(Role::Value, &format!("{a}.v_proj"), Some(i), h, kv_out, ab)?,
                o_proj: ld.linear(
                    Role::AttentionOutput,
                    &format!("{a}.o_proj"),
                    Some(i),
                    q_out,
                    h,
                    ab,
                )?,
                post_attention_layernorm: ld.rms_norm(
                    Role::MlpNorm,
                    &format!("{p}.post_attention_layernorm"),
                    Some(i),
                    h,
                    eps,
                )?,
                gate_proj: ld.linear(
                    Role::MlpGate,
                    &format!("{m}.gate_proj"),
                    Some(i),
                    h,
                    inner,
                    mb,
                )?,
                up_proj: ld.linear(Role::MlpUp, &format!("{m}.up_proj"), Some(i), h, inner, mb)?,
                down_proj: ld.linear(
                    Role::MlpDown,
                    &format!("{m}.down_proj"),
                    Some(i),
                    inner,
                    h,
                    mb,
                )?,
            });
        }
        let norm = ld.rms_norm(Role::FinalNorm, "model.norm", None, h, eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            ld.tied_head(&embed_tokens)?
        } else {
            ld.head("lm_head.weight", cfg.vocab_size, h)?
        };
        let mut allowed = vec![ROTARY_BUFFER];
        if cfg.tie_word_embeddings {
            allowed.push(TIED_HEAD);
        }
        let (spec, parameters) = ld.finish(&allowed)?;
        Ok(Llama {
            config: cfg.clone(),
            spec,
            device: weights.device(),
            embed_tokens,
            rope,
            layers,
            norm,
            lm_head,
            parameters,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        rope: &RopeTables,
        pass: &mut DecoderPass,
        index: usize,
        hooks: &dyn Hooks,
    ) -> Result<Tensor> {
        let (heads, kv_heads, d) = (
            self.spec.num_heads,
            self.spec.num_kv_heads,
            self.spec.head_dim,
        );
        let normed = layer.input_layernorm.forward(x, hooks)?;
        let q = rope.split_rotated(&layer.q_proj.forward(&normed, hooks)?, heads, d)?;
        // Real keys are rotated at their positions; the prefix keys are used as given (HF's past_key_values).
        let k = rope.split_rotated(&layer.k_proj.forward(&normed, hooks)?, kv_heads, d)?;
        let v = split_heads(&layer.v_proj.forward(&normed, hooks)?, kv_heads, d)?;
        let (k, v, bias) = pass.keys_values(index, k, v)?;
        let scale = (d as f64).powf(-0.5);
        let attn = attend(&q, &k, &v, None, &bias, scale, index)?;
        let x = (x + layer.o_proj.forward(&attn, hooks)?)?;
        crate::mlp_block::gated(
            &x,
            &layer.post_attention_layernorm,
            &layer.gate_proj,
            &layer.up_proj,
            &layer.down_proj,
            hooks,
        )
    }

    /// The forward pass, with a key/value cache or without.
    fn run(
        &self,
        batch: &Batch,
        cache: Option<&mut KvCache>,
        hooks: &dyn Hooks,
    ) -> peft_core::Result<Output> {
        let mut pass = DecoderPass::begin(
            &self.embed_tokens,
            batch,
            hooks,
            cache.as_deref(),
            self.spec.num_layers,
            self.spec.max_positions,
            "max_position_embeddings",
        )?;
        // Virtual tokens take positions like real ones; a key/value prefix pushes the tokens after it.
        let rope = self.rope.tables_at(pass.position_rows(), &self.device)?;
        let mut x = pass.x.clone();
        x = hooks.layers(self.layers.len(), x, &mut |i, x| {
            Ok(self.layer_forward(&self.layers[i], x, &rope, &mut pass, i, hooks)?)
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

impl BaseModel for Llama {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn embed_tokens(&self, ids: &Tensor) -> peft_core::Result<Tensor> {
        Ok(lookup(&self.embed_tokens, ids)?)
    }

    fn forward(&self, batch: &Batch, hooks: &dyn Hooks) -> peft_core::Result<Output> {
        self.run(batch, None, hooks)
    }

    fn forward_cached(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        hooks: &dyn Hooks,
    ) -> peft_core::Result<Output> {
        self.run(batch, Some(cache), hooks)
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
