//! Text generation with a frozen model and any hooks: greedy, or temperature + top-p (nucleus) sampling.
//!
//! Decoder-only models generate with a key/value cache ([`generate_cached`], [`generate_batch`]): the prompt
//! runs once (its virtual tokens or key/value prefix included), then one token per row per step. [`generate`]
//! re-runs the whole sequence for every token: the reference the cached path is tested against, and the path
//! of a model without a cache. Encoder-decoder models ([`generate_seq2seq`]) encode once and decode with a
//! key/value cache.
//!
//! ```
//! use peft_train::generate::{pick_token, Sampling};
//! use rand::SeedableRng;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let logits = [0.1f32, 3.0, -1.0];
//! assert_eq!(pick_token(&logits, &Sampling::Greedy, &mut rng), 1);
//! // top_p small enough keeps only the most likely token.
//! let s = Sampling::TopP { temperature: 1.0, top_p: 0.01 };
//! assert_eq!(pick_token(&logits, &s, &mut rng), 1);
//! ```

use candle_core::{IndexOp, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

use peft_core::error::{PeftError, Result};
use peft_core::hooks::Hooks;
use peft_core::kv_cache::KvCache;
use peft_core::model::{BaseModel, Batch, DecoderCache, EncoderDecoder};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Sample from the smallest set of tokens whose probability reaches `top_p`, after dividing the logits by
    /// `temperature`.
    TopP {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
    },
}

/// Picks the next token from last-position `logits`.
pub fn pick_token(logits: &[f32], sampling: &Sampling, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0 as u32
    };
    match *sampling {
        Sampling::Greedy => argmax(),
        Sampling::TopP { temperature, top_p } => {
            if temperature <= 0.0 {
                return argmax();
            }
            let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let mut probs: Vec<(usize, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i, ((l as f64 - max) / temperature).exp()))
                .collect();
            let total: f64 = probs.iter().map(|p| p.1).sum();
            probs.iter_mut().for_each(|p| p.1 /= total);
            probs.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut kept = 0;
            let mut mass = 0.0;
            for p in &probs {
                kept += 1;
                mass += p.1;
                if mass >= top_p {
                    break;
                }
            }
            let nucleus = &probs[..kept];
            let mut r = rng.random::<f64>() * mass;
            for &(i, p) in nucleus {
                if r < p {
                    return i as u32;
                }
                r -= p;
            }
            nucleus[kept - 1].0 as u32
        }
    }
}

/// Generates up to `max_new_tokens` after `prompt`, stopping early at `eos`; returns the new tokens only.
pub fn generate(
    model: &dyn BaseModel,
    hooks: &dyn Hooks,
    prompt: &[u32],
    max_new_tokens: usize,
    sampling: &Sampling,
    eos: Option<u32>,
    rng: &mut StdRng,
) -> Result<Vec<u32>> {
    let mut ids = prompt.to_vec();
    let mut new = Vec::new();
    let limit = model.spec().max_positions;
    for _ in 0..max_new_tokens {
        if ids.len() >= limit {
            break;
        }
        let logits: Vec<f32> = last_logits(model, hooks, &ids)?.to_vec1()?;
        let next = pick_token(&logits, sampling, rng);
        ids.push(next);
        new.push(next);
        if Some(next) == eos {
            break;
        }
    }
    Ok(new)
}

/// [`generate`] through the key/value cache (the model must have one, [`BaseModel::has_kv_cache`]): the same
/// tokens, one forward pass over the prompt and then one position per token.
pub fn generate_cached(
    model: &dyn BaseModel,
    hooks: &dyn Hooks,
    prompt: &[u32],
    max_new_tokens: usize,
    sampling: &Sampling,
    eos: Option<u32>,
    rng: &mut StdRng,
) -> Result<Vec<u32>> {
    let mut rows = generate_batch(
        model,
        hooks,
        &[prompt],
        max_new_tokens,
        sampling,
        eos,
        std::slice::from_mut(rng),
    )?;
    Ok(rows.remove(0))
}

