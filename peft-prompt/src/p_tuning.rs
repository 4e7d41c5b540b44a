//! P-tuning (Liu et al., 2021, "GPT Understands, Too"): virtual-token embeddings produced by a trainable
//! [`PromptEncoder`] (an MLP or a bidirectional LSTM over an embedding table) and prepended to the input
//! embeddings, as HF PEFT's `PromptEncoderConfig` (`peft_type` `P_TUNING`) does.
//!
//! While training, the encoder's parameters train (named as in the torch module's state dict:
//! `embedding.weight`, `mlp_head.0.weight`, ...). Saving writes what HF PEFT writes: only the encoder's output,
//! `prompt_embeddings` `[num_virtual_tokens, token_dim]`. An adapter loaded for inference (`inference_mode`
//! true, as every saved adapter is) has no encoder and prepends those embeddings directly, as HF PEFT does.
//! Trainer checkpoints keep the encoder itself (peft-core saves the trainable variables by name), so a stopped
//! run resumes exactly.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use peft_core::hooks::{Ctx, Hooks};
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::prompt_learning::{default_task_type, transformer_submodules};
use peft_core::{PeftError, Result};
use serde::{Deserialize, Serialize};

use crate::prompt_encoder::{PromptEncoder, PromptEncoderReparameterizationType};

/// HF PEFT's `PromptEncoderConfig`: same field names, defaults and meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptEncoderConfig {
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
    /// The encoder: `MLP` (default) or `LSTM`.
    #[serde(default)]
    pub encoder_reparameterization_type: PromptEncoderReparameterizationType,
    /// Hidden size of the encoder; `None` becomes `token_dim` when the adapter is built, as HF PEFT fills it.
    #[serde(default)]
    pub encoder_hidden_size: Option<usize>,
    /// LSTM layers (default 2); the MLP always has three linear layers and ignores this, as HF PEFT does.
    #[serde(default = "default_encoder_num_layers")]
    pub encoder_num_layers: usize,
    /// Dropout between LSTM layers (default 0.0). HF PEFT's MLP has no dropout; a non-zero value is refused for
    /// training an LSTM encoder here.
    #[serde(default)]
    pub encoder_dropout: f64,
    /// Extra modules HF PEFT trains and saves; not supported here (must be empty).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

fn default_encoder_num_layers() -> usize {
    2
}

impl PromptEncoderConfig {
    /// A config with `n` virtual tokens and the given encoder, every other field at HF PEFT's default.
    pub fn new(n: usize, encoder: PromptEncoderReparameterizationType) -> Self {
        PromptEncoderConfig {
            common: CommonConfig::default(),
            num_virtual_tokens: n,
            token_dim: None,
            num_transformer_submodules: None,
            num_attention_heads: None,
            num_layers: None,
            encoder_reparameterization_type: encoder,
            encoder_hidden_size: None,
            encoder_num_layers: default_encoder_num_layers(),
            encoder_dropout: 0.0,
            modules_to_save: None,
        }
    }

    /// Total virtual tokens (`num_virtual_tokens x num_transformer_submodules`).
    pub fn total_virtual_tokens(&self) -> usize {
        self.num_virtual_tokens * self.num_transformer_submodules.unwrap_or(1)
    }

    /// Refuses what cannot be built for a model of this spec, before anything is allocated.
    fn validate(&self, spec: &peft_core::spec::ModelSpec) -> Result<()> {
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
                    got_from: "the P-tuning config".into(),
                    got: vec![dim],
                });
            }
        }
        // HF PEFT lists the classification head of a SEQ_CLS adapter here; the head travels as WithClassifier.
        peft_core::head::check_modules_to_save(
            self.modules_to_save.as_ref(),
            self.common.task_type.as_deref(),
            "P-tuning",
        )?;
        if self.encoder_hidden_size == Some(0) {
            return Err(PeftError::Config(
                "encoder_hidden_size must be at least 1 (or left out: it then equals token_dim)"
                    .into(),
            ));
        }
        if !(0.0..1.0).contains(&self.encoder_dropout) {
            return Err(PeftError::Config(format!(
                "encoder_dropout must be in [0, 1), got {}",
                self.encoder_dropout
            )));
        }
        let lstm =
            self.encoder_reparameterization_type == PromptEncoderReparameterizationType::Lstm;
        if lstm && !self.common.inference_mode && self.encoder_dropout != 0.0 {
            return Err(PeftError::Unsupported(format!(
                "encoder_dropout = {} between LSTM layers is not supported here; use 0.0 (HF PEFT's default)",
                self.encoder_dropout
            )));
        }
        Ok(())
    }
}

