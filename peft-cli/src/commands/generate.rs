//! `peft generate`: greedy or temperature / top-p sampling, with an optional adapter. A decoder-only model
//! prints the prompt and its continuation; an encoder-decoder model (T5) reads the prompt with its encoder and
//! prints the decoder's output (decoded with a key/value cache).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use peft_train::generate::{generate, generate_seq2seq, Sampling};
use rand::SeedableRng;

use crate::session::{open_model, with_adapter, Tokens};

/// Arguments of `peft generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// Zoo name, HF model folder, .gguf file or hub id.
    #[arg(long)]
    model: String,
    /// HF PEFT adapter folder.
    #[arg(long)]
    adapter: Option<PathBuf>,
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
    if !(args.top_p > 0.0 && args.top_p <= 1.0) || args.temperature < 0.0 {
        bail!("--top-p must be in (0, 1] and --temperature at least 0");
    }
    let loaded = open_model(&args.model)?;
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
    let new = with_adapter(&loaded, args.adapter.as_deref(), |tuned| {
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
    })?;
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