/// Generates for several prompts at once with one set of hooks and a key/value cache: the prompts are
/// left-padded and run in one pass, then every unfinished row takes one token per step. Row `i` samples with
/// `rngs[i]` and stops at `eos` (kept in its output), after `max_new_tokens`, or when its next position would
/// pass the model's context; a finished row is fed masked padding until the others finish. Each row's tokens
/// are what [`generate`] gives for it alone.
pub fn generate_batch(
    model: &dyn BaseModel,
    hooks: &dyn Hooks,
    prompts: &[&[u32]],
    max_new_tokens: usize,
    sampling: &Sampling,
    eos: Option<u32>,
    rngs: &mut [StdRng],
) -> Result<Vec<Vec<u32>>> {
    if rngs.len() != prompts.len() {
        return Err(PeftError::Data(format!(
            "{} prompts were given {} random generators: give one per prompt",
            prompts.len(),
            rngs.len()
        )));
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(PeftError::Data(format!(
            "prompt {i} has no tokens: generation continues a prompt of at least one token"
        )));
    }
    let device = model.device();
    let limit = model.spec().max_positions as u32;
    let rows = prompts.len();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); rows];
    if rows == 0 || max_new_tokens == 0 {
        return Ok(out);
    }
    peft_core::grad::no_grad(|| {
        let batch = left_padded(prompts, device)?;
        let mut cache = KvCache::new();
        let hidden = model.forward_cached(&batch, &mut cache, hooks)?.hidden;
        // Left padding puts every row's last prompt token in the last column.
        let mut last = hidden.i((.., hidden.dim(1)? - 1))?;
        let mut done = vec![false; rows];
        loop {
            let logits: Vec<Vec<f32>> = model.logits(&last)?.to_vec2()?;
            let mut feed = vec![0u32; rows];
            for (r, row) in logits.iter().enumerate() {
                if done[r] {
                    continue;
                }
                let next = pick_token(row, sampling, &mut rngs[r]);
                out[r].push(next);
                feed[r] = next;
                done[r] = Some(next) == eos
                    || out[r].len() >= max_new_tokens
                    // The token just picked takes the next position; another would need one more.
                    || cache.next_positions()[r] + 1 >= limit;
            }
            if done.iter().all(|&d| d) {
                return Ok(out);
            }
            let step_mask: Vec<f32> = done.iter().map(|&d| if d { 0.0 } else { 1.0 }).collect();
            let step = Batch::new(
                Tensor::from_vec(feed, (rows, 1), device)?,
                Tensor::from_vec(step_mask, (rows, 1), device)?,
            )?;
            last = model
                .forward_cached(&step, &mut cache, hooks)?
                .hidden
                .squeeze(1)?;
        }
    })
}

/// The prompts as one batch, left-padded with masked id 0 to the longest: every row's last prompt token sits
/// in the last column, where a cached prompt pass reads each row's next-token logits.
pub fn left_padded(prompts: &[&[u32]], device: &candle_core::Device) -> Result<Batch> {
    let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * width);
    let mut mask = Vec::with_capacity(prompts.len() * width);
    for p in prompts {
        let pad = width - p.len();
        ids.extend(std::iter::repeat_n(0u32, pad).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0f32, pad).chain(std::iter::repeat_n(1f32, p.len())));
    }
    Batch::new(
        Tensor::from_vec(ids, (prompts.len(), width), device)?,
        Tensor::from_vec(mask, (prompts.len(), width), device)?,
    )
}

/// Logits `[vocab]` at the last real position of `ids`.
pub fn last_logits(model: &dyn BaseModel, hooks: &dyn Hooks, ids: &[u32]) -> Result<Tensor> {
    peft_core::grad::no_grad(|| {
        let out = model.forward(&Batch::single(ids, model.device())?, hooks)?;
        let last = out.hidden.i((0, out.hidden.dim(1)? - 1))?.unsqueeze(0)?;
        Ok(model.logits(&last)?.squeeze(0)?)
    })
}