#[typetag::serde(name = "P_TUNING")]
impl PeftMethod for PromptEncoderConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        let spec = init.model.spec();
        self.validate(spec)?;
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
        config.encoder_hidden_size = Some(self.encoder_hidden_size.unwrap_or(spec.hidden_size));
        let (total, dim) = (config.total_virtual_tokens(), spec.hidden_size);
        let device = init.model.device().clone();
        let prompt = if config.common.inference_mode {
            // HF PEFT builds no encoder for an adapter loaded for inference: the file holds its output.
            Prompt::Saved(Var::zeros((total, dim), DType::F32, &device)?)
        } else {
            Prompt::Encoder(PromptEncoder::new(
                config.encoder_reparameterization_type,
                total,
                dim,
                config.encoder_hidden_size.unwrap_or(dim),
                config.encoder_num_layers,
                &mut init.rng,
                &device,
            )?)
        };
        Ok(Box::new(PTuning { config, prompt }))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn with_common(&self, common: CommonConfig) -> Box<dyn PeftMethod> {
        Box::new(PromptEncoderConfig {
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

/// Where the virtual-token embeddings come from.
#[derive(Debug)]
enum Prompt {
    /// A trainable encoder (training).
    Encoder(PromptEncoder),
    /// Saved encoder output `[total_virtual_tokens, token_dim]` (an adapter loaded for inference).
    Saved(Var),
}

/// A built P-tuning adapter.
#[derive(Debug)]
pub struct PTuning {
    config: PromptEncoderConfig,
    prompt: Prompt,
}

/// The key HF PEFT saves the encoder's output under.
const PROMPT_KEY: &str = "prompt_embeddings";

impl PTuning {
    /// The virtual-token embeddings `[total_virtual_tokens, token_dim]` this adapter prepends (the encoder's
    /// output, or the saved one), tracked for gradients unless inside [`peft_core::grad::no_grad`].
    pub fn prompt(&self) -> Result<Tensor> {
        match &self.prompt {
            Prompt::Encoder(encoder) => encoder.forward(),
            Prompt::Saved(var) => Ok(peft_core::grad::param(var)),
        }
    }

    /// The trainable encoder, while training (`None` for an adapter loaded for inference).
    pub fn encoder(&self) -> Option<&PromptEncoder> {
        match &self.prompt {
            Prompt::Encoder(encoder) => Some(encoder),
            Prompt::Saved(_) => None,
        }
    }
}

impl Hooks for PTuning {
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (b, _, h) = x.dims3()?;
        // An encoder-decoder adapter encodes twice the virtual tokens; HF PEFT feeds the first half to the
        // encoder.
        let n = self.config.num_virtual_tokens;
        let prompt = self.prompt()?.narrow(0, 0, n)?;
        // One encoder pass for the whole batch, broadcast to every row (HF PEFT repeats one sample).
        let prompt = prompt
            .to_dtype(x.dtype())?
            .unsqueeze(0)?
            .broadcast_as((b, n, h))?;
        ctx.prepend_virtual_tokens(n)?;
        Ok(Tensor::cat(&[&prompt, &x], 1)?)
    }
}

impl Adapter for PTuning {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        match &self.prompt {
            Prompt::Encoder(encoder) => encoder.named_parameters(),
            Prompt::Saved(var) => vec![(PROMPT_KEY.to_string(), var.clone())],
        }
    }

    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let prompt = peft_core::grad::no_grad(|| self.prompt())?;
        Ok(vec![(PROMPT_KEY.to_string(), prompt.detach())])
    }

    /// An adapter loaded for inference takes `prompt_embeddings`; a training one takes the encoder's full
    /// state (torch state-dict names, see [`PromptEncoder::load_state`]).
    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        match &self.prompt {
            Prompt::Encoder(encoder) => {
                if tensors.contains_key("embedding.weight") {
                    return encoder.load_state(tensors);
                }
                Err(PeftError::Unsupported(format!(
                    "this P-tuning adapter trains a prompt encoder, and the given tensors ({:?}) hold only the \
                     encoder's output, as HF PEFT saves it: the encoder cannot be rebuilt from its output. Load \
                     the folder with load_adapter to use it (its config says inference_mode = true), or give the \
                     encoder's own state (embedding.weight, mlp_head.0.weight, ...)",
                    tensors.keys().collect::<Vec<_>>()
                )))
            }
            Prompt::Saved(var) => {
                let t = tensors.get(PROMPT_KEY).ok_or_else(|| {
                    let keys: Vec<&String> = tensors.keys().collect();
                    PeftError::Config(format!(
                        "a P-tuning adapter holds `{PROMPT_KEY}`; this file has {keys:?}"
                    ))
                })?;
                if t.dims() != var.dims() {
                    return Err(PeftError::ShapeMismatch {
                        what: PROMPT_KEY.into(),
                        expected_from: format!(
                            "the model (hidden {}, {} virtual tokens)",
                            self.config.token_dim.unwrap_or(0),
                            self.config.total_virtual_tokens()
                        ),
                        expected: var.dims().to_vec(),
                        got_from: "the adapter file".into(),
                        got: t.dims().to_vec(),
                    });
                }
                var.set(&t.to_dtype(DType::F32)?)?;
                Ok(())
            }
        }
    }
}
