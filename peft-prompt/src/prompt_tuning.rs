//! Prompt tuning: `num_virtual_tokens` trainable embeddings prepended to the input embeddings. Virtual tokens
//! get attention-mask 1 and no loss, as HF PEFT does; saved as `prompt_embeddings`
//! `[num_virtual_tokens * num_transformer_submodules, token_dim]`.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use peft_core::hooks::{Ctx, Hooks};
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::prompt_learning::{default_task_type, transformer_submodules};
use peft_core::{PeftError, Result};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// How the prompt embeddings start (HF PEFT's `PromptTuningInit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PromptTuningInit {
    /// Standard normal values, as `torch.nn.Embedding` initialises.
    #[default]
    #[serde(rename = "RANDOM")]
    Random,
    /// The token embeddings of `prompt_tuning_init_text`, repeated or truncated to the prompt length.
    #[serde(rename = "TEXT")]
    Text,
    /// The embeddings of tokens sampled uniformly from the vocabulary.
    #[serde(rename = "SAMPLE_VOCAB")]
    SampleVocab,
}

/// HF PEFT's `PromptTuningConfig`: same field names, defaults and meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptTuningConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Number of virtual tokens (required).
    pub num_virtual_tokens: usize,
    /// Embedding dimension; filled from the model (must equal its hidden size).
    #[serde(default)]
    pub token_dim: Option<usize>,
    /// 1 for decoder-only models (2 for encoder-decoder); filled from the model.
    #[serde(default)]
    pub num_transformer_submodules: Option<usize>,
    /// Attention heads of the model; filled from the model.
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    /// Layers of the model; filled from the model.
    #[serde(default)]
    pub num_layers: Option<usize>,
    /// Initialisation: `RANDOM` (default), `TEXT` or `SAMPLE_VOCAB`.
    #[serde(default)]
    pub prompt_tuning_init: PromptTuningInit,
    /// Text whose token embeddings initialise the prompt (`TEXT` init).
    #[serde(default)]
    pub prompt_tuning_init_text: Option<String>,
    /// Tokenizer used for `TEXT` init; HF PEFT requires it, here the model's own tokenizer is used.
    #[serde(default)]
    pub tokenizer_name_or_path: Option<String>,
    /// Arguments HF PEFT passes to its tokenizer; kept for round trips.
    #[serde(default)]
    pub tokenizer_kwargs: Option<serde_json::Value>,
    /// Extra modules HF PEFT trains and saves; not supported here (must be empty).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

impl PromptTuningConfig {
    /// A config with `n` virtual tokens and the given initialisation; the task type is the model's default when
    /// built.
    pub fn new(n: usize, init: PromptTuningInit) -> Self {
        PromptTuningConfig {
            common: CommonConfig::default(),
            num_virtual_tokens: n,
            token_dim: None,
            num_transformer_submodules: None,
            num_attention_heads: None,
            num_layers: None,
            prompt_tuning_init: init,
            prompt_tuning_init_text: None,
            tokenizer_name_or_path: None,
            tokenizer_kwargs: None,
            modules_to_save: None,
        }
    }

    /// Total virtual tokens (`num_virtual_tokens x num_transformer_submodules`).
    pub fn total_virtual_tokens(&self) -> usize {
        self.num_virtual_tokens * self.num_transformer_submodules.unwrap_or(1)
    }

    /// Initial prompt values `[total, dim]` as the config asks.
    fn initial_prompt(&self, init: &mut InitCtx, total: usize, dim: usize) -> Result<Tensor> {
        let device = init.model.device().clone();
        let from_ids = |ids: Vec<u32>| -> Result<Tensor> {
            let ids = Tensor::new(ids, &device)?;
            Ok(init.model.embed_tokens(&ids)?.to_dtype(DType::F32)?)
        };
        if self.common.inference_mode {
            // HF PEFT skips initialisation for an adapter loaded for inference: its tensors come from the file.
            return Ok(Tensor::zeros((total, dim), DType::F32, &device)?);
        }
        match self.prompt_tuning_init {
            PromptTuningInit::Random => {
                let values: Vec<f32> = (0..total * dim)
                    .map(|_| StandardNormal.sample(&mut init.rng))
                    .collect();
                Ok(Tensor::from_vec(values, (total, dim), &device)?)
            }
            PromptTuningInit::SampleVocab => {
                let vocab = init.model.spec().vocab_size as u32;
                let ids = (0..total)
                    .map(|_| init.rng.random_range(0..vocab))
                    .collect();
                from_ids(ids)
            }
            PromptTuningInit::Text => {
                let text = self.prompt_tuning_init_text.as_deref().ok_or_else(|| {
                    PeftError::Config(
                        "prompt_tuning_init = \"TEXT\" needs prompt_tuning_init_text".into(),
                    )
                })?;
                let tokenizer = init.tokenizer.ok_or_else(|| {
                    PeftError::Config(
                        "prompt_tuning_init = \"TEXT\" needs the model's tokenizer, and this model has none \
                         (add tokenizer.json to the model folder, or use RANDOM / SAMPLE_VOCAB)"
                            .into(),
                    )
                })?;
                // HF PEFT tokenizes with the tokenizer's defaults, special tokens included.
                let enc = tokenizer
                    .encode(text, true)
                    .map_err(|e| PeftError::Tokenizer(e.to_string()))?;
                let ids = enc.get_ids();
                if ids.is_empty() {
                    return Err(PeftError::Config(
                        "prompt_tuning_init_text tokenizes to no tokens".into(),
                    ));
                }
                from_ids(ids.iter().copied().cycle().take(total).collect())
            }
        }
    }
}