/// The encoder-decoder interface of `model`, or an error saying the model has none.
fn encoder_decoder(model: &dyn BaseModel) -> Result<&dyn EncoderDecoder> {
    model.encoder_decoder().ok_or_else(|| {
        PeftError::Unsupported(format!(
            "the {} model {} is not an encoder-decoder: seq2seq generation needs one (T5)",
            model.spec().architecture,
            model.spec().name_or_path
        ))
    })
}

/// Generates up to `max_new_tokens` decoder tokens for the encoder input `input_ids` of an encoder-decoder
/// model, stopping early at `eos`; the encoder runs once and the decoder keeps a key/value cache, so each step
/// costs one decoder position. Returns the new tokens (without the decoder start token).
pub fn generate_seq2seq(
    model: &dyn BaseModel,
    hooks: &dyn Hooks,
    input_ids: &[u32],
    max_new_tokens: usize,
    sampling: &Sampling,
    eos: Option<u32>,
    rng: &mut StdRng,
) -> Result<Vec<u32>> {
    let ed = encoder_decoder(model)?;
    peft_core::grad::no_grad(|| {
        let encoded = ed.encode(&Batch::single(input_ids, model.device())?, hooks)?;
        let mut cache = DecoderCache::default();
        let mut next = ed.decoder_start_token_id();
        let mut new = Vec::new();
        for _ in 0..max_new_tokens {
            let ids = Tensor::new(&[[next]], model.device())?;
            let hidden = ed.decode(&encoded, &ids, &mut cache, hooks)?;
            let logits: Vec<f32> = model.logits(&hidden.i((0, 0))?)?.to_vec1()?;
            next = pick_token(&logits, sampling, rng);
            new.push(next);
            if Some(next) == eos {
                break;
            }
        }
        Ok(new)
    })
}

/// Greedy decoding of a batch of encoder inputs (right-padded with `pad_id`) with one cache; each row stops at
/// `eos` (kept in its output) or after `max_new_tokens`.
pub fn greedy_seq2seq_batch(
    model: &dyn BaseModel,
    hooks: &dyn Hooks,
    inputs: &[&[u32]],
    max_new_tokens: usize,
    eos: Option<u32>,
    pad_id: u32,
) -> Result<Vec<Vec<u32>>> {
    let ed = encoder_decoder(model)?;
    peft_core::grad::no_grad(|| {
        let batch = crate::data::PaddedIds::pad(inputs, pad_id)?.to_batch(model.device())?;
        let encoded = ed.encode(&batch, hooks)?;
        let mut cache = DecoderCache::default();
        let mut next = vec![ed.decoder_start_token_id(); inputs.len()];
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); inputs.len()];
        let mut done = vec![false; inputs.len()];
        for _ in 0..max_new_tokens {
            let ids = Tensor::new(next.as_slice(), model.device())?.unsqueeze(1)?;
            let hidden = ed.decode(&encoded, &ids, &mut cache, hooks)?;
            let picked = model
                .logits(&hidden.squeeze(1)?)?
                .argmax(1)?
                .to_vec1::<u32>()?;
            for (b, &tok) in picked.iter().enumerate() {
                if !done[b] {
                    out[b].push(tok);
                    done[b] = Some(tok) == eos;
                }
                next[b] = tok;
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        Ok(out)
    })
}

/// Logits `[vocab]` at the last of `decoder_ids` of an encoder-decoder model, the encoder reading `input_ids`.
pub fn last_decoder_logits(
    model: &dyn BaseModel,
    hooks: &dyn Hooks,
    input_ids: &[u32],
    decoder_ids: &[u32],
) -> Result<Tensor> {
    encoder_decoder(model)?;
    peft_core::grad::no_grad(|| {
        let decoder = Tensor::new(decoder_ids, model.device())?.unsqueeze(0)?;
        let batch = Batch::single(input_ids, model.device())?.with_decoder_input_ids(decoder)?;
        let out = model.forward(&batch, hooks)?;
        let last = out.hidden.i((0, out.hidden.dim(1)? - 1))?.unsqueeze(0)?;
        Ok(model.logits(&last)?.squeeze(0)?)
    })
}
