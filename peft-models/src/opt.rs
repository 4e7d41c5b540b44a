//! OPT (Hugging Face `OPTForCausalLM`, `model_type` "opt") as a frozen model: learned positions with OPT's offset
//! of two rows, pre-norm (opt-125m and most sizes) or post-norm (opt-350m, `do_layer_norm_before = false`) blocks
//! with LayerNorm, a ReLU MLP (`fc1`, `fc2`), queries scaled by `head_dim^-0.5`, optional `project_in` /
//! `project_out` where the token embeddings are narrower than the layers (`word_embed_proj_dim`, opt-350m), and
//! an LM head tied to the token embeddings. Parameter and site names are Hugging Face's
//! (`model.decoder.layers.0.self_attn.q_proj`, ...).
//!
//! Positions follow transformers: the position of a token is the number of attended positions up to it (the
//! cumulative sum of the attention mask over key/value prefix, virtual and real tokens) minus one, and a padded
//! token gets position -1; row `position + 2` of `embed_positions` is added. In a right-padded batch, real token
//! `t` behind a prefix of `P` positions (and any virtual tokens) sits at `P + virtual + t`, as in every model of
//! the zoo.
//!
//! ```
//! use peft_core::hooks::NoHooks;
//! use peft_core::model::{BaseModel, Batch};
//! let model = peft_models::opt::tiny(0);
//! let batch = Batch::single(&[1, 2, 3], model.device()).unwrap();
//! let out = model.forward(&batch, &NoHooks).unwrap();
//! assert_eq!(out.hidden.dims(), &[1, 3, model.spec().hidden_size]);
//! let logits = model.logits(&out.hidden).unwrap();
//! assert_eq!(logits.dims(), &[1, 3, model.spec().vocab_size]);
//! assert!(model.spec().find_site("model.decoder.layers.1.fc1").is_some());
//! ```

use std::path::Path;

use crate::embedding::TokenTable;
use candle_core::{DType, Device, Tensor};
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::Hooks;
use peft_core::kv_cache::KvCache;
use peft_core::model::{BaseModel, Batch, Output};
use peft_core::spec::{ModelSpec, Role, Site, SiteId};
use serde_json::Value;

use crate::attention::{attend, split_heads};
use crate::config_checks::{check_layer_count, check_sizes};
use crate::decoding::DecoderPass;
use crate::embedding::lookup;
use crate::error::{ModelError, Result};
use crate::folder::parse_config;
use crate::parts::{
    linear_at, linear_at_mut, projection_fields, Activation, LayerNorm, Loader, Projection,
};
use crate::tensor_usage::Allowed;
use crate::weights::WeightMap;

mod config;

pub use config::OptConfig;
use config::LAYER_NORM_EPS;

/// A tied head's copy (`tie_word_embeddings = true`, OPT's default): transformers ties it to the token
/// embeddings and ignores it.
pub const TIED_HEAD: Allowed = Allowed::new(
    "lm_head.weight",
    "with tie_word_embeddings the head is the token embeddings",
);

/// Rows of `embed_positions` before position 0 (transformers' `OPTLearnedPositionalEmbedding.offset`).
pub const POSITION_OFFSET: usize = 2;

/// Builds the model from a folder's parsed `config.json` (at `config_path`, for errors) and its weights;
/// returns the model and its eos token id.
pub(crate) fn from_folder(
    config: Value,
    config_path: &Path,
    weights: &WeightMap,
    name: &str,
) -> Result<(Box<dyn BaseModel>, Option<u32>)> {
    let cfg: OptConfig = parse_config(config_path, config)?;
    let model = Opt::from_weights(&cfg, weights, name)?;
    Ok((Box::new(model), cfg.eos_token_id))
}

/// One decoder layer.
#[derive(Debug, Clone)]
struct Layer {
    self_attn_layer_norm: LayerNorm,
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    out_proj: Projection,
    final_layer_norm: LayerNorm,
    fc1: Projection,
    fc2: Projection,
}

