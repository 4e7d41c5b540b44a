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
use peft_core::spec::{ModelSpec, Role, SiteId};
use peft_core::PeftError;
use serde_json::Value;

pub use config::BertConfig;

use crate::attention::{attend, split_heads, PrefixMasks};
use crate::config_checks::{check_eps, check_layer_count, check_sizes};
use crate::embedding::lookup;
use crate::error::{ModelError, Result};
use crate::folder::parse_config;
use crate::parts::{
    linear_at, linear_at_mut, projection_fields, Activation, LayerNorm, Loader, Projection,
};
use crate::tensor_usage::Allowed;
use crate::weights::WeightMap;

/// Tensors a BERT checkpoint may hold that the encoder does not read.
pub const ALLOWED_UNUSED: &[Allowed] = &[
    Allowed::new(
        "embeddings.position_ids",
        "the integer buffer 0..max_position_embeddings transformers before 4.31 saved (all-MiniLM-L6-v2 holds it)",
    ),
    Allowed::new(
        "embeddings.token_type_ids",
        "the integer buffer of default segment ids some transformers versions saved",
    ),
    Allowed::new(
        "cls.*",
        "the MLM / next-sentence heads of BertForPreTraining and BertForMaskedLM: no MLM head is loaded",
    ),
    Allowed::new(
        "classifier.*",
        "the task head of BertForSequenceClassification / BertForTokenClassification: a method trains its own",
    ),
    Allowed::new(
        "qa_outputs.*",
        "the span head of BertForQuestionAnswering, which this encoder does not have",
    ),
];

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

projection_fields!(Layer: [query, key, value, attn_out, intermediate, output]);

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
        check_sizes(&[
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", h),
            ("num_attention_heads", heads),
            ("intermediate_size", cfg.intermediate_size),
            ("max_position_embeddings", cfg.max_position_embeddings),
            ("type_vocab_size", cfg.type_vocab_size),
        ])?;
        if h % heads != 0 {
            return Err(ModelError::Config(format!(
                "BERT hidden_size {h} is not divisible by num_attention_heads {heads}"
            )));
        }
        check_eps("layer_norm_eps", cfg.layer_norm_eps)?;
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
        check_layer_count("num_hidden_layers", layers, &weights, "encoder.layer")?;
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
        let embeddings_norm = ld.layer_norm(
            Role::EmbeddingNorm,
            "embeddings.LayerNorm",
            None,
            h,
            true,
            eps,
        )?;
        let inner = cfg.intermediate_size;
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let p = format!("encoder.layer.{i}");
            let a = format!("{p}.attention");
            let l = Some(i);
            blocks.push(Layer {
                query: ld.linear(Role::Query, &format!("{a}.self.query"), l, h, h, true)?,
                key: ld.linear(Role::Key, &format!("{a}.self.key"), l, h, h, true)?,
                value: ld.linear(Role::Value, &format!("{a}.self.value"), l, h, h, true)?,
                attn_out: ld.linear(
                    Role::AttentionOutput,
                    &format!("{a}.output.dense"),
                    l,
                    h,
                    h,
                    true,
                )?,
                // Post-LN: the norm after the attention's residual.
                attn_norm: ld.layer_norm(
                    Role::AttentionNorm,
                    &format!("{a}.output.LayerNorm"),
                    l,
                    h,
                    true,
                    eps,
                )?,
                intermediate: ld.linear(
                    Role::MlpUp,
                    &format!("{p}.intermediate.dense"),
                    l,
                    h,
                    inner,
                    true,
                )?,
                output: ld.linear(
                    Role::MlpDown,
                    &format!("{p}.output.dense"),
                    l,
                    inner,
                    h,
                    true,
                )?,
                out_norm: ld.layer_norm(
                    Role::MlpNorm,
                    &format!("{p}.output.LayerNorm"),
                    l,
                    h,
                    true,
                    eps,
                )?,
            });
        }
        let pooler = if weights.contains("pooler.dense.weight") {
            Some(ld.linear(Role::Pooler, "pooler.dense", None, h, h, true)?)
        } else {
            None
        };
        let (spec, parameters) = ld.finish(ALLOWED_UNUSED)?;
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
        x = hooks.layers(self.layers.len(), x, &mut |i, x| {
            Ok(self.layer_forward(&self.layers[i], x, &masks, i, hooks)?)
        })?;
        Ok(Output {
            hidden: x,
            virtual_tokens,
        })
    }

    /// Every projection of the model: the layers', then the pooler where there is one.
    fn projections(&self) -> impl Iterator<Item = &Projection> {
        let layers = self.layers.iter().flat_map(Layer::projections);
        layers.chain(self.pooler.as_ref())
    }

    /// [`Bert::projections`], mutably.
    fn projections_mut(&mut self) -> impl Iterator<Item = &mut Projection> {
        let layers = self.layers.iter_mut().flat_map(Layer::projections_mut);
        layers.chain(self.pooler.as_mut())
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

    fn supports_gradient_checkpointing(&self) -> bool {
        true
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
/// returns the model and its eos token id (none: BERT does not generate).
pub(crate) fn from_folder(
    config: Value,
    config_path: &Path,
    weights: &WeightMap,
    name: &str,
) -> Result<(Box<dyn BaseModel>, Option<u32>)> {
    let cfg: BertConfig = parse_config(config_path, config)?;
    // A config error is prefixed with the config's path by the folder loader.
    let model = Bert::from_weights(&cfg, weights, name)?;
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
mod tests;
