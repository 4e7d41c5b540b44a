//! HF PEFT's `PrefixTuningConfig` (`peft_type = "PREFIX_TUNING"`): field names, defaults and the way the
//! model-derived fields are filled in, grouped-query attention included.
//!
//! ```
//! use peft_core::model::BaseModel;
//! use peft_prefix::PrefixTuningConfig;
//! let model = peft_models::tiny::llama(0); // 2 layers, 2 key/value heads of dimension 8
//! let resolved = PrefixTuningConfig::p_tuning_v2(5).resolved_for(model.spec()).unwrap();
//! let shared = &resolved.prompt_learning;
//! assert_eq!((shared.token_dim, shared.num_attention_heads, shared.num_layers), (Some(16), Some(2), Some(2)));
//! assert_eq!(resolved.trainable_parameters(), 5 * 2 * 2 * 16);
//! ```

use candle_core::Device;
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::prompt_learning::{default_task_type_of, PromptLearningConfig};
use peft_core::spec::{ModelSpec, SiteKind};
use peft_core::{PeftError, Result};
use serde::{Deserialize, Serialize};

use crate::adapter::PrefixTuning;
use crate::encoder::{EncoderShape, PrefixEncoder, Start};

/// HF PEFT's `init_weights` of prefix tuning: unset (random) or `"zero"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrefixInit {
    /// The prefix (or, with `prefix_projection`, the last projection layer) starts at zero.
    #[serde(rename = "zero")]
    Zero,
}

/// HF PEFT's `PrefixTuningConfig`: same field names, defaults and meaning. P-tuning v2 is this method with
/// `prefix_projection = false` (see [`PrefixTuningConfig::p_tuning_v2`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixTuningConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Fields every HF PEFT prompt-learning config has: `num_virtual_tokens` (required) prefix positions in
    /// front of every layer's keys and values; filled from the model as HF PEFT does, `token_dim` the key/value
    /// width `num_key_value_heads * head_dim` (the hidden size without grouped-query attention) and
    /// `num_attention_heads` the key/value heads.
    #[serde(flatten)]
    pub prompt_learning: PromptLearningConfig,
    /// Hidden size of the projection MLP; defaults to `token_dim` (filled at build time, as HF PEFT does).
    #[serde(default)]
    pub encoder_hidden_size: Option<usize>,
    /// Whether the prefix comes out of an MLP over a small embedding while training (default false).
    #[serde(default)]
    pub prefix_projection: bool,
    /// Unset: random initialisation; `"zero"`: the prefix (with projection: the last layer) starts at zero.
    #[serde(default)]
    pub init_weights: Option<PrefixInit>,
    /// Extra modules HF PEFT trains and saves; not supported here (must be unset). A trained classification
    /// head comes from `peft_core::head::WithClassifier` instead.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

impl PrefixTuningConfig {
    /// Prefix tuning with `n` virtual tokens, no projection; the task type is the model's default when built
    /// (`CAUSAL_LM` on a decoder, `SEQ_2_SEQ_LM` on an encoder-decoder).
    pub fn new(n: usize) -> Self {
        PrefixTuningConfig {
            common: CommonConfig::default(),
            prompt_learning: PromptLearningConfig::new(n),
            encoder_hidden_size: None,
            prefix_projection: false,
            init_weights: None,
            modules_to_save: None,
        }
    }

    /// Prefix tuning as Li & Liang (2021) train it: the prefix comes out of a two-layer MLP
    /// (`encoder_hidden_size` wide, `token_dim` when `None`) over `n` embeddings; saved folded.
    pub fn with_projection(n: usize, encoder_hidden_size: Option<usize>) -> Self {
        PrefixTuningConfig {
            prefix_projection: true,
            encoder_hidden_size,
            ..Self::new(n)
        }
    }

    /// P-tuning v2 (Liu et al., 2022): trainable key/value prompts at every layer, without reparameterisation.
    /// HF PEFT has no separate type for it: it is `PREFIX_TUNING` with `prefix_projection = false`, so an
    /// adapter saved from this config is an ordinary HF PEFT prefix-tuning adapter.
    pub fn p_tuning_v2(num_virtual_tokens: usize) -> Self {
        Self::new(num_virtual_tokens)
    }

