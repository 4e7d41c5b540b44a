//! GPT-2 as a frozen model: learned positions, pre-norm blocks with LayerNorm, Conv1D projections (stored
//! `[in, out]` in the checkpoint, transposed once at load), `gelu_new` MLP and a head tied to the token
//! embeddings. Parameter and site names are Hugging Face's (`transformer.h.0.attn.c_attn`, ...).
//!
//! ```
//! use peft_core::hooks::NoHooks;
//! use peft_core::model::{BaseModel, Batch};
//! let model = peft_models::tiny::gpt2(0);
//! let batch = Batch::single(&[1, 2, 3], model.device()).unwrap();
//! let out = model.forward(&batch, &NoHooks).unwrap();
//! assert_eq!(out.hidden.dims(), &[1, 3, model.spec().hidden_size]);
//! let logits = model.logits(&out.hidden).unwrap();
//! assert_eq!(logits.dims(), &[1, 3, model.spec().vocab_size]);
//! assert!(model.spec().find_site("transformer.h.1.mlp.c_fc").is_some());
//! ```

use crate::embedding::TokenTable;
use candle_core::{Device, Tensor};
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::Hooks;
use peft_core::kv_cache::KvCache;
use peft_core::model::{BaseModel, Batch, Output};
use peft_core::spec::{ModelSpec, Role, SiteId};

use crate::attention::{attend, split_heads};
use crate::config::Gpt2Config;
use crate::config_checks::{check_eps, check_layer_count, check_sizes};
use crate::decoding::DecoderPass;
use crate::embedding::lookup;
use crate::error::{ModelError, Result};
use crate::parts::{
    linear_at, linear_at_mut, projection_fields, Activation, LayerNorm, Loader, Projection,
};
use crate::tensor_usage::Allowed;
use crate::weights::WeightMap;

/// Tensors a GPT-2 checkpoint may hold that the model does not read.
pub const ALLOWED_UNUSED: &[Allowed] = &[
    Allowed::new(
        "transformer.h.*.attn.bias",
        "the causal-mask buffer transformers saved with GPT-2 (the `gpt2` checkpoints on the hub hold it)",
    ),
    Allowed::new(
        "transformer.h.*.attn.masked_bias",
        "the masked-score constant older transformers saved",
    ),
    Allowed::new(
        "lm_head.weight",
        "GPT-2's head is tied to `transformer.wte.weight`, as transformers ties it",
    ),
];

/// One transformer block.
#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Projection,
    attn_proj: Projection,
    ln_2: LayerNorm,
    c_fc: Projection,
    mlp_proj: Projection,
    /// Score scale: `1/sqrt(head_dim)` where `scale_attn_weights`, further `/(layer + 1)` where
    /// `scale_attn_by_inverse_layer_idx`.
    scale: f64,
}

projection_fields!(Block: [c_attn, attn_proj, c_fc, mlp_proj]);

/// GPT-2 with frozen weights; implements [`BaseModel`].
///
/// [`BaseModel::parameters`] lists the tensors the forward pass uses, so Conv1D weights appear in the
/// `[out, in]` layout of [`FrozenLinear`] (the checkpoint's `[in, out]` transposed; their sites say
/// `fan_in_fan_out`). The head is the token embedding matrix; a checkpoint's `lm_head.weight` is ignored.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    config: Gpt2Config,
    spec: ModelSpec,
    device: Device,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    activation: Activation,
    lm_head: FrozenLinear,
    parameters: Vec<(String, Tensor)>,
}