projection_fields!(Layer: [q_proj, k_proj, v_proj, out_proj, fc1, fc2]);

/// OPT with frozen weights; implements [`BaseModel`].
///
/// The spec's `hidden_size` is the width the methods meet at both ends of the model, `word_embed_proj_dim`:
/// the token embeddings (and virtual tokens), the final hidden states and the LM head. It equals the layers'
/// `hidden_size` except where `project_in` / `project_out` exist (opt-350m: 512 against 1024); `head_dim` is
/// always the layers' `hidden_size / num_attention_heads`. The head is the token embedding matrix unless the
/// config unties it (`tie_word_embeddings = false`, then `lm_head.weight`); with a tied head a checkpoint's
/// `lm_head.weight` is ignored, as transformers ties it.
#[derive(Debug, Clone)]
pub struct Opt {
    config: OptConfig,
    spec: ModelSpec,
    device: Device,
    embed_tokens: Tensor,
    embed_positions: Tensor,
    project_in: Option<Projection>,
    project_out: Option<Projection>,
    layers: Vec<Layer>,
    final_layer_norm: Option<LayerNorm>,
    activation: Activation,
    scale: f64,
    lm_head: FrozenLinear,
    parameters: Vec<(String, Tensor)>,
}

impl Opt {
    /// Builds the model from checkpoint tensors named as `OPTForCausalLM` saves them
    /// (`model.decoder.embed_tokens.weight`, ...) or as a bare `OPTModel` does (`decoder.embed_tokens.weight`, ...).
    /// `name_or_path` is recorded in the spec (`base_model_name_or_path` of saved adapters).
    pub fn from_weights(cfg: &OptConfig, weights: &WeightMap, name_or_path: &str) -> Result<Opt> {
        let (h, heads, layers) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_hidden_layers,
        );
        check_sizes(&[
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", h),
            ("num_attention_heads", heads),
            ("ffn_dim", cfg.ffn_dim),
            ("max_position_embeddings", cfg.max_position_embeddings),
            ("word_embed_proj_dim", cfg.word_embed_proj_dim()),
        ])?;
        if h % heads != 0 {
            return Err(ModelError::Config(format!(
                "OPT hidden_size {h} is not divisible by num_attention_heads {heads}"
            )));
        }
        let activation = Activation::parse(&cfg.activation_function)?;
        let weights = with_model_prefix(weights);
        check_layer_count(
            "num_hidden_layers",
            layers,
            &weights,
            "model.decoder.layers",
        )?;
        let word = cfg.word_embed_proj_dim();
        let mut spec = ModelSpec::new(
            "opt",
            layers,
            word,
            heads,
            heads,
            cfg.vocab_size,
            cfg.max_position_embeddings,
        );
        spec.head_dim = h / heads;
        spec.name_or_path = name_or_path.to_string();
        let mut ld = Loader::new(&weights, spec);
        let (bias, affine) = (cfg.enable_bias, cfg.layer_norm_elementwise_affine);

