//! BERT (`model_type` "bert", transformers' `BertModel`) as a frozen encoder: the sum of word, learned
//! absolute position and token type embeddings through a LayerNorm, post-LN layers with bidirectional
//! self-attention (padding hidden, no causal order) and an exact-erf `gelu` MLP, and the optional pooler
//! (`pooler.dense`, then tanh, over the first position) that transformers' `BertForSequenceClassification`
//! classifies from. all-MiniLM-L6-v2 (the zoo's `minilm-l6`) is such a checkpoint.
//!
//! ```
//! use peft_core::hooks::NoHooks;
//! use peft_core::model::{BaseModel, Batch};
//! let model = peft_models::bert::tiny(0);
//! let batch = Batch::single(&[2, 5, 9, 3], model.device()).unwrap();
//! let out = model.forward(&batch, &NoHooks).unwrap();
//! assert_eq!(out.hidden.dims(), &[1, 4, 32]);
//! assert_eq!(model.pooled(&out, &batch, &NoHooks).unwrap().dims(), &[1, 32]);
//! assert!(model.lm_head().is_none()); // an encoder: no MLM head is loaded
//! assert!(model.spec().find_site("encoder.layer.1.attention.self.query").is_some());
//! ```

mod config;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use peft_core::frozen::FrozenLinear;
use peft_core::hooks::{Ctx, Hooks};
use peft_core::model::{BaseModel, Batch, Output};
use peft_core::spec::{ModelSpec, SiteId};
use peft_core::PeftError;
use serde_json::Value;

pub use config::BertConfig;

use crate::attention::{attend, split_heads, PrefixMasks};
use crate::embedding::lookup;
use crate::error::{ModelError, Result};
use crate::folder::parse_config;
use crate::parts::{Activation, LayerNorm, Loader, Projection};
use crate::weights::WeightMap;

/// One encoder layer (`encoder.layer.{i}`).
#[derive(Debug, Clone)]
struct Layer {
    query: Projection,
    key: Projection,
    value: Projection,
    /// `attention.output.dense`.
    attn_out: Projection,
    /// `attention.output.LayerNorm`, over the attention output plus the layer input.
    attn_norm: LayerNorm,
    /// `intermediate.dense`.
    intermediate: Projection,
    /// `output.dense`.
    output: Projection,
    /// `output.LayerNorm`, over the MLP output plus its input.
    out_norm: LayerNorm,
}

impl Layer {
    fn projections(&self) -> [&Projection; 6] {
        [
            &self.query,
            &self.key,
            &self.value,
            &self.attn_out,
            &self.intermediate,
            &self.output,
        ]
    }

    fn projections_mut(&mut self) -> [&mut Projection; 6] {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attn_out,
            &mut self.intermediate,
            &mut self.output,
        ]
    }
}

/// BERT with frozen weights; implements [`BaseModel`].
///
/// Parameters and sites are named as a bare `BertModel` names them (`embeddings.word_embeddings.weight`,
/// `encoder.layer.0.attention.self.query`, `pooler.dense`), without the `bert.` prefix that
/// `BertForMaskedLM` / `BertForSequenceClassification` checkpoints carry; checkpoints of either kind load (the
/// prefix is dropped, as are their heads' tensors: no MLM head is loaded, so [`BaseModel::lm_head`] is `None`
/// and this model cannot score words).
///
/// The pooler is optional (`add_pooling_layer=False` checkpoints have none); [`BaseModel::pooled`] returns its
/// output, tanh(`pooler.dense`(final state of position 0)), position 0 of the whole sequence (a virtual token
/// under prompt tuning, as in HF PEFT), and errors where the checkpoint has no pooler.
#[derive(Debug, Clone)]
pub struct Bert {
    config: BertConfig,
    spec: ModelSpec,
    device: Device,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    pooler: Option<Projection>,
    activation: Activation,
    scale: f64,
    parameters: Vec<(String, Tensor)>,
}