    /// This config with the model-derived fields filled in for `spec`, checked against what the model's
    /// attention can take.
    pub fn resolved_for(&self, spec: &ModelSpec) -> Result<PrefixTuningConfig> {
        let declared = &self.prompt_learning;
        declared.check_num_virtual_tokens()?;
        // HF PEFT lists the classification head of a SEQ_CLS adapter here; the head travels as WithClassifier.
        peft_core::head::check_modules_to_save(
            self.modules_to_save.as_ref(),
            self.common.task_type.as_deref(),
            "prefix tuning",
        )?;
        check_attention(spec)?;
        let width = spec.num_kv_heads * spec.head_dim;
        let model = || format!("model {}", model_name(spec));
        let mismatch =
            |what: &str, expected: usize, got: usize, how: &str| PeftError::ShapeMismatch {
                what: format!("{what} ({how})"),
                expected_from: model(),
                expected: vec![expected],
                got_from: "the prefix-tuning config".into(),
                got: vec![got],
            };
        if let Some(td) = declared.token_dim.filter(|&td| td != width) {
            return Err(mismatch(
                "token_dim",
                width,
                td,
                "key/value heads x head dim",
            ));
        }
        if let Some(h) = declared
            .num_attention_heads
            .filter(|&h| h != spec.num_kv_heads)
        {
            return Err(mismatch(
                "num_attention_heads",
                spec.num_kv_heads,
                h,
                "key/value heads",
            ));
        }
        if let Some(l) = declared.num_layers.filter(|&l| l != spec.num_layers) {
            return Err(mismatch("num_layers", spec.num_layers, l, "layers"));
        }
        if self.prefix_projection && self.encoder_hidden_size == Some(0) {
            return Err(PeftError::Config(
                "encoder_hidden_size must be at least 1 with prefix_projection".into(),
            ));
        }
        let mut config = self.clone();
        config.encoder_hidden_size = Some(self.encoder_hidden_size.unwrap_or(width));
        if config.common.task_type.is_none() {
            // A spec alone cannot tell an encoder without an LM head; the task (or HF's config) names it then.
            config.common.task_type = Some(default_task_type_of(spec, true).into());
        }
        config.prompt_learning.fill_from(
            spec,
            width,
            spec.num_kv_heads,
            config.common.task_type.as_deref(),
        )?;
        Ok(config)
    }

    /// Sizes of the encoder of a resolved config.
    fn shape(&self) -> EncoderShape {
        EncoderShape {
            num_virtual_tokens: self.prompt_learning.num_virtual_tokens,
            token_dim: self.prompt_learning.token_dim.unwrap_or(0),
            num_layers: self.prompt_learning.num_layers.unwrap_or(0),
            encoder_hidden_size: self.encoder_hidden_size.unwrap_or(0),
        }
    }

    /// Whether a built adapter holds the folded prefix: always without projection, and with projection when the
    /// config is for inference (HF PEFT then builds only the big embedding, which the saved tensor fills).
    pub fn builds_folded(&self) -> bool {
        !self.prefix_projection || self.common.inference_mode
    }

    /// Trainable parameters of an adapter built from this resolved config (HF PEFT's count for the same config).
    pub fn trainable_parameters(&self) -> usize {
        let s = self.shape();
        if self.builds_folded() {
            s.num_virtual_tokens * s.flat_width()
        } else {
            let (td, h) = (s.token_dim, s.encoder_hidden_size);
            s.num_virtual_tokens * td + (td * h + h) + (h * s.flat_width() + s.flat_width())
        }
    }
}

fn model_name(spec: &ModelSpec) -> &str {
    if spec.name_or_path.is_empty() {
        &spec.architecture
    } else {
        &spec.name_or_path
    }
}

/// Refuses a model whose attention cannot take a key/value prefix.
fn check_attention(spec: &ModelSpec) -> Result<()> {
    let problem = if spec.num_layers == 0 {
        Some("it has no layers".to_string())
    } else if spec.head_dim == 0 || spec.num_kv_heads == 0 {
        Some(format!(
            "its attention has {} key/value heads of dimension {}",
            spec.num_kv_heads, spec.head_dim
        ))
    } else if !spec.num_heads.is_multiple_of(spec.num_kv_heads) {
        Some(format!(
            "its {} query heads cannot share {} key/value heads",
            spec.num_heads, spec.num_kv_heads
        ))
    } else {
        key_projection_mismatch(spec)
    };
    match problem {
        Some(p) => Err(PeftError::Unsupported(format!(
            "model {} cannot take a key/value prefix: {p}",
            model_name(spec)
        ))),
        None => Ok(()),
    }
}

/// Where the spec names its key projections (HF's `k_proj`, or GPT-2's fused `c_attn` = query, key, value), their
/// width must be `num_kv_heads * head_dim`, the width of the prefix keys.
fn key_projection_mismatch(spec: &ModelSpec) -> Option<String> {
    let width = spec.num_kv_heads * spec.head_dim;
    spec.sites.iter().find_map(|site| {
        let SiteKind::Linear { out_features, .. } = site.kind else {
            return None;
        };
        let keys = match site.short_name() {
            "k_proj" => out_features,
            "c_attn" if out_features % 3 == 0 => out_features / 3,
            _ => return None,
        };
        (keys != width).then(|| {
            format!(
                "{} gives keys of width {keys}, but {} key/value heads x head_dim {} = {width}",
                site.name, spec.num_kv_heads, spec.head_dim
            )
        })
    })
}

#[typetag::serde(name = "PREFIX_TUNING")]
impl PeftMethod for PrefixTuningConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        let config = self.resolved_for(init.model.spec())?;
        let device: Device = init.model.device().clone();
        let start = match (config.common.inference_mode, config.init_weights) {
            (true, _) => Start::ForLoading,
            (false, Some(PrefixInit::Zero)) => Start::Zero,
            (false, None) => Start::Random,
        };
        let shape = config.shape();
        let encoder = if config.builds_folded() {
            PrefixEncoder::folded(shape, start, &mut init.rng, &device)?
        } else {
            PrefixEncoder::projected(shape, start, &mut init.rng, &device)?
        };
        Ok(Box::new(PrefixTuning::new(config, shape, encoder)))
    }

    peft_core::prompt_learning_accessors!();
}
