//! `peft generate`: greedy or temperature / top-p sampling, with an optional adapter. A decoder-only model
//! prints the prompt and its continuation, generated with a key/value cache (`--no-cache`: the reference path
//! that re-runs the whole sequence per token); several `--prompt`s run as one left-padded batch, and with as
//! many `--adapter`s as prompts, prompt `i` runs with adapter `i` in that same batch (any mix of methods;
//! `--sequential` runs the prompts one after another instead, the baseline a mixed batch is measured against). An
//! encoder-decoder model (T5) reads the prompt with its encoder and prints the decoder's output (decoded with a
//! key/value cache). `--timing` prints the tokens generated and their rate to stderr as one JSON line.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use peft_core::hooks::{Hooks, NoHooks};
use peft_core::mixed::MixedHooks;
use peft_train::generate::{generate, generate_batch, generate_cached, generate_seq2seq, Sampling};
use rand::SeedableRng;

use crate::session::{adapter_options, open_adapter, open_model, Tokens};

/// Arguments of `peft generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// Zoo name, HF model folder, .gguf file or hub id.
    #[arg(long)]
    model: String,
    /// HF PEFT adapter folder: one for every prompt, or one per prompt (prompt `i` uses adapter `i`).
    #[arg(long)]
    adapter: Vec<PathBuf>,
    /// Load the adapter even if its tensors hold NaN or infinite values (refused by default: such an adapter
    /// comes from a diverged run).
    #[arg(long)]
    allow_non_finite: bool,
    /// The prompt; repeat it to generate for several prompts in one batch.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 40)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus mass for sampling.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler (prompt `i` samples from seed + i).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Re-run the whole sequence for every token instead of using the key/value cache (the reference path).
    #[arg(long)]
    no_cache: bool,
    /// Generate `--max-new-tokens` tokens even past the end-of-sequence token (for timing runs).
    #[arg(long)]
    ignore_eos: bool,
    /// Run the prompts one after another (each alone, with its adapter) instead of as one batch.
    #[arg(long)]
    sequential: bool,
    /// Print `{"prompts", "new_tokens", "seconds", "tokens_per_s", "cached", "batched"}` to stderr after
    /// generating (seconds of generation only, the model and adapters already loaded).
    #[arg(long)]
    timing: bool,
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
    let prompts = args
        .prompt
        .iter()
        .map(|p| Tokens::from_args(Some(p), None).resolve(&loaded))
        .collect::<Result<Vec<_>>>()?;
    let sampling = if args.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::TopP {
            temperature: args.temperature,
            top_p: args.top_p,
        }
    };
    let model = loaded.model.as_ref();
    let seq2seq = model.encoder_decoder().is_some();
    let cached = !seq2seq && !args.no_cache && model.has_kv_cache();
    let batched = cached && !args.sequential;
    if args.adapter.len() > 1 && args.adapter.len() != prompts.len() {
        bail!(
            "{} --adapter folders for {} --prompt texts: give one adapter for every prompt, or one per prompt \
             (prompt i runs with adapter i)",
            args.adapter.len(),
            prompts.len()
        );
    }
    if args.allow_non_finite && args.adapter.is_empty() {
        bail!("--allow-non-finite applies to an adapter: give --adapter too");
    }
    let options = adapter_options(args.allow_non_finite);
    let adapters = args
        .adapter
        .iter()
        .map(|dir| open_adapter(&loaded, dir, &options))
        .collect::<Result<Vec<_>>>()?;
    // Row i's hooks: its own adapter, the one adapter of every row, or none.
    let hooks_of = |i: usize| -> &dyn Hooks {
        match adapters.len() {
            0 => &NoHooks,
            1 => adapters[0].adapter.as_ref(),
            _ => adapters[i].adapter.as_ref(),
        }
    };
    for (i, ids) in prompts.iter().enumerate() {
        crate::session::check_fits(&loaded, hooks_of(i), ids.len())?;
    }
    let eos = if args.ignore_eos {
        None
    } else {
        loaded.eos_token_id
    };
    let mut rngs: Vec<_> = (0..prompts.len() as u64)
        .map(|i| rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(i)))
        .collect();
    let started = std::time::Instant::now();
    let outputs = if batched {
        let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
        let all: Vec<&dyn Hooks> = adapters
            .iter()
            .map(|a| a.adapter.as_ref() as &dyn Hooks)
            .collect();
        let rows = (0..prompts.len())
            .map(|i| (adapters.len() > 1).then_some(i))
            .collect();
        let mixed;
        let hooks: &dyn Hooks = if adapters.len() > 1 {
            mixed = MixedHooks::new(all, rows)?;
            &mixed
        } else {
            hooks_of(0)
        };
        generate_batch(
            model,
            hooks,
            &refs,
            args.max_new_tokens,
            &sampling,
            eos,
            &mut rngs,
        )?
    } else {
        let one = if seq2seq {
            generate_seq2seq
        } else if cached {
            generate_cached
        } else {
            generate
        };
        prompts
            .iter()
            .zip(rngs.iter_mut())
            .enumerate()
            .map(|(i, (ids, rng))| {
                one(
                    model,
                    hooks_of(i),
                    ids,
                    args.max_new_tokens,
                    &sampling,
                    eos,
                    rng,
                )
                .map_err(Into::into)
            })
            .collect::<Result<Vec<_>>>()?
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    let mut new_tokens = 0;
    for (prompt, new) in args.prompt.iter().zip(outputs) {
        new_tokens += new.len();
        // The eos that ended the generation is not part of the text (a tokenizer may not mark it special).
        let new = match new.split_last() {
            Some((last, rest)) if Some(*last) == loaded.eos_token_id => rest.to_vec(),
            _ => new,
        };
        let text = tokenizer
            .decode(&new, true)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
        if seq2seq {
            writeln!(out, "{text}")?;
        } else {
            writeln!(out, "{prompt}{text}")?;
        }
    }
    if args.timing {
        let timing = serde_json::json!({
            "prompts": args.prompt.len(),
            "new_tokens": new_tokens,
            "seconds": seconds,
            "tokens_per_s": new_tokens as f64 / seconds.max(1e-9),
            "cached": cached,
            "batched": batched,
        });
        eprintln!("{timing}");
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