impl Bert {
    /// Builds the model from checkpoint tensors named as `BertModel` saves them (`embeddings.word_embeddings.weight`,
    /// ...) or with the `bert.` prefix of the task models; legacy `LayerNorm.gamma` / `.beta` names are read as
    /// `.weight` / `.bias`, as transformers does. The pooler is loaded where the checkpoint has `pooler.dense.*`.
    /// `name_or_path` is recorded in the spec (`base_model_name_or_path` of saved adapters).
    pub fn from_weights(cfg: &BertConfig, weights: &WeightMap, name_or_path: &str) -> Result<Bert> {
        let (h, heads, layers) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_hidden_layers,
        );
        if heads == 0 || h % heads != 0 {
            return Err(ModelError::Config(format!(
                "BERT hidden_size {h} is not divisible by num_attention_heads {heads}"
            )));
        }
        if cfg.is_decoder {
            return Err(ModelError::Config(
                "BERT with is_decoder = true (a causal decoder) is not supported: only the bidirectional encoder is \
                 implemented"
                    .into(),
            ));
        }
        if cfg.position_embedding_type != "absolute" {
            return Err(ModelError::Config(format!(
                "BERT position_embedding_type `{}` is not supported (only `absolute`, the one transformers 5 has)",
                cfg.position_embedding_type
            )));
        }
        let activation = Activation::parse(&cfg.hidden_act)?;
        let weights = bert_model_names(weights);
        let mut spec = ModelSpec::new(
            "bert",
            layers,
            h,
            heads,
            heads,
            cfg.vocab_size,
            cfg.max_position_embeddings,
        );
        spec.name_or_path = name_or_path.to_string();
        spec.classifier_module = "classifier".into();
        spec.classifier_bias = true;
        // BertForSequenceClassification / BertForTokenClassification nest these sites under `bert.`.
        spec.base_model_prefix = Some("bert".into());
        let mut ld = Loader::new(&weights, spec);
        let eps = cfg.layer_norm_eps;

