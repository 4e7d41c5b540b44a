//! `peft generate`: greedy or temperature / top-p sampling, with an optional adapter. A decoder-only model
//! prints the prompt and its continuation; an encoder-decoder model (T5) reads the prompt with its encoder and
//! prints the decoder's output (decoded with a key/value cache).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use peft_train::generate::{generate, generate_seq2seq, Sampling};
use rand::SeedableRng;

use crate::session::{adapter_options, open_model, with_adapter, Tokens};

/// Arguments of `peft generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// Zoo name, HF model folder, .gguf file or hub id.
    #[arg(long)]
    model: String,
    /// HF PEFT adapter folder.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Load the adapter even if its tensors hold NaN or infinite values (refused by default: such an adapter
    /// comes from a diverged run).
    #[arg(long, requires = "adapter")]
    allow_non_finite: bool,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 40)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus mass for sampling.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Runs `peft generate`: prints the prompt and its continuation.
pub fn run(args: GenerateArgs) -> Result<()> {
    check_sampling(&args)?;
    let loaded = open_model(&args.model)?;
    // More new tokens than the model has positions could never be produced (a decoder-only model stops at its
    // context) or would run on past what the model was trained for (an encoder-decoder's decoder).
    let context = loaded.model.spec().max_positions;
    if args.max_new_tokens > context {
        bail!(
            "--max-new-tokens {} exceeds the model's context of {context} positions: give at most {context}",
            args.max_new_tokens
        );
    }
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .context("this model has no tokenizer, so it cannot generate text")?;
    let ids = Tokens::from_args(Some(&args.prompt), None).resolve(&loaded)?;
    let sampling = if args.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::TopP {
            temperature: args.temperature,
            top_p: args.top_p,
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let new = with_adapter(
        &loaded,
        args.adapter.as_deref(),
        &adapter_options(args.allow_non_finite),
        |tuned| {
            let hooks = tuned.hooks();
            crate::session::check_fits(&loaded, hooks, ids.len())?;
            let model = loaded.model.as_ref();
            if model.encoder_decoder().is_some() {
                return generate_seq2seq(
                    model,
                    hooks,
                    &ids,
                    args.max_new_tokens,
                    &sampling,
                    loaded.eos_token_id,
                    &mut rng,
                )
                .map_err(Into::into);
            }
            generate(
                loaded.model.as_ref(),
                hooks,
                &ids,
                args.max_new_tokens,
                &sampling,
                loaded.eos_token_id,
                &mut rng,
            )
            .map_err(Into::into)
        },
    )?;
    // The eos that ended the generation is not part of the text (a tokenizer may not mark it special).
    let new = match new.split_last() {
        Some((last, rest)) if Some(*last) == loaded.eos_token_id => rest.to_vec(),
        _ => new,
    };
    let text = tokenizer
        .decode(&new, true)
        .map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
    let mut out = std::io::stdout().lock();
    if loaded.model.encoder_decoder().is_some() {
        writeln!(out, "{text}")?;
    } else {
        writeln!(out, "{}{}", args.prompt, text)?;
    }
    Ok(())
}

/// Most new tokens any run may ask for, checked before the model is opened (the model's context bounds it
/// further once it is).
const MAX_NEW_TOKENS: usize = 1 << 20;

/// Refuses sampling settings that cannot mean anything, naming the flag: a temperature that is NaN, negative
/// or infinite, a top-p outside (0, 1], a number of new tokens beyond [`MAX_NEW_TOKENS`].
fn check_sampling(args: &GenerateArgs) -> Result<()> {
    if !args.temperature.is_finite() || args.temperature < 0.0 {
        bail!(
            "--temperature {} is not a sampling temperature: give a finite number, at least 0 (0 is greedy)",
            args.temperature
        );
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!(
            "--top-p {} is not a nucleus mass: give a number in (0, 1] (1 keeps every token)",
            args.top_p
        );
    }
    if args.max_new_tokens > MAX_NEW_TOKENS {
        bail!(
            "--max-new-tokens {} is absurdly large: give at most {MAX_NEW_TOKENS} (the model's context bounds it further)",
            args.max_new_tokens
        );
    }
    Ok(())
}
