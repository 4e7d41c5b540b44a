//! The built prefix: the [`Hooks::attention_prefix`] site, and HF PEFT's file format (`prompt_embeddings`,
//! always folded).
//!
//! ```
//! use peft_core::method::{InitCtx, PeftMethod};
//! use peft_prefix::PrefixTuningConfig;
//! use rand::SeedableRng;
//! let model = peft_models::tiny::gpt2(0); // 2 layers, width 32
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! // Trained through a projection MLP, saved folded: 3 rows of 2 layers x (key + value) x 32.
//! let adapter = PrefixTuningConfig::with_projection(3, Some(8)).build(&mut init).unwrap();
//! let (key, rows) = &adapter.tensors().unwrap()[0];
//! assert_eq!((key.as_str(), rows.dims()), ("prompt_embeddings", &[3, 2 * 2 * 32][..]));
//! ```

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard};

use candle_core::{DType, Tensor, Var};
use peft_core::hooks::{Ctx, Hooks, KvPrefix};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::prompt_learning::decoder_prefix_slot;
use peft_core::spec::SiteId;
use peft_core::{PeftError, Result};

use crate::config::PrefixTuningConfig;
use crate::encoder::{EncoderShape, PrefixEncoder, PROMPT_KEY};
use crate::layout::{layer_columns, split_layer};

/// A built prefix-tuning (or P-tuning v2) adapter.
#[derive(Debug)]
pub struct PrefixTuning {
    config: PrefixTuningConfig,
    /// Sizes of the prefix, from the resolved config.
    shape: EncoderShape,
    // Behind a lock because loading a folded tensor into a projected encoder replaces it by the folded form
    // (`load_tensors` takes `&self`).
    encoder: RwLock<PrefixEncoder>,
}

impl PrefixTuning {
    /// An adapter over `encoder` of sizes `shape` for a resolved `config` (every model-derived field filled in).
    pub(crate) fn new(
        config: PrefixTuningConfig,
        shape: EncoderShape,
        encoder: PrefixEncoder,
    ) -> Self {
        PrefixTuning {
            config,
            shape,
            encoder: RwLock::new(encoder),
        }
    }

    fn encoder(&self) -> RwLockReadGuard<'_, PrefixEncoder> {
        // A panic while holding the lock cannot leave the encoder half-replaced: the write is one assignment.
        self.encoder.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the prefix is held folded (`[num_virtual_tokens, num_layers * 2 * token_dim]`) rather than as
    /// the projection MLP.
    pub fn is_folded(&self) -> bool {
        self.encoder().is_folded()
    }

    /// The flat prefix rows `[num_virtual_tokens, num_layers * 2 * token_dim]` (the projection's output when
    /// projected), as saved.
    pub fn prefix_rows(&self) -> Result<Tensor> {
        self.encoder().rows()
    }

    fn num_transformer_submodules(&self) -> usize {
        self.config
            .prompt_learning
            .num_transformer_submodules
            .unwrap_or(1)
    }
}

impl Hooks for PrefixTuning {
    fn attention_prefix(&self, layer: usize, ctx: &Ctx) -> Result<Option<KvPrefix>> {
        let (num_layers, token_dim) = (self.shape.num_layers, self.shape.token_dim);
        if layer >= num_layers {
            return Err(PeftError::Config(format!(
                "the prefix was built for {num_layers} layers and was asked for layer {layer}"
            )));
        }
        let batch = ctx.attention_mask.dim(0)?;
        let heads = self.config.prompt_learning.num_attention_heads.unwrap_or(1);
        let slot = decoder_prefix_slot(layer, num_layers, self.num_transformer_submodules());
        let (start, len) = layer_columns(slot, token_dim);
        let columns = self.encoder().columns(start, len)?;
        Ok(Some(split_layer(
            &columns,
            heads,
            token_dim / heads,
            batch,
        )?))
    }

    /// Only the attention's keys and values gain a prefix: every projection and norm runs as frozen.
    fn touches(&self, _site: SiteId) -> bool {
        false
    }
}

impl Adapter for PrefixTuning {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.encoder().named_vars()
    }

    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![(PROMPT_KEY.to_string(), self.prefix_rows()?)])
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let t = tensors.get(PROMPT_KEY).ok_or_else(|| {
            let keys: Vec<&String> = tensors.keys().collect();
            PeftError::Config(format!(
                "a prefix-tuning adapter holds `{PROMPT_KEY}`; this file has {keys:?}"
            ))
        })?;
        let shape = self.shape;
        let expected = shape.folded_dims();
        if t.dims() != expected {
            return Err(PeftError::ShapeMismatch {
                what: PROMPT_KEY.into(),
                expected_from: format!(
                    "the model ({} virtual tokens x {} layers x 2 x token_dim {})",
                    shape.num_virtual_tokens, shape.num_layers, shape.token_dim
                ),
                expected: expected.to_vec(),
                got_from: "the adapter file".into(),
                got: t.dims().to_vec(),
            });
        }
        let t = t.to_dtype(DType::F32)?;
        let mut encoder = self.encoder.write().unwrap_or_else(|e| e.into_inner());
        match &*encoder {
            PrefixEncoder::Folded { embedding } => embedding.set(&t)?,
            // A saved prefix is the projection's output: the MLP cannot be recovered from it, so the adapter
            // continues from the folded rows, as HF PEFT does when it loads such a prefix for inference.
            PrefixEncoder::Projected { .. } => {
                *encoder = PrefixEncoder::Folded {
                    embedding: Var::from_tensor(&t)?,
                };
            }
        }
        Ok(())
    }

    fn notes(&self) -> Vec<String> {
        if self.num_transformer_submodules() != 2 {
            return Vec::new();
        }
        vec![format!(
            "encoder-decoder: the prefixes feed the decoder's self-attention only (decoder layer i takes prefix \
             slot 2i mod {}, as HF PEFT arranges them); the encoder's self-attention and the cross-attention get \
             none",
            self.shape.num_layers
        )]
    }
}