        let word_embeddings =
            ld.tensor("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let position_embeddings = ld.tensor(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        )?;
        let token_type_embeddings = ld.tensor(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?;
        let embeddings_norm = ld.layer_norm("embeddings.LayerNorm", None, h, true, eps)?;
        let inner = cfg.intermediate_size;
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let p = format!("encoder.layer.{i}");
            let l = Some(i);
            blocks.push(Layer {
                query: ld.linear(&format!("{p}.attention.self.query"), l, h, h, true)?,
                key: ld.linear(&format!("{p}.attention.self.key"), l, h, h, true)?,
                value: ld.linear(&format!("{p}.attention.self.value"), l, h, h, true)?,
                attn_out: ld.linear(&format!("{p}.attention.output.dense"), l, h, h, true)?,
                attn_norm: ld.layer_norm(
                    &format!("{p}.attention.output.LayerNorm"),
                    l,
                    h,
                    true,
                    eps,
                )?,
                intermediate: ld.linear(&format!("{p}.intermediate.dense"), l, h, inner, true)?,
                output: ld.linear(&format!("{p}.output.dense"), l, inner, h, true)?,
                out_norm: ld.layer_norm(&format!("{p}.output.LayerNorm"), l, h, true, eps)?,
            });
        }
        let pooler = if weights.contains("pooler.dense.weight") {
            Some(ld.linear("pooler.dense", None, h, h, true)?)
        } else {
            None
        };
        let (spec, parameters) = ld.finish();
        Ok(Bert {
            config: cfg.clone(),
            spec,
            device: word_embeddings.device().clone(),
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_norm,
            layers: blocks,
            pooler,
            activation,
            scale: ((h / heads) as f64).powf(-0.5),
            parameters,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The padding token id (`pad_token_id` of the config; HF's default is 0).
    pub fn pad_token_id(&self) -> Option<u32> {
        self.config.pad_token_id
    }

    /// True where the checkpoint has a pooler (`pooler.dense.*`).
    pub fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }

    /// The pooler output `[batch, hidden]` of final states `[batch, seq, hidden]`: tanh(`pooler.dense`(row 0)),
    /// with `pooler.dense` run through `hooks` (an adapter targeting it, BitFit's bias); [`BaseModel::pooled`]
    /// calls it.
    pub fn pool(&self, hidden: &Tensor, hooks: &dyn Hooks) -> Result<Tensor> {
        let pooler = self.pooler.as_ref().ok_or_else(|| {
            ModelError::Core(PeftError::Unsupported(format!(
                "the BERT checkpoint {} has no pooler (`pooler.dense.*`; it was saved with add_pooling_layer=False), \
                 so it has no pooled output: pool the token states instead (peft_models::sentence::sentence_embedding \
                 takes their mean) or use a checkpoint with a pooler",
                self.spec.name_or_path
            )))
        })?;
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(pooler.forward(&first, hooks)?.tanh()?)
    }

    /// `[batch, virtual + seq]` segment ids: zeros for the virtual tokens (as HF PEFT prepends), then the batch's
    /// (zeros where it has none), checked against `type_vocab_size`.
    fn token_types(&self, batch: &Batch, virtual_tokens: usize) -> Result<Tensor> {
        let (b, s) = batch.shape();
        let types = match &batch.token_type_ids {
            Some(t) => {
                if t.dims() != [b, s] {
                    return Err(ModelError::Core(PeftError::ShapeMismatch {
                        what: "token type ids".into(),
                        expected_from: "input ids".into(),
                        expected: vec![b, s],
                        got_from: "token type ids".into(),
                        got: t.dims().to_vec(),
                    }));
                }
                let t = t.to_dtype(DType::U32)?;
                if t.elem_count() > 0 {
                    let max = t.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
                    if max >= self.config.type_vocab_size {
                        return Err(ModelError::Config(format!(
                            "token type id {max} is outside BERT's type_vocab_size {}: segment ids must be 0..{}",
                            self.config.type_vocab_size, self.config.type_vocab_size
                        )));
                    }
                }
                t
            }
            None => Tensor::zeros((b, s), DType::U32, &self.device)?,
        };
        if virtual_tokens == 0 {
            return Ok(types);
        }
        let zeros = Tensor::zeros((b, virtual_tokens), DType::U32, &self.device)?;
        Ok(Tensor::cat(&[&zeros, &types], 1)?)
    }

    fn run(&self, batch: &Batch, hooks: &dyn Hooks) -> Result<Output> {
        let (b, tokens) = batch.shape();
        let mut ctx = Ctx::new(batch.attention_mask.clone());
        // Prompt tuning sees the word embeddings alone; token types and positions cover the whole sequence after.
        let x = hooks.embeddings(lookup(&self.word_embeddings, &batch.input_ids)?, &mut ctx)?;
        let seq = x.dim(1)?;
        let virtual_tokens = ctx.virtual_tokens;
        if seq != virtual_tokens + tokens {
            return Err(ModelError::Core(PeftError::ShapeMismatch {
                what: "embeddings after the embeddings hook".into(),
                expected_from: format!("the batch ({tokens} tokens) and the {virtual_tokens} virtual tokens the hook recorded"),
                expected: vec![b, virtual_tokens + tokens, self.spec.hidden_size],
                got_from: "the embeddings hook".into(),
                got: x.dims().to_vec(),
            }));
        }
        let masks = PrefixMasks::collect_bidirectional(hooks, self.layers.len(), &ctx, seq)?;
        // Positions start after a key/value prefix, as HF's start at the cache length.
        let start = masks.prefix_len();
        let limit = self.config.max_position_embeddings;
        if start + seq > limit {
            return Err(ModelError::Config(format!(
                "{} positions (prefix {start} + {seq} tokens) exceed BERT's max_position_embeddings {limit}",
                start + seq
            )));
        }
        let types = self.token_types(batch, virtual_tokens)?;
        let type_embeddings = lookup(&self.token_type_embeddings, &types)?;
        let x = (x + type_embeddings)?
            .broadcast_add(&self.position_embeddings.narrow(0, start, seq)?)?;
        let mut x = self.embeddings_norm.forward(&x, hooks)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward(layer, &x, &masks, i, hooks)?;
        }
        Ok(Output {
            hidden: x,
            virtual_tokens,
        })
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        masks: &PrefixMasks,
        i: usize,
        hooks: &dyn Hooks,
    ) -> Result<Tensor> {
        let (heads, d) = (self.spec.num_heads, self.spec.head_dim);
        let q = split_heads(&layer.query.forward(x, hooks)?, heads, d)?;
        let k = split_heads(&layer.key.forward(x, hooks)?, heads, d)?;
        let v = split_heads(&layer.value.forward(x, hooks)?, heads, d)?;
        let attn = attend(&q, &k, &v, masks.prefix(i), masks.bias(i), self.scale, i)?;
        let x = layer
            .attn_norm
            .forward(&(layer.attn_out.forward(&attn, hooks)? + x)?, hooks)?;
        let inner = self
            .activation
            .apply(&layer.intermediate.forward(&x, hooks)?)?;
        layer
            .out_norm
            .forward(&(layer.output.forward(&inner, hooks)? + &x)?, hooks)
    }
}

/// Tensor names as a bare `BertModel` saves them: the `bert.` prefix of the task models dropped (their heads'
/// tensors keep their names and are not read), legacy `LayerNorm.gamma` / `.beta` renamed.
fn bert_model_names(weights: &WeightMap) -> WeightMap {
    let prefixed = weights.contains("bert.embeddings.word_embeddings.weight")
        && !weights.contains("embeddings.word_embeddings.weight");
    let legacy = weights.names().any(|n| n.ends_with("LayerNorm.gamma"));
    if !prefixed && !legacy {
        return weights.clone();
    }
    weights.clone().rename(|k| {
        let k = if prefixed {
            k.strip_prefix("bert.").unwrap_or(k)
        } else {
            k
        };
        if let Some(stem) = k.strip_suffix("LayerNorm.gamma") {
            format!("{stem}LayerNorm.weight")
        } else if let Some(stem) = k.strip_suffix("LayerNorm.beta") {
            format!("{stem}LayerNorm.bias")
        } else {
            k.to_string()
        }
    })
}

impl BaseModel for Bert {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn embed_tokens(&self, ids: &Tensor) -> peft_core::Result<Tensor> {
        Ok(lookup(&self.word_embeddings, ids)?)
    }

    fn forward(&self, batch: &Batch, hooks: &dyn Hooks) -> peft_core::Result<Output> {
        Ok(self.run(batch, hooks)?)
    }

    /// No MLM head is loaded (a `BertForMaskedLM` checkpoint's `cls.*` tensors are ignored).
    fn lm_head(&self) -> Option<&FrozenLinear> {
        None
    }

    /// The pooler output over position 0 of the whole sequence (see [`Bert::pool`]).
    fn pooled(&self, out: &Output, batch: &Batch, hooks: &dyn Hooks) -> peft_core::Result<Tensor> {
        let _ = batch;
        Ok(self.pool(&out.hidden, hooks)?)
    }

    fn frozen_linear(&self, site: SiteId) -> Option<&FrozenLinear> {
        self.layers
            .iter()
            .flat_map(Layer::projections)
            .chain(self.pooler.as_ref())
            .find(|p| p.site == site)
            .map(|p| &p.linear)
    }

    fn frozen_linear_mut(&mut self, site: SiteId) -> Option<&mut FrozenLinear> {
        self.layers
            .iter_mut()
            .flat_map(Layer::projections_mut)
            .chain(self.pooler.as_mut())
            .find(|p| p.site == site)
            .map(|p| &mut p.linear)
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.parameters.clone()
    }
}

/// Builds the model from a folder's parsed `config.json` (at `config_path`, for errors) and its weights;
/// returns the model and its eos token id (none: BERT does not generate).
pub(crate) fn from_folder(
    config: Value,
    config_path: &Path,
    weights: &WeightMap,
    name: &str,
) -> Result<(Box<dyn BaseModel>, Option<u32>)> {
    let cfg: BertConfig = parse_config(config_path, config)?;
    let model = Bert::from_weights(&cfg, weights, name).map_err(|e| match e {
        ModelError::Config(m) => ModelError::Config(format!("{}: {m}", config_path.display())),
        other => other,
    })?;
    Ok((Box::new(model), None))
}

/// The tiny BERT configuration: vocabulary [`crate::tiny::VOCAB`], hidden 32, 2 layers, 4 heads, MLP 64,
/// 64 positions, 2 token types, exact `gelu`.
pub fn tiny_config() -> BertConfig {
    BertConfig {
        vocab_size: crate::tiny::VOCAB,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        hidden_act: "gelu".into(),
        max_position_embeddings: 64,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        pad_token_id: Some(0),
        position_embedding_type: "absolute".into(),
        is_decoder: false,
    }
}

/// The checkpoint tensors of [`tiny`] (pooler included), named as `BertModel` saves them.
pub fn tiny_weights(seed: u64) -> WeightMap {
    let c = tiny_config();
    let (h, inner) = (c.hidden_size, c.intermediate_size);
    // `random_weights` recognises norms by a lowercase `norm`: draw BERT's `LayerNorm`s as `layernorm`, then
    // rename them back, so that they get norm-like scales (1 + noise) rather than projection noise.
    let mut shapes = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![c.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".to_string(),
            vec![c.max_position_embeddings, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".to_string(),
            vec![c.type_vocab_size, h],
        ),
        ("embeddings.layernorm.weight".to_string(), vec![h]),
        ("embeddings.layernorm.bias".to_string(), vec![h]),
    ];
    for i in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        for (module, in_f, out_f) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", h, inner),
            ("output.dense", inner, h),
        ] {
            shapes.push((format!("{p}.{module}.weight"), vec![out_f, in_f]));
            shapes.push((format!("{p}.{module}.bias"), vec![out_f]));
        }
        for norm in ["attention.output.layernorm", "output.layernorm"] {
            shapes.push((format!("{p}.{norm}.weight"), vec![h]));
            shapes.push((format!("{p}.{norm}.bias"), vec![h]));
        }
    }
    shapes.push(("pooler.dense.weight".to_string(), vec![h, h]));
    shapes.push(("pooler.dense.bias".to_string(), vec![h]));
    crate::tiny::random_weights(shapes, seed, "tiny BERT")
        .rename(|k| k.replace("layernorm", "LayerNorm"))
}