        let embed_tokens =
            ld.tensor("model.decoder.embed_tokens.weight", &[cfg.vocab_size, word])?;
        let device = embed_tokens.device().clone();
        let embed_positions = ld.tensor(
            "model.decoder.embed_positions.weight",
            &[cfg.max_position_embeddings + POSITION_OFFSET, h],
        )?;
        let projected = word != h;
        let project_in = if projected {
            Some(ld.linear(
                Role::WidthProjection,
                "model.decoder.project_in",
                None,
                word,
                h,
                false,
            )?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let p = format!("model.decoder.layers.{i}");
            let a = format!("{p}.self_attn");
            let ffn = cfg.ffn_dim;
            blocks.push(Layer {
                q_proj: ld.linear(Role::Query, &format!("{a}.q_proj"), Some(i), h, h, bias)?,
                k_proj: ld.linear(Role::Key, &format!("{a}.k_proj"), Some(i), h, h, bias)?,
                v_proj: ld.linear(Role::Value, &format!("{a}.v_proj"), Some(i), h, h, bias)?,
                out_proj: ld.linear(
                    Role::AttentionOutput,
                    &format!("{a}.out_proj"),
                    Some(i),
                    h,
                    h,
                    bias,
                )?,
                self_attn_layer_norm: layer_norm(
                    &mut ld,
                    Role::AttentionNorm,
                    &format!("{p}.self_attn_layer_norm"),
                    Some(i),
                    h,
                    affine,
                    &device,
                )?,
                fc1: ld.linear(Role::MlpUp, &format!("{p}.fc1"), Some(i), h, ffn, bias)?,
                fc2: ld.linear(Role::MlpDown, &format!("{p}.fc2"), Some(i), ffn, h, bias)?,
                // Named `final_layer_norm` in every layer, it is the norm before the layer's MLP.
                final_layer_norm: layer_norm(
                    &mut ld,
                    Role::MlpNorm,
                    &format!("{p}.final_layer_norm"),
                    Some(i),
                    h,
                    affine,
                    &device,
                )?,
            });
        }
        let final_layer_norm = if cfg.has_final_layer_norm() {
            Some(layer_norm(
                &mut ld,
                Role::FinalNorm,
                "model.decoder.final_layer_norm",
                None,
                h,
                affine,
                &device,
            )?)
        } else {
            None
        };
        let project_out = if projected {
            Some(ld.linear(
                Role::WidthProjection,
                "model.decoder.project_out",
                None,
                h,
                word,
                false,
            )?)
        } else {
            None
        };
        let lm_head = if cfg.tie_word_embeddings {
            ld.tied_head(&TokenTable::Dense(embed_tokens.clone()))?
        } else {
            ld.head("lm_head.weight", cfg.vocab_size, word)?
        };
        let allowed: &[Allowed] = if cfg.tie_word_embeddings {
            &[TIED_HEAD]
        } else {
            &[]
        };
        let (spec, parameters) = ld.finish(allowed)?;
        Ok(Opt {
            config: cfg.clone(),
            scale: (spec.head_dim as f64).powf(-0.5),
            spec,
            device,
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers: blocks,
            final_layer_norm,
            activation,
            lm_head,
            parameters,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &OptConfig {
        &self.config
    }

    /// Every projection of the model: the layers', then `project_in` / `project_out` where they exist.
    fn projections(&self) -> impl Iterator<Item = &Projection> {
        let ends = self.project_in.iter().chain(self.project_out.iter());
        self.layers.iter().flat_map(Layer::projections).chain(ends)
    }

    /// [`Opt::projections`], mutably.
    fn projections_mut(&mut self) -> impl Iterator<Item = &mut Projection> {
        let ends = self
            .project_in
            .iter_mut()
            .chain(self.project_out.iter_mut());
        self.layers
            .iter_mut()
            .flat_map(Layer::projections_mut)
            .chain(ends)
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        pass: &mut DecoderPass,
        i: usize,
        hooks: &dyn Hooks,
    ) -> Result<Tensor> {
        let (heads, head_dim) = (self.spec.num_heads, self.spec.head_dim);
        let pre = self.config.do_layer_norm_before;

        let h = if pre {
            layer.self_attn_layer_norm.forward(x, hooks)?
        } else {
            x.clone()
        };
        let q = split_heads(&layer.q_proj.forward(&h, hooks)?, heads, head_dim)?;
        let k = split_heads(&layer.k_proj.forward(&h, hooks)?, heads, head_dim)?;
        let v = split_heads(&layer.v_proj.forward(&h, hooks)?, heads, head_dim)?;
        let (k, v, bias) = pass.keys_values(i, k, v)?;
        let attn = attend(&q, &k, &v, None, &bias, self.scale, i)?;
        let mut x = (x + layer.out_proj.forward(&attn, hooks)?)?;
        if !pre {
            x = layer.self_attn_layer_norm.forward(&x, hooks)?;
        }

        let h = if pre {
            layer.final_layer_norm.forward(&x, hooks)?
        } else {
            x.clone()
        };
        let inner = self.activation.apply(&layer.fc1.forward(&h, hooks)?)?;
        let mut x = (x + layer.fc2.forward(&inner, hooks)?)?;
        if !pre {
            x = layer.final_layer_norm.forward(&x, hooks)?;
        }
        Ok(x)
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
            self.config.max_position_embeddings,
            "OPT's max_position_embeddings",
        )?;
        let x = match &self.project_in {
            Some(p) => p.forward(&pass.x, hooks)?,
            None => pass.x.clone(),
        };
        let rows = position_rows(&pass)?;
        let mut x = (x + lookup(&self.embed_positions, &rows)?)?;
        x = hooks.layers(self.layers.len(), x, &mut |i, x| {
            Ok(self.layer_forward(&self.layers[i], x, &mut pass, i, hooks)?)
        })?;
        if let Some(ln) = &self.final_layer_norm {
            x = ln.forward(&x, hooks)?;
        }
        if let Some(p) = &self.project_out {
            x = p.forward(&x, hooks)?;
        }
        let virtual_tokens = pass.virtual_tokens;
        pass.finish(cache)?;
        Ok(Output {
            hidden: x,
            virtual_tokens,
        })
    }
}

/// A LayerNorm over `dim` features: with the checkpoint's weight and bias where `affine`
/// (`layer_norm_elementwise_affine`), otherwise plain normalisation (unit weight, no bias, nothing loaded); the
/// site is registered either way, so BitFit can add a bias.
fn layer_norm(
    ld: &mut Loader<'_>,
    role: Role,
    module: &str,
    layer: Option<usize>,
    dim: usize,
    affine: bool,
    device: &Device,
) -> Result<LayerNorm> {
    if affine {
        return ld.layer_norm(role, module, layer, dim, true, LAYER_NORM_EPS);
    }
    let site = ld
        .spec
        .add_site(Site::norm(module, layer, dim, false).with_role(role));
    Ok(LayerNorm {
        site,
        weight: Tensor::ones(dim, DType::F32, device)?,
        bias: None,
        eps: LAYER_NORM_EPS,
    })
}

/// Rows of `embed_positions` `[batch, seq]` for a pass's positions, as transformers computes them:
/// `cumsum(mask) * mask - 1 + 2` over the mask of prefix (or cache) and tokens, so a padded position reads row 1.
fn position_rows(pass: &DecoderPass) -> Result<Tensor> {
    let positions = pass.position_rows();
    let seq = positions.first().map_or(0, |r| r.len());
    let mask = pass.key_mask();
    let keys = mask.dim(1)?;
    let mask = mask.narrow(1, keys - seq, seq)?.to_vec2::<f32>()?;
    Ok(Tensor::new(offset_rows(positions, &mask), pass.x.device())?)
}

/// `position + 2` where `mask` is 1, row 1 where it is 0.
fn offset_rows(positions: &[Vec<u32>], mask: &[Vec<f32>]) -> Vec<Vec<u32>> {
    positions
        .iter()
        .zip(mask)
        .map(|(pos, mask)| {
            pos.iter()
                .zip(mask)
                .map(|(&p, &m)| {
                    if m > 0.5 {
                        p + POSITION_OFFSET as u32
                    } else {
                        POSITION_OFFSET as u32 - 1
                    }
                })
                .collect()
        })
        .collect()
}

/// A bare `OPTModel` checkpoint names its tensors without the `model.` prefix (`decoder.embed_tokens.weight`):
/// add it.
fn with_model_prefix(weights: &WeightMap) -> WeightMap {
    if weights.contains("model.decoder.embed_tokens.weight")
        || !weights.contains("decoder.embed_tokens.weight")
    {
        return weights.clone();
    }
    weights.clone().rename(|k| {
        if k.starts_with("decoder.") {
            format!("model.{k}")
        } else {
            k.to_string()
        }
    })
}

impl BaseModel for Opt {
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
        linear_at(self.projections(), site)
    }

    fn frozen_linear_mut(&mut self, site: SiteId) -> Option<&mut FrozenLinear> {
        linear_at_mut(self.projections_mut(), site)
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.parameters.clone()
    }
}

/// The tiny OPT configuration: vocabulary [`crate::tiny::VOCAB`], hidden 32, 2 layers, 4 heads, MLP 64,
/// 64 positions, pre-norm, ReLU, tied head (opt-125m's shape, scaled down).
pub fn tiny_config() -> OptConfig {
    OptConfig {
        vocab_size: crate::tiny::VOCAB,
        hidden_size: 32,
        num_hidden_layers: 2,
        ffn_dim: 64,
        max_position_embeddings: 64,
        do_layer_norm_before: true,
        remove_final_layer_norm: false,
        word_embed_proj_dim: None,
        num_attention_heads: 4,
        activation_function: "relu".into(),
        enable_bias: true,
        layer_norm_elementwise_affine: true,
        tie_word_embeddings: true,
        pad_token_id: Some(1),
        bos_token_id: Some(2),
        eos_token_id: Some(2),
    }
}

/// A tiny OPT ([`tiny_config`]) with seeded random weights, on the CPU.
pub fn tiny(seed: u64) -> Opt {
    Opt::from_weights(
        &tiny_config(),
        &tiny_weights(&tiny_config(), seed),
        "tiny-opt",
    )
    .expect("the tiny OPT weights fit its config")
}

/// Seeded random checkpoint tensors (HF names, drawn by [`crate::tiny`]'s rule) for any OPT configuration
/// `cfg`: exactly the tensors `cfg` implies, so that variants (post-norm, projections, no biases) can be built.
pub fn tiny_weights(cfg: &OptConfig, seed: u64) -> WeightMap {
    let (h, word, ffn) = (cfg.hidden_size, cfg.word_embed_proj_dim(), cfg.ffn_dim);
    let d = "model.decoder";
    let mut shapes = vec![
        (
            format!("{d}.embed_tokens.weight"),
            vec![cfg.vocab_size, word],
        ),
        (
            format!("{d}.embed_positions.weight"),
            vec![cfg.max_position_embeddings + POSITION_OFFSET, h],
        ),
    ];
    let norm = |shapes: &mut Vec<(String, Vec<usize>)>, module: String| {
        if cfg.layer_norm_elementwise_affine {
            shapes.push((format!("{module}.weight"), vec![h]));
            shapes.push((format!("{module}.bias"), vec![h]));
        }
    };
    if word != h {
        shapes.push((format!("{d}.project_in.weight"), vec![h, word]));
        shapes.push((format!("{d}.project_out.weight"), vec![word, h]));
    }
    for i in 0..cfg.num_hidden_layers {
        let p = format!("{d}.layers.{i}");
        for (module, in_f, out_f) in [
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", h, h),
            ("self_attn.v_proj", h, h),
            ("self_attn.out_proj", h, h),
            ("fc1", h, ffn),
            ("fc2", ffn, h),
        ] {
            shapes.push((format!("{p}.{module}.weight"), vec![out_f, in_f]));
            if cfg.enable_bias {
                shapes.push((format!("{p}.{module}.bias"), vec![out_f]));
            }
        }
        norm(&mut shapes, format!("{p}.self_attn_layer_norm"));
        norm(&mut shapes, format!("{p}.final_layer_norm"));
    }
    if cfg.has_final_layer_norm() {
        norm(&mut shapes, format!("{d}.final_layer_norm"));
    }
    if !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, word]));
    }
    crate::tiny::random_weights(shapes, seed, "tiny OPT")
}

#[cfg(test)]
mod tests;
