//! The built prompt: `[total_virtual_tokens, token_dim]` trainable embeddings, prepended to the input embeddings
//! through [`Hooks::embeddings`] and saved as HF PEFT's `prompt_embeddings`.
//!
//! ```
//! use peft_core::method::{InitCtx, PeftMethod};
//! use peft_prompt::{PromptTuningConfig, PromptTuningInit};
//! use rand::SeedableRng;
//! let model = peft_models::tiny::llama(0); // hidden size 32
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = PromptTuningConfig::new(6, PromptTuningInit::Random).build(&mut init).unwrap();
//! assert_eq!(adapter.num_trainable(), 6 * 32);
//! assert_eq!(adapter.trainable()[0].0, "prompt_embeddings");
//! ```

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use peft_core::hooks::{Ctx, Hooks};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::spec::SiteId;
use peft_core::Result;

use super::config::PromptTuningConfig;
use crate::virtual_tokens::{load_saved, prepend, PROMPT_KEY};

/// A built prompt: `[total_virtual_tokens, token_dim]` trainable embeddings.
#[derive(Debug)]
pub struct PromptTuning {
    config: PromptTuningConfig,
    embedding: Var,
}

impl PromptTuning {
    /// The adapter of a resolved `config` (every model-derived field filled in) starting from `embedding`.
    pub(crate) fn new(config: PromptTuningConfig, embedding: Var) -> Self {
        PromptTuning { config, embedding }
    }

    /// The prompt embeddings.
    pub fn embeddings(&self) -> &Tensor {
        self.embedding.as_tensor()
    }
}

impl Hooks for PromptTuning {
    fn embeddings(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let prompt = peft_core::grad::param(&self.embedding);
        let n = self.config.prompt_learning.num_virtual_tokens;
        prepend(&prompt, n, x, ctx)
    }

    /// Only the embeddings change: every projection and norm runs as frozen.
    fn touches(&self, _site: SiteId) -> bool {
        false
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
        load_saved(
            &self.embedding,
            tensors,
            "prompt-tuning",
            &self.config.prompt_learning,
        )
    }
}
