//! How a prompt-tuning prompt starts (HF PEFT's `prompt_tuning_init`): standard normal values, the embeddings
//! of a text's tokens, or the embeddings of tokens sampled from the vocabulary.
//!
//! ```
//! use peft_core::method::{InitCtx, PeftMethod};
//! use peft_prompt::{PromptTuning, PromptTuningConfig, PromptTuningInit};
//! use rand::SeedableRng;
//! let model = peft_models::tiny::gpt2(0);
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! // TEXT needs the model's tokenizer, which this one has not.
//! let mut text = PromptTuningConfig::new(4, PromptTuningInit::Text);
//! text.prompt_tuning_init_text = Some("Classify:".into());
//! assert!(text.build(&mut init).err().unwrap().to_string().contains("tokenizer"));
//! let sampled = PromptTuningConfig::new(4, PromptTuningInit::SampleVocab).build(&mut init).unwrap();
//! assert_eq!(sampled.tensors().unwrap()[0].1.dims(), &[4, 32]);
//! ```

use candle_core::{DType, Tensor};
use peft_core::method::InitCtx;
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

/// Initial prompt values `[total, dim]` started as `how` says (`text` is `prompt_tuning_init_text`).
pub(crate) fn initial_prompt(
    how: PromptTuningInit,
    text: Option<&str>,
    init: &mut InitCtx,
    total: usize,
    dim: usize,
) -> Result<Tensor> {
    let device = init.model.device().clone();
    let from_ids = |ids: Vec<u32>| -> Result<Tensor> {
        let ids = Tensor::new(ids, &device)?;
        Ok(init.model.embed_tokens(&ids)?.to_dtype(DType::F32)?)
    };
    match how {
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
            let text = text.ok_or_else(|| {
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
