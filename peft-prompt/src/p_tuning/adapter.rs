//! The built P-tuning adapter: while training, a [`PromptEncoder`] whose output is prepended to the input
//! embeddings; loaded for inference, the saved output itself. Either way it saves what HF PEFT saves, the
//! encoder's output as `prompt_embeddings`.
//!
//! ```
//! use peft_core::method::{InitCtx, PeftMethod};
//! use peft_prompt::{PromptEncoderConfig, PromptEncoderReparameterizationType};
//! use rand::SeedableRng;
//! let model = peft_models::tiny::gpt2(0); // hidden size 32
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let mut cfg = PromptEncoderConfig::new(4, PromptEncoderReparameterizationType::Mlp);
//! let training = cfg.build(&mut init).unwrap();
//! assert_eq!(training.trainable()[0].0, "embedding.weight");
//! cfg.common.inference_mode = true;
//! let loaded = cfg.build(&mut init).unwrap();
//! assert_eq!(loaded.trainable()[0].0, "prompt_embeddings");
//! assert_eq!(loaded.num_trainable(), 4 * 32);
//! ```

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use peft_core::hooks::{Ctx, Hooks};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::spec::SiteId;
use peft_core::{PeftError, Result};

use super::config::PromptEncoderConfig;
use super::prompt_encoder::PromptEncoder;
use crate::virtual_tokens::{load_saved, prepend, PROMPT_KEY};

/// Where the virtual-token embeddings come from.
#[derive(Debug)]
pub(crate) enum Prompt {
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

impl PTuning {
    /// The adapter of a resolved `config` (every model-derived field filled in) whose embeddings come from
    /// `prompt`.
    pub(crate) fn new(config: PromptEncoderConfig, prompt: Prompt) -> Self {
        PTuning { config, prompt }
    }

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
        // One encoder pass for the whole batch, broadcast to every row (HF PEFT repeats one sample).
        let n = self.config.prompt_learning.num_virtual_tokens;
        prepend(&self.prompt()?, n, x, ctx)
    }

    /// Only the embeddings change: every projection and norm runs as frozen.
    fn touches(&self, _site: SiteId) -> bool {
        false
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
                load_saved(var, tensors, "P-tuning", &self.config.prompt_learning)
            }
        }
    }
}