/// A tiny BERT with seeded random weights (pooler included), on the CPU.
pub fn tiny(seed: u64) -> Bert {
    Bert::from_weights(&tiny_config(), &tiny_weights(seed), "tiny-bert")
        .expect("the tiny BERT weights fit its config")
}

#[cfg(test)]
mod tests {
    use super::*;
    use peft_core::hooks::NoHooks;
    use peft_core::spec::SiteKind;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        peft_core::compare::max_abs_diff(a, b).unwrap()
    }

    fn without(weights: &WeightMap, drop: impl Fn(&str) -> bool) -> WeightMap {
        let tensors = weights
            .names()
            .filter(|n| !drop(n))
            .map(|n| (n.clone(), weights.get_any(n).unwrap()))
            .collect();
        WeightMap::new(tensors, "test")
    }

    #[test]
    fn spec_names_every_site_as_bert_model_does() {
        let m = tiny(0);
        let spec = m.spec();
        assert_eq!(spec.architecture, "bert");
        assert_eq!(
            (
                spec.num_layers,
                spec.hidden_size,
                spec.num_heads,
                spec.num_kv_heads
            ),
            (2, 32, 4, 4)
        );
        assert_eq!(
            (spec.vocab_size, spec.max_positions, spec.head_dim),
            (128, 64, 8)
        );
        assert_eq!(spec.classifier_module, "classifier");
        assert!(spec.classifier_bias);
        assert_eq!(spec.base_model_prefix.as_deref(), Some("bert"));
        assert!(!spec.is_encoder_decoder);
        // embeddings.LayerNorm, 6 linears + 2 norms per layer, the pooler.
        assert_eq!(spec.sites.len(), 1 + 8 * 2 + 1);
        let site = |name: &str| spec.site(spec.find_site(name).unwrap_or_else(|| panic!("{name}")));
        let q = site("encoder.layer.1.attention.self.query");
        assert_eq!(q.layer, Some(1));
        assert!(q.has_bias);
        assert_eq!(
            q.kind,
            SiteKind::Linear {
                in_features: 32,
                out_features: 32,
                fan_in_fan_out: false
            }
        );
        assert_eq!(
            site("encoder.layer.0.intermediate.dense").kind,
            SiteKind::Linear {
                in_features: 32,
                out_features: 64,
                fan_in_fan_out: false
            }
        );
        assert_eq!(
            site("encoder.layer.0.output.dense").kind,
            SiteKind::Linear {
                in_features: 64,
                out_features: 32,
                fan_in_fan_out: false
            }
        );
        for name in [
            "encoder.layer.0.attention.self.key",
            "encoder.layer.0.attention.self.value",
            "encoder.layer.0.attention.output.dense",
        ] {
            assert_eq!(site(name).layer, Some(0));
        }
        for name in [
            "encoder.layer.1.attention.output.LayerNorm",
            "encoder.layer.1.output.LayerNorm",
        ] {
            assert_eq!(site(name).kind, SiteKind::Norm { dim: 32 });
            assert_eq!(site(name).layer, Some(1));
        }
        let emb_norm = site("embeddings.LayerNorm");
        assert_eq!((emb_norm.layer, emb_norm.has_bias), (None, true));
        let pooler = site("pooler.dense");
        assert_eq!(pooler.layer, None);
        assert!(matches!(pooler.kind, SiteKind::Linear { .. }));
        // Every linear site has its frozen projection.
        for (id, s) in spec.iter_sites() {
            let is_linear = matches!(s.kind, SiteKind::Linear { .. });
            assert_eq!(m.frozen_linear(id).is_some(), is_linear, "{}", s.name);
        }
        let total: usize = m.parameters().iter().map(|(_, t)| t.elem_count()).sum();
        assert_eq!(spec.num_parameters, total);
        assert!(m.parameters().iter().all(|(n, _)| !n.starts_with("bert.")));
        assert!(m
            .parameters()
            .iter()
            .any(|(n, _)| n == "embeddings.token_type_embeddings.weight"));
        assert!(m.lm_head().is_none());
        assert!(m
            .logits(&Tensor::zeros((1, 32), DType::F32, m.device()).unwrap())
            .is_err());
        assert_eq!(m.pad_token_id(), Some(0));
        assert_eq!(spec.name_or_path, "tiny-bert");
    }

    #[test]
    fn tiny_norms_get_norm_scales() {
        let w = tiny_weights(0);
        let g = w
            .get_any("encoder.layer.0.output.LayerNorm.weight")
            .unwrap();
        let mean = g.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((mean - 1.0).abs() < 0.2, "{mean}");
        assert!(!w.names().any(|n| n.contains("layernorm")));
    }

    #[test]
    fn padding_does_not_change_real_positions() {
        let m = tiny(1);
        let dev = m.device().clone();
        let ids = Tensor::new(&[[2u32, 8, 9, 10, 11], [2, 8, 9, 0, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]], &dev).unwrap();
        let types = Tensor::new(&[[0u32, 0, 1, 1, 1], [0, 1, 1, 0, 0]], &dev).unwrap();
        let batch = Batch::new(ids, mask)
            .unwrap()
            .with_token_type_ids(types)
            .unwrap();
        let padded = m.forward(&batch, &NoHooks).unwrap();
        let single = Batch::single(&[2, 8, 9], &dev)
            .unwrap()
            .with_token_type_ids(Tensor::new(&[[0u32, 1, 1]], &dev).unwrap())
            .unwrap();
        let short = m.forward(&single, &NoHooks).unwrap();
        let row = padded
            .hidden
            .narrow(0, 1, 1)
            .unwrap()
            .narrow(1, 0, 3)
            .unwrap();
        assert!(max_diff(&row, &short.hidden) < 1e-5);
        // The pooled output of the padded row equals the unpadded one's.
        let pooled = m
            .pooled(&padded, &batch, &NoHooks)
            .unwrap()
            .narrow(0, 1, 1)
            .unwrap();
        assert!(max_diff(&pooled, &m.pooled(&short, &single, &NoHooks).unwrap()) < 1e-5);
        // Bidirectional: the first token's state depends on later tokens.
        let other = m
            .forward(&Batch::single(&[2, 8, 7], &dev).unwrap(), &NoHooks)
            .unwrap();
        let plain = m
            .forward(&Batch::single(&[2, 8, 9], &dev).unwrap(), &NoHooks)
            .unwrap();
        let first = |o: &Output| o.hidden.narrow(1, 0, 1).unwrap();
        assert!(max_diff(&first(&other), &first(&plain)) > 1e-3);
    }

    #[test]
    fn token_types_change_the_output() {
        let m = tiny(2);
        let dev = m.device().clone();
        let ids = [2u32, 5, 6, 3];
        let plain = m
            .forward(&Batch::single(&ids, &dev).unwrap(), &NoHooks)
            .unwrap();
        let zeros = Batch::single(&ids, &dev)
            .unwrap()
            .with_token_type_ids(Tensor::zeros((1, 4), DType::U32, &dev).unwrap())
            .unwrap();
        let explicit = m.forward(&zeros, &NoHooks).unwrap();
        assert_eq!(max_diff(&plain.hidden, &explicit.hidden), 0.0);
        let pair = Batch::single(&ids, &dev)
            .unwrap()
            .with_token_type_ids(Tensor::new(&[[0u32, 0, 1, 1]], &dev).unwrap())
            .unwrap();
        let segmented = m.forward(&pair, &NoHooks).unwrap();
        assert!(max_diff(&plain.hidden, &segmented.hidden) > 1e-3);
    }

    #[test]
    fn pooled_is_tanh_of_the_pooler_over_position_zero() {
        let m = tiny(3);
        let dev = m.device().clone();
        let ids = Tensor::new(&[[2u32, 8, 9, 3], [2, 4, 3, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1., 1.], [1., 1., 1., 0.]], &dev).unwrap();
        let batch = Batch::new(ids, mask).unwrap();
        let out = m.forward(&batch, &NoHooks).unwrap();
        let pooled = m.pooled(&out, &batch, &NoHooks).unwrap();
        assert_eq!(pooled.dims(), &[2, 32]);
        let pooler = m.pooler.as_ref().unwrap();
        let first = out.hidden.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        let expected = pooler.linear.forward(&first).unwrap().tanh().unwrap();
        assert!(max_diff(&pooled, &expected) < 1e-6);
        let values = pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.abs() < 1.0));
    }

    #[test]
    fn checkpoint_without_pooler_loads_and_pooled_errors() {
        let w = without(&tiny_weights(4), |n| n.starts_with("pooler."));
        let m = Bert::from_weights(&tiny_config(), &w, "no-pooler").unwrap();
        assert!(!m.has_pooler());
        assert!(m.spec().find_site("pooler.dense").is_none());
        assert_eq!(m.spec().sites.len(), 17);
        let batch = Batch::single(&[2, 5, 3], m.device()).unwrap();
        let out = m.forward(&batch, &NoHooks).unwrap();
        // The encoder is the same as with a pooler.
        let full = tiny(4).forward(&batch, &NoHooks).unwrap();
        assert_eq!(max_diff(&out.hidden, &full.hidden), 0.0);
        let err = m.pooled(&out, &batch, &NoHooks).unwrap_err().to_string();
        assert!(
            err.contains("no pooler") && err.contains("add_pooling_layer"),
            "{err}"
        );
    }

    #[test]
    fn task_model_checkpoints_with_bert_prefix_load_the_same() {
        let base = tiny_weights(5);
        let mut tensors: std::collections::HashMap<String, Tensor> = base
            .names()
            .map(|n| (format!("bert.{n}"), base.get_any(n).unwrap()))
            .collect();
        // A task head's tensors are not read.
        tensors.insert(
            "classifier.weight".into(),
            Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap(),
        );
        let prefixed = WeightMap::new(tensors, "prefixed");
        let m = Bert::from_weights(&tiny_config(), &prefixed, "prefixed").unwrap();
        let batch = Batch::single(&[2, 5, 6, 3], m.device()).unwrap();
        let a = m.forward(&batch, &NoHooks).unwrap().hidden;
        let b = tiny(5).forward(&batch, &NoHooks).unwrap().hidden;
        assert_eq!(max_diff(&a, &b), 0.0);
        assert!(m.parameters().iter().all(|(n, _)| !n.starts_with("bert.")));
        assert!(m
            .spec()
            .find_site("encoder.layer.0.attention.self.query")
            .is_some());
    }

    #[test]
    fn legacy_gamma_beta_names_load() {
        let base = tiny_weights(6);
        let legacy = base.clone().rename(|k| {
            k.replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta")
        });
        let m = Bert::from_weights(&tiny_config(), &legacy, "legacy").unwrap();
        let batch = Batch::single(&[2, 5, 3], m.device()).unwrap();
        let a = m.forward(&batch, &NoHooks).unwrap().hidden;
        let b = tiny(6).forward(&batch, &NoHooks).unwrap().hidden;
        assert_eq!(max_diff(&a, &b), 0.0);
    }

    #[test]
    fn missing_tensor_is_named() {
        let w = without(&tiny_weights(0), |n| {
            n == "encoder.layer.1.output.LayerNorm.bias"
        });
        let err = Bert::from_weights(&tiny_config(), &w, "x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("encoder.layer.1.output.LayerNorm.bias"),
            "{err}"
        );
    }

    #[test]
    fn out_of_vocabulary_ids_and_types_are_errors() {
        let m = tiny(0);
        let dev = m.device().clone();
        let batch = Batch::single(&[2, m.spec().vocab_size as u32], &dev).unwrap();
        let err = m.forward(&batch, &NoHooks).unwrap_err().to_string();
        assert!(err.contains("vocabulary") && err.contains("128"), "{err}");
        let batch = Batch::single(&[2, 5], &dev)
            .unwrap()
            .with_token_type_ids(Tensor::new(&[[0u32, 2]], &dev).unwrap())
            .unwrap();
        let err = m.forward(&batch, &NoHooks).unwrap_err().to_string();
        assert!(err.contains("type_vocab_size"), "{err}");
        let long: Vec<u32> = (0..65).map(|i| i % 100).collect();
        let err = m
            .forward(&Batch::single(&long, &dev).unwrap(), &NoHooks)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_position_embeddings"), "{err}");
    }

    #[test]
    fn unsupported_configs_are_refused_by_name() {
        let w = tiny_weights(0);
        let mut cfg = tiny_config();
        cfg.is_decoder = true;
        let err = Bert::from_weights(&cfg, &w, "x").unwrap_err().to_string();
        assert!(err.contains("is_decoder"), "{err}");
        let mut cfg = tiny_config();
        cfg.position_embedding_type = "relative_key".into();
        let err = Bert::from_weights(&cfg, &w, "x").unwrap_err().to_string();
        assert!(err.contains("relative_key"), "{err}");
        let mut cfg = tiny_config();
        cfg.hidden_act = "mish".into();
        let err = Bert::from_weights(&cfg, &w, "x").unwrap_err().to_string();
        assert!(err.contains("mish"), "{err}");
    }

    #[test]
    fn virtual_tokens_get_token_type_zero_and_the_first_positions() {
        /// Prepends one fixed virtual token.
        struct OneVirtual(Tensor);
        impl Hooks for OneVirtual {
            fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> peft_core::Result<Tensor> {
                ctx.prepend_virtual_tokens(1)?;
                let (b, _, h) = x.dims3()?;
                let v = self.0.reshape((1, 1, h))?.broadcast_as((b, 1, h))?;
                Ok(Tensor::cat(&[&v, &x], 1)?)
            }
        }
        let m = tiny(7);
        let dev = m.device().clone();
        // Virtual token = the word embedding of id 2: the output equals the plain sequence [2, ...] with the
        // same types (the virtual token's type is 0, as id 2's is).
        let hooks = OneVirtual(
            m.embed_tokens(&Tensor::new(&[2u32], &dev).unwrap())
                .unwrap(),
        );
        let batch = Batch::single(&[5, 6, 3], &dev)
            .unwrap()
            .with_token_type_ids(Tensor::new(&[[0u32, 1, 1]], &dev).unwrap())
            .unwrap();
        let out = m.forward(&batch, &hooks).unwrap();
        assert_eq!(out.virtual_tokens, 1);
        let plain = Batch::single(&[2, 5, 6, 3], &dev)
            .unwrap()
            .with_token_type_ids(Tensor::new(&[[0u32, 0, 1, 1]], &dev).unwrap())
            .unwrap();
        let reference = m.forward(&plain, &NoHooks).unwrap();
        assert!(max_diff(&out.hidden, &reference.hidden) < 1e-5);
        // The pooler reads position 0: the virtual token.
        let pooled = m.pooled(&out, &batch, &NoHooks).unwrap();
        assert!(max_diff(&pooled, &m.pooled(&reference, &plain, &NoHooks).unwrap()) < 1e-5);
    }
}
