//! What prompt tuning and P-tuning do alike with their virtual-token embeddings: prepend them to the input
//! embeddings of every row, and save and load them as HF PEFT's `prompt_embeddings`
//! `[num_virtual_tokens * num_transformer_submodules, token_dim]`.
//!
//! An encoder-decoder adapter holds a second set of rows that HF PEFT never feeds: only the first
//! `num_virtual_tokens` rows go in front of the encoder's input.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use peft_core::hooks::{Ctx, Hooks};
//! use peft_core::method::{InitCtx, PeftMethod};
//! use peft_prompt::{PromptTuningConfig, PromptTuningInit};
//! use rand::SeedableRng;
//! let model = peft_models::tiny::gpt2(0); // hidden size 32
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = PromptTuningConfig::new(3, PromptTuningInit::Random).build(&mut init).unwrap();
//! let x = Tensor::zeros((2, 5, 32), DType::F32, &Device::Cpu).unwrap();
//! let mut ctx = Ctx::new(Tensor::ones((2, 5), DType::F32, &Device::Cpu).unwrap());
//! assert_eq!(adapter.embeddings(x, &mut ctx).unwrap().dims(), &[2, 3 + 5, 32]);
//! assert_eq!(adapter.tensors().unwrap()[0].0, "prompt_embeddings");
//! ```

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use peft_core::hooks::Ctx;
use peft_core::prompt_learning::PromptLearningConfig;
use peft_core::{PeftError, Result};

/// The key HF PEFT saves the virtual-token embeddings under.
pub(crate) const PROMPT_KEY: &str = "prompt_embeddings";

/// `x` `[batch, seq, hidden]` with the first `n` rows of `prompt` `[rows, hidden]` in front of every row, the
/// same prompt for the whole batch (as HF PEFT repeats one prompt); `ctx` learns of the `n` virtual tokens.
pub(crate) fn prepend(prompt: &Tensor, n: usize, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
    let (b, _, h) = x.dims3()?;
    let prompt = prompt
        .narrow(0, 0, n)?
        .to_dtype(x.dtype())?
        .unsqueeze(0)?
        .broadcast_as((b, n, h))?;
    ctx.prepend_virtual_tokens(n)?;
    Ok(Tensor::cat(&[&prompt, &x], 1)?)
}

/// Sets `table` from the saved `prompt_embeddings` of an adapter of `method` built for `config`; a missing key
/// lists the keys found, a wrong shape names both shapes.
pub(crate) fn load_saved(
    table: &Var,
    tensors: &HashMap<String, Tensor>,
    method: &str,
    config: &PromptLearningConfig,
) -> Result<()> {
    let t = tensors.get(PROMPT_KEY).ok_or_else(|| {
        let keys: Vec<&String> = tensors.keys().collect();
        PeftError::Config(format!(
            "a {method} adapter holds `{PROMPT_KEY}`; this file has {keys:?}"
        ))
    })?;
    if t.dims() != table.dims() {
        return Err(PeftError::ShapeMismatch {
            what: PROMPT_KEY.into(),
            expected_from: format!(
                "the model (hidden {}, {} virtual tokens)",
                config.token_dim.unwrap_or(0),
                config.total_virtual_tokens()
            ),
            expected: table.dims().to_vec(),
            got_from: "the adapter file".into(),
            got: t.dims().to_vec(),
        });
    }
    table.set(&t.to_dtype(DType::F32)?)?;
    Ok(())
}