impl Gpt2 {
    /// Builds the model from checkpoint tensors named as `GPT2LMHeadModel` saves them
    /// (`transformer.wte.weight`, ...) or as a bare `GPT2Model` does (`wte.weight`, ...).
    /// `name_or_path` is recorded in the spec (`base_model_name_or_path` of saved adapters).
    pub fn from_weights(cfg: &Gpt2Config, weights: &WeightMap, name_or_path: &str) -> Result<Gpt2> {
        let (h, heads, layers) = (cfg.n_embd, cfg.n_head, cfg.n_layer);
        check_sizes(&[
            ("vocab_size", cfg.vocab_size),
            ("n_positions", cfg.n_positions),
            ("n_embd", h),
            ("n_head", heads),
            ("n_inner", cfg.n_inner.unwrap_or(1)),
        ])?;
        if h % heads != 0 {
            return Err(ModelError::Config(format!(
                "GPT-2 n_embd {h} is not divisible by n_head {heads}"
            )));
        }
        check_eps("layer_norm_epsilon", cfg.layer_norm_epsilon)?;
        let activation = Activation::parse(&cfg.activation_function)?;
        let weights = with_transformer_prefix(weights);
        check_layer_count("n_layer", layers, &weights, "transformer.h")?;
        let mut spec = ModelSpec::new(
            "gpt2",
            layers,
            h,
            heads,
            heads,
            cfg.vocab_size,
            cfg.n_positions,
        );
        spec.name_or_path = name_or_path.to_string();
        let mut ld = Loader::new(&weights, spec);
        let eps = cfg.layer_norm_epsilon;

        let wte = ld.tensor("transformer.wte.weight", &[cfg.vocab_size, h])?;
        let wpe = ld.tensor("transformer.wpe.weight", &[cfg.n_positions, h])?;
        let head_dim = h / heads;
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let p = format!("transformer.h.{i}");
            let inner = cfg.inner();
            let mut scale = if cfg.scale_attn_weights {
                (head_dim as f64).powf(-0.5)
            } else {
                1.0
            };
            if cfg.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            blocks.push(Block {
                ln_1: ld.layer_norm(
                    Role::AttentionNorm,
                    &format!("{p}.ln_1"),
                    Some(i),
                    h,
                    true,
                    eps,
                )?,
                c_attn: ld.conv1d(
                    Role::QueryKeyValue,
                    &format!("{p}.attn.c_attn"),
                    i,
                    h,
                    3 * h,
                )?,
                attn_proj: ld.conv1d(
                    Role::AttentionOutput,
                    &format!("{p}.attn.c_proj"),
                    i,
                    h,
                    h,
                )?,
                ln_2: ld.layer_norm(Role::MlpNorm, &format!("{p}.ln_2"), Some(i), h, true, eps)?,
                c_fc: ld.conv1d(Role::MlpUp, &format!("{p}.mlp.c_fc"), i, h, inner)?,
                mlp_proj: ld.conv1d(Role::MlpDown, &format!("{p}.mlp.c_proj"), i, inner, h)?,
                scale,
            });
        }
        let ln_f = ld.layer_norm(Role::FinalNorm, "transformer.ln_f", None, h, true, eps)?;
        let lm_head = ld.tied_head(&TokenTable::Dense(wte.clone()))?;
        let (spec, parameters) = ld.finish(ALLOWED_UNUSED)?;
        Ok(Gpt2 {
            config: cfg.clone(),
            spec,
            device: wte.device().clone(),
            lm_head,
            wte,
            wpe,
            blocks,
            ln_f,
            activation,
            parameters,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    fn block_forward(
        &self,
        block: &Block,
        x: &Tensor,
        pass: &mut DecoderPass,
        layer: usize,
        hooks: &dyn Hooks,
    ) -> Result<Tensor> {
        let (heads, head_dim, h) = (
            self.spec.num_heads,
            self.spec.head_dim,
            self.spec.hidden_size,
        );
        let normed = block.ln_1.forward(x, hooks)?;
        let qkv = block.c_attn.forward(&normed, hooks)?;
        let q = split_heads(&qkv.narrow(2, 0, h)?, heads, head_dim)?;
        let k = split_heads(&qkv.narrow(2, h, h)?, heads, head_dim)?;
        let v = split_heads(&qkv.narrow(2, 2 * h, h)?, heads, head_dim)?;
        let (k, v, bias) = pass.keys_values(layer, k, v)?;
        let attn = attend(&q, &k, &v, None, &bias, block.scale, layer)?;
        let x = (x + block.attn_proj.forward(&attn, hooks)?)?;
        crate::mlp_block::plain(
            &x,
            &block.ln_2,
            &block.c_fc,
            self.activation,
            &block.mlp_proj,
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
            &self.wte,
            batch,
            hooks,
            cache.as_deref(),
            self.spec.num_layers,
            self.config.n_positions,
            "GPT-2's n_positions",
        )?;
        // Learned positions at each row's own positions (after any prefix, virtual tokens included).
        let positions = pass.positions()?;
        let mut x = (&pass.x + lookup(&self.wpe, &positions)?)?;
        x = hooks.layers(self.blocks.len(), x, &mut |i, x| {
            Ok(self.block_forward(&self.blocks[i], x, &mut pass, i, hooks)?)
        })?;
        let hidden = self.ln_f.forward(&x, hooks)?;
        let virtual_tokens = pass.virtual_tokens;
        pass.finish(cache)?;
        Ok(Output {
            hidden,
            virtual_tokens,
        })
    }
}

/// A bare `GPT2Model` checkpoint names its tensors without the `transformer.` prefix: add it.
fn with_transformer_prefix(weights: &WeightMap) -> WeightMap {
    if weights.contains("transformer.wte.weight") || !weights.contains("wte.weight") {
        return weights.clone();
    }
    weights.clone().rename(|k| {
        if k.starts_with("lm_head.") {
            k.to_string()
        } else {
            format!("transformer.{k}")
        }
    })
}

impl BaseModel for Gpt2 {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn embed_tokens(&self, ids: &Tensor) -> peft_core::Result<Tensor> {
        Ok(lookup(&self.wte, ids)?)
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
        linear_at(self.blocks.iter().flat_map(Block::projections), site)
    }

    fn frozen_linear_mut(&mut self, site: SiteId) -> Option<&mut FrozenLinear> {
        linear_at_mut(
            self.blocks.iter_mut().flat_map(Block::projections_mut),
            site,
        )
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.parameters.clone()
    }
}

#[cfg(test)]
mod tests;