#[typetag::serde(name = "PROMPT_TUNING")]
impl PeftMethod for PromptTuningConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        let spec = init.model.spec();
        if self.num_virtual_tokens == 0 {
            return Err(PeftError::Config(
                "num_virtual_tokens must be at least 1".into(),
            ));
        }
        if let Some(dim) = self.token_dim {
            if dim != spec.hidden_size {
                return Err(PeftError::ShapeMismatch {
                    what: "token_dim".into(),
                    expected_from: format!("model {} (hidden size)", spec.name_or_path),
                    expected: vec![spec.hidden_size],
                    got_from: "the prompt-tuning config".into(),
                    got: vec![dim],
                });
            }
        }
        // HF PEFT lists the classification head of a SEQ_CLS adapter here; the head travels as WithClassifier.
        peft_core::head::check_modules_to_save(
            self.modules_to_save.as_ref(),
            self.common.task_type.as_deref(),
            "prompt tuning",
        )?;
        let mut config = self.clone();
        config.token_dim = Some(spec.hidden_size);
        if config.common.task_type.is_none() {
            config.common.task_type = Some(default_task_type(init.model).into());
        }
        config.num_transformer_submodules = Some(transformer_submodules(
            spec,
            self.num_transformer_submodules,
            config.common.task_type.as_deref(),
        )?);
        config.num_attention_heads = Some(spec.num_heads);
        config.num_layers = Some(spec.num_layers);
        if config.prompt_tuning_init == PromptTuningInit::Text
            && config.tokenizer_name_or_path.is_none()
        {
            config.tokenizer_name_or_path = Some(spec.name_or_path.clone());
        }
        let total = config.total_virtual_tokens();
        let dim = spec.hidden_size;
        let values = config.initial_prompt(init, total, dim)?;
        Ok(Box::new(PromptTuning {
            embedding: Var::from_tensor(&values)?,
            config,
        }))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn with_common(&self, common: CommonConfig) -> Box<dyn PeftMethod> {
        Box::new(PromptTuningConfig {
            common,
            ..self.clone()
        })
    }

    fn is_prompt_learning(&self) -> bool {
        true
    }

    fn size_knob(&self) -> Option<&'static str> {
        Some("num_virtual_tokens")
    }

    fn with_size(
        &self,
        size: usize,
        _spec: &peft_core::spec::ModelSpec,
    ) -> Option<Box<dyn PeftMethod>> {
        Some(Box::new(Self {
            num_virtual_tokens: size.max(1),
            ..self.clone()
        }))
    }
}

/// A built prompt: `[total_virtual_tokens, token_dim]` trainable embeddings.
#[derive(Debug)]
pub struct PromptTuning {
    config: PromptTuningConfig,
    embedding: Var,
}

impl PromptTuning {
    /// The prompt embeddings.
    pub fn embeddings(&self) -> &Tensor {
        self.embedding.as_tensor()
    }
}

/// The key HF PEFT saves prompt embeddings under.
const PROMPT_KEY: &str = "prompt_embeddings";

impl Hooks for PromptTuning {
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (b, _, h) = x.dims3()?;
        // An encoder-decoder adapter holds a second set of rows that HF PEFT never feeds (it prepends only
        // the first `num_virtual_tokens` to the encoder).
        let n = self.config.num_virtual_tokens;
        let prompt = peft_core::grad::param(&self.embedding)
            .narrow(0, 0, n)?
            .to_dtype(x.dtype())?
            .unsqueeze(0)?
            .broadcast_as((b, n, h))?;
        ctx.prepend_virtual_tokens(n)?;
        Ok(Tensor::cat(&[&prompt, &x], 1)?)
    }
}

impl Adapter for PromptTuning {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        vec![(PROMPT_KEY.to_string(), self.embedding.clone())]
    }

    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![(
            PROMPT_KEY.to_string(),
            self.embedding.as_tensor().clone(),
        )])
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let t = tensors.get(PROMPT_KEY).ok_or_else(|| {
            let keys: Vec<&String> = tensors.keys().collect();
            PeftError::Config(format!(
                "a prompt-tuning adapter holds `{PROMPT_KEY}`; this file has {keys:?}"
            ))
        })?;
        if t.dims() != self.embedding.dims() {
            return Err(PeftError::ShapeMismatch {
                what: PROMPT_KEY.into(),
                expected_from: format!(
                    "the model (hidden {}, {} virtual tokens)",
                    self.config.token_dim.unwrap_or(0),
                    self.config.total_virtual_tokens()
                ),
                expected: self.embedding.dims().to_vec(),
                got_from: "the adapter file".into(),
                got: t.dims().to_vec(),
            });
        }
        self.embedding.set(&t.to_dtype(DType::F32)?)?;
        Ok(())
    }
}
