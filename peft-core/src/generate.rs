//! Text generation with a frozen model and any hooks: greedy, or temperature + top-p (nucleus) sampling.
//!
//! Each new token re-runs the forward pass over the whole sequence (no key/value cache yet): correct for any
//! hooks, and fast enough for the short generations of a 135M model on a CPU.
//!
//! ```
//! use peft_core::generate::{pick_token, Sampling};
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

use crate::error::Result;
use crate::hooks::Hooks;
use crate::model::{BaseModel, Batch};

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

/// Logits `[vocab]` at the last real position of `ids`.
pub fn last_logits(model: &dyn BaseModel, hooks: &dyn Hooks, ids: &[u32]) -> Result<Tensor> {
    crate::grad::no_grad(|| {
        let out = model.forward(&Batch::single(ids, model.device())?, hooks)?;
        let last = out.hidden.i((0, out.hidden.dim(1)? - 1))?.unsqueeze(0)?;
        Ok(model.logits(&last)?.squeeze(0)?)
    })
}
