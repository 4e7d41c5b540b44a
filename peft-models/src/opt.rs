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

use candle_core::{DType, Device, Tensor};
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::Hooks;
use peft_core::model::{BaseModel, Batch, Output};
use peft_core::spec::{ModelSpec, Site, SiteId};
use serde_json::Value;

use crate::attention::{attend, key_mask_with_prefix, split_heads, PrefixMasks};
use crate::embedding::{embed, lookup, Embedded};
use crate::error::{ModelError, Result};
use crate::folder::parse_config;
use crate::parts::{Activation, LayerNorm, Loader, Projection};
use crate::weights::WeightMap;

mod config;

pub use config::OptConfig;
use config::LAYER_NORM_EPS;

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

impl Layer {
    fn projections(&self) -> [&Projection; 6] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.out_proj,
            &self.fc1,
            &self.fc2,
        ]
    }

    fn projections_mut(&mut self) -> [&mut Projection; 6] {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.out_proj,
            &mut self.fc1,
            &mut self.fc2,
        ]
    }
}

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
        if heads == 0 || h % heads != 0 {
            return Err(ModelError::Config(format!(
                "OPT hidden_size {h} is not divisible by num_attention_heads {heads}"
            )));
        }
        let activation = Activation::parse(&cfg.activation_function)?;
        let weights = with_model_prefix(weights);
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
            Some(ld.linear("model.decoder.project_in", None, word, h, false)?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let p = format!("model.decoder.layers.{i}");
            let a = format!("{p}.self_attn");
            let ffn = cfg.ffn_dim;
            blocks.push(Layer {
                q_proj: ld.linear(&format!("{a}.q_proj"), Some(i), h, h, bias)?,
                k_proj: ld.linear(&format!("{a}.k_proj"), Some(i), h, h, bias)?,
                v_proj: ld.linear(&format!("{a}.v_proj"), Some(i), h, h, bias)?,
                out_proj: ld.linear(&format!("{a}.out_proj"), Some(i), h, h, bias)?,
                self_attn_layer_norm: layer_norm(
                    &mut ld,
                    &format!("{p}.self_attn_layer_norm"),
                    Some(i),
                    h,
                    affine,
                    &device,
                )?,
                fc1: ld.linear(&format!("{p}.fc1"), Some(i), h, ffn, bias)?,
                fc2: ld.linear(&format!("{p}.fc2"), Some(i), ffn, h, bias)?,
                final_layer_norm: layer_norm(
                    &mut ld,
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
            Some(ld.linear("model.decoder.project_out", None, h, word, false)?)
        } else {
            None
        };
        let head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            ld.tensor("lm_head.weight", &[cfg.vocab_size, word])?
        };
        let (spec, parameters) = ld.finish();
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
            lm_head: FrozenLinear::new(head, None),
            parameters,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &OptConfig {
        &self.config
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        masks: &PrefixMasks,
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
        let attn = attend(&q, &k, &v, masks.prefix(i), masks.bias(i), self.scale, i)?;
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
}

/// A LayerNorm over `dim` features: with the checkpoint's weight and bias where `affine`
/// (`layer_norm_elementwise_affine`), otherwise plain normalisation (unit weight, no bias, nothing loaded); the
/// site is registered either way, so BitFit can add a bias.
fn layer_norm(
    ld: &mut Loader<'_>,
    module: &str,
    layer: Option<usize>,
    dim: usize,
    affine: bool,
    device: &Device,
) -> Result<LayerNorm> {
    if affine {
        return ld.layer_norm(module, layer, dim, true, LAYER_NORM_EPS);
    }
    let site = ld.spec.add_site(Site::norm(module, layer, dim, false));
    Ok(LayerNorm {
        site,
        weight: Tensor::ones(dim, DType::F32, device)?,
        bias: None,
        eps: LAYER_NORM_EPS,
    })
}

/// Rows of `embed_positions` `[batch, seq]` for the `seq` positions after a key/value prefix of `start` positions,
/// as transformers computes them: `cumsum(mask) * mask - 1 + 2` over the mask of prefix and tokens (`mask` covers
/// the tokens, the prefix taken as visible, or both), so a padded token reads row 1.
fn position_rows(mask: &Tensor, start: usize, seq: usize) -> Result<Tensor> {
    let full = key_mask_with_prefix(mask, start, seq)?.to_vec2::<f32>()?;
    let rows: Vec<Vec<u32>> = full
        .iter()
        .map(|row| {
            let mut seen = 0u32;
            row.iter()
                .map(|&m| {
                    if m > 0.5 {
                        seen += 1;
                        seen - 1 + POSITION_OFFSET as u32
                    } else {
                        POSITION_OFFSET as u32 - 1
                    }
                })
                .skip(start)
                .collect()
        })
        .collect();
    Ok(Tensor::new(rows, mask.device())?)
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
        let Embedded {
            x,
            ctx,
            masks,
            start,
        } = embed(
            &self.embed_tokens,
            batch,
            hooks,
            self.spec.num_layers,
            self.config.max_position_embeddings,
            "OPT's max_position_embeddings",
        )?;
        let seq = x.dim(1)?;
        let x = match &self.project_in {
            Some(p) => p.forward(&x, hooks)?,
            None => x,
        };
        let rows = position_rows(&ctx.attention_mask, start, seq)?;
        let mut x = (x + lookup(&self.embed_positions, &rows)?)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward(layer, &x, &masks, i, hooks)?;
        }
        if let Some(ln) = &self.final_layer_norm {
            x = ln.forward(&x, hooks)?;
        }
        if let Some(p) = &self.project_out {
            x = p.forward(&x, hooks)?;
        }
        Ok(Output {
            hidden: x,
            virtual_tokens: ctx.virtual_tokens,
        })
    }

    fn lm_head(&self) -> Option<&FrozenLinear> {
        Some(&self.lm_head)
    }

    fn frozen_linear(&self, site: SiteId) -> Option<&FrozenLinear> {
        self.layers
            .iter()
            .flat_map(Layer::projections)
            .chain(self.project_in.iter())
            .chain(self.project_out.iter())
            .find(|p| p.site == site)
            .map(|p| &p.linear)
    }

    fn frozen_linear_mut(&mut self, site: SiteId) -> Option<&mut FrozenLinear> {
        self.layers
            .iter_mut()
            .flat_map(Layer::projections_mut)
            .chain(self.project_in.iter_mut())
            .chain(self.project_out.iter_mut())
            .find(|p| p.site == site)
            .map(|p| &mut p.linear)
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
mod tests {
    use super::*;
    use candle_core::Var;
    use peft_core::hooks::{Ctx, KvPrefix, NoHooks};
    use peft_core::spec::SiteKind;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        peft_core::compare::max_abs_diff(a, b).unwrap()
    }

    /// opt-350m's layout, scaled down: post-norm, token embeddings narrower than the layers.
    fn post_ln_proj_config() -> OptConfig {
        OptConfig {
            do_layer_norm_before: false,
            word_embed_proj_dim: Some(16),
            ..tiny_config()
        }
    }

    fn build(cfg: &OptConfig, seed: u64) -> Opt {
        Opt::from_weights(cfg, &tiny_weights(cfg, seed), "variant").unwrap()
    }

    #[test]
    fn spec_lists_every_site_with_hf_names() {
        let m = tiny(0);
        let spec = m.spec();
        assert_eq!(
            (
                spec.architecture.as_str(),
                spec.num_layers,
                spec.hidden_size,
                spec.num_heads,
                spec.num_kv_heads,
                spec.head_dim,
                spec.max_positions
            ),
            ("opt", 2, 32, 4, 4, 8, 64)
        );
        // Six projections and two norms per layer, and the final norm.
        assert_eq!(spec.sites.len(), 8 * spec.num_layers + 1);
        let fc1 = spec.site(spec.find_site("model.decoder.layers.1.fc1").unwrap());
        assert_eq!(fc1.layer, Some(1));
        assert!(fc1.has_bias);
        assert_eq!(
            fc1.kind,
            SiteKind::Linear {
                in_features: 32,
                out_features: 64,
                fan_in_fan_out: false
            }
        );
        for name in [
            "model.decoder.layers.0.self_attn.q_proj",
            "model.decoder.layers.0.self_attn.k_proj",
            "model.decoder.layers.0.self_attn.v_proj",
            "model.decoder.layers.0.self_attn.out_proj",
            "model.decoder.layers.0.fc2",
            "model.decoder.layers.0.self_attn_layer_norm",
            "model.decoder.layers.0.final_layer_norm",
            "model.decoder.final_layer_norm",
        ] {
            let id = spec.find_site(name).unwrap_or_else(|| panic!("{name}"));
            let is_linear = name.contains("proj") || name.contains(".fc");
            assert_eq!(m.frozen_linear(id).is_some(), is_linear, "{name}");
        }
        assert!(spec.find_site("model.decoder.project_in").is_none());
        let total: usize = m.parameters().iter().map(|(_, t)| t.elem_count()).sum();
        assert_eq!(spec.num_parameters, total);
        assert!(m
            .parameters()
            .iter()
            .any(|(n, t)| n == "model.decoder.embed_positions.weight" && t.dims() == [66, 32]));
        assert_eq!(spec.name_or_path, "tiny-opt");

        // Post-norm with projections: project_in / project_out, no final norm, the spec's width is the
        // embeddings'.
        let m = build(&post_ln_proj_config(), 1);
        let spec = m.spec();
        assert_eq!((spec.hidden_size, spec.head_dim), (16, 8));
        assert!(spec.find_site("model.decoder.final_layer_norm").is_none());
        let pin = spec.find_site("model.decoder.project_in").unwrap();
        let pout = spec.find_site("model.decoder.project_out").unwrap();
        assert_eq!(
            spec.site(pin).kind,
            SiteKind::Linear {
                in_features: 16,
                out_features: 32,
                fan_in_fan_out: false
            }
        );
        assert!(!spec.site(pout).has_bias && spec.site(pout).layer.is_none());
        assert_eq!(m.frozen_linear(pout).unwrap().weight().dims(), &[16, 32]);
        let out = m
            .forward(&Batch::single(&[3, 4], m.device()).unwrap(), &NoHooks)
            .unwrap();
        assert_eq!(out.hidden.dims(), &[1, 2, 16]);
    }

    #[test]
    fn positions_follow_the_mask_with_the_offset() {
        let dev = Device::Cpu;
        let mask = Tensor::new(&[[1f32, 1., 1., 0.], [1., 0., 0., 0.]], &dev).unwrap();
        // No prefix: real tokens read rows 2, 3, ...; padding reads row 1.
        let rows = position_rows(&mask, 0, 4)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap();
        assert_eq!(rows, vec![vec![2, 3, 4, 1], vec![2, 1, 1, 1]]);
        // A prefix of three positions shifts the real tokens by three.
        let rows = position_rows(&mask, 3, 4)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap();
        assert_eq!(rows, vec![vec![5, 6, 7, 1], vec![5, 1, 1, 1]]);
    }

    #[test]
    fn padding_does_not_change_real_positions() {
        for m in [tiny(1), build(&post_ln_proj_config(), 2)] {
            let dev = m.device().clone();
            let ids = Tensor::new(&[[7u32, 8, 9, 10, 11], [7, 8, 9, 0, 0]], &dev).unwrap();
            let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]], &dev).unwrap();
            let padded = m
                .forward(&Batch::new(ids, mask).unwrap(), &NoHooks)
                .unwrap()
                .hidden;
            let short = m
                .forward(&Batch::single(&[7, 8, 9], &dev).unwrap(), &NoHooks)
                .unwrap()
                .hidden;
            let row = padded.narrow(0, 1, 1).unwrap().narrow(1, 0, 3).unwrap();
            assert!(max_diff(&row, &short) < 1e-5);
            // Positions matter: the same tokens one place later give other states.
            let shifted = m
                .forward(&Batch::single(&[7, 7, 8, 9], &dev).unwrap(), &NoHooks)
                .unwrap()
                .hidden
                .narrow(1, 1, 3)
                .unwrap();
            assert!(max_diff(&shifted, &short) > 1e-3);
        }
    }

    #[test]
    fn checkpoint_without_model_prefix_loads_the_same() {
        let m = tiny(3);
        let bare =
            tiny_weights(&tiny_config(), 3).rename(|k| k.trim_start_matches("model.").into());
        assert!(bare.contains("decoder.embed_tokens.weight"));
        let m2 = Opt::from_weights(m.config(), &bare, "bare").unwrap();
        let batch = Batch::single(&[4, 5, 6], m.device()).unwrap();
        let a = m.forward(&batch, &NoHooks).unwrap().hidden;
        let b = m2.forward(&batch, &NoHooks).unwrap().hidden;
        assert_eq!(max_diff(&a, &b), 0.0);
        assert!(m2
            .parameters()
            .iter()
            .all(|(n, _)| n.starts_with("model.decoder.")));
    }

    #[test]
    fn missing_tensor_and_bad_config_are_named() {
        let cfg = OptConfig {
            tie_word_embeddings: false,
            ..tiny_config()
        };
        let w = tiny_weights(&cfg, 0);
        for missing in ["model.decoder.layers.1.fc2.bias", "lm_head.weight"] {
            let tensors = w
                .names()
                .filter(|n| *n != missing)
                .map(|n| (n.clone(), w.get_any(n).unwrap()))
                .collect();
            let err = Opt::from_weights(&cfg, &WeightMap::new(tensors, "test"), "x")
                .unwrap_err()
                .to_string();
            assert!(err.contains(missing), "{err}");
        }
        let bad = OptConfig {
            num_attention_heads: 5,
            ..tiny_config()
        };
        let err = Opt::from_weights(&bad, &w, "x").unwrap_err().to_string();
        assert!(err.contains("num_attention_heads 5"), "{err}");
        let bad = OptConfig {
            activation_function: "nope".into(),
            ..tiny_config()
        };
        let err = Opt::from_weights(&bad, &w, "x").unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("relu"), "{err}");
    }

    #[test]
    fn untied_head_and_plain_norms() {
        let cfg = OptConfig {
            tie_word_embeddings: false,
            enable_bias: false,
            layer_norm_elementwise_affine: false,
            remove_final_layer_norm: true,
            ..tiny_config()
        };
        let m = build(&cfg, 4);
        let head = m.lm_head().unwrap().weight();
        assert!(max_diff(head, &m.embed_tokens) > 0.1);
        let spec = m.spec();
        assert!(spec.find_site("model.decoder.final_layer_norm").is_none());
        let ln = spec
            .find_site("model.decoder.layers.0.final_layer_norm")
            .unwrap();
        assert!(!spec.site(ln).has_bias);
        assert!(spec.sites.iter().all(|s| !s.has_bias));
        assert!(m.parameters().iter().all(|(n, _)| !n.contains("norm")));
    }

    #[test]
    fn out_of_vocabulary_ids_are_an_error() {
        let m = tiny(0);
        let batch = Batch::single(&[m.spec().vocab_size as u32], m.device()).unwrap();
        assert!(m
            .forward(&batch, &NoHooks)
            .unwrap_err()
            .to_string()
            .contains("vocabulary"));
    }

    #[test]
    fn tiny_is_deterministic() {
        let (a, b, c) = (tiny(5), tiny(5), tiny(6));
        for ((na, ta), (nb, tb)) in a.parameters().iter().zip(b.parameters().iter()) {
            assert_eq!(na, nb);
            assert_eq!(max_diff(ta, tb), 0.0, "{na}");
        }
        assert!(max_diff(&a.parameters()[0].1, &c.parameters()[0].1) > 0.1);
    }

    /// A trainable prompt (embeddings hook) and a trainable key/value prefix in every layer.
    struct Trainable {
        prompt: Var,
        key: Var,
        value: Var,
    }

    impl Hooks for Trainable {
        fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> peft_core::Result<Tensor> {
            let (b, _, h) = x.dims3()?;
            let p = self.prompt.dim(1)?;
            ctx.prepend_virtual_tokens(p)?;
            let prompt = self.prompt.as_tensor().broadcast_as((b, p, h))?;
            Ok(Tensor::cat(&[&prompt, &x], 1)?)
        }

        fn attention_prefix(
            &self,
            _layer: usize,
            _ctx: &Ctx,
        ) -> peft_core::Result<Option<KvPrefix>> {
            Ok(Some(KvPrefix {
                key: self.key.as_tensor().clone(),
                value: self.value.as_tensor().clone(),
            }))
        }
    }

    #[test]
    fn gradient_reaches_the_prompt_and_the_prefix_only() {
        for m in [tiny(7), build(&post_ln_proj_config(), 8)] {
            let dev = m.device().clone();
            let (s, d) = (m.spec(), m.spec().head_dim);
            let var = |shape: &[usize], seed: u64| {
                let t =
                    tiny_weights(&tiny_config(), seed).get_any("model.decoder.embed_tokens.weight");
                let flat = t.unwrap().flatten_all().unwrap();
                let n: usize = shape.iter().product();
                Var::from_tensor(&flat.narrow(0, 0, n).unwrap().reshape(shape).unwrap()).unwrap()
            };
            let hooks = Trainable {
                prompt: var(&[1, 2, s.hidden_size], 11),
                key: var(&[1, s.num_kv_heads, 3, d], 12),
                value: var(&[1, s.num_kv_heads, 3, d], 13),
            };
            let ids = Tensor::new(&[[5u32, 9, 14], [21, 8, 0]], &dev).unwrap();
            let mask = Tensor::new(&[[1f32, 1., 1.], [1., 1., 0.]], &dev).unwrap();
            let out = m.forward(&Batch::new(ids, mask).unwrap(), &hooks).unwrap();
            assert_eq!(out.virtual_tokens, 2);
            let logp =
                peft_core::nn::log_softmax_last_dim(&m.logits(&out.hidden).unwrap()).unwrap();
            let loss = logp.narrow(1, 2, 3).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            for v in [&hooks.prompt, &hooks.key, &hooks.value] {
                let g = grads
                    .get(v.as_tensor())
                    .expect("a gradient for the hook's tensor");
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(norm > 1e-8, "gradient norm {norm}");
            }
            for (name, t) in m.parameters() {
                assert!(grads.get(&t).is_none(), "frozen {name} got a gradient");
            }
        }
    }
}
