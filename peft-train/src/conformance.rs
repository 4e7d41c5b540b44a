//! The contract every method must keep, as one check that any method crate (a third party's too) runs in its
//! tests: trained by the shared trainer the loss falls, every trainable tensor moves, no frozen tensor moves,
//! and the saved adapter loads back with the same logits; a run stopped and resumed equals an uninterrupted one
//! ([`check_resume`]), and so does a data-parallel run over several ranks ([`check_data_parallel`]).
//!
//! ```no_run
//! # fn demo(model: &dyn peft_core::model::BaseModel, task: &dyn peft_train::task::Task,
//! #         adapter: &dyn peft_core::method::Adapter) -> peft_core::Result<()> {
//! use peft_train::conformance::{check_adapter, Conformance};
//! let report = check_adapter(model, None, adapter, task, &Conformance::default())?;
//! assert!(report.last_loss < report.first_loss);
//! # Ok(()) }
//! ```

use std::path::PathBuf;

use candle_core::Tensor;
use rand::SeedableRng;

use crate::dist::Communicator;
use crate::generate::{last_decoder_logits, last_logits};
use crate::task::Task;
use crate::train::{TrainConfig, Trainer};
use peft_core::adapter_io::{load_adapter, save_adapter};
use peft_core::compare::max_abs_diff;
use peft_core::error::{PeftError, Result};
use peft_core::hooks::Hooks;
use peft_core::method::{Adapter, InitCtx};
use peft_core::model::{BaseModel, Batch};
use peft_core::spec::SiteKind;

/// How the check trains.
#[derive(Debug, Clone)]
pub struct Conformance {
    /// Optimiser steps (default 20).
    pub steps: usize,
    /// Learning rate (default 1e-2).
    pub learning_rate: f64,
    /// Micro-batch size (default 4).
    pub batch_size: usize,
    /// Token ids whose last-position logits must survive save -> load.
    pub probe: Vec<u32>,
    /// Largest |difference| allowed between the logits before saving and after loading (default 1e-5; the
    /// folded forms some methods save compute the same values in another order).
    pub reload_tolerance: f32,
}

impl Default for Conformance {
    fn default() -> Self {
        Conformance {
            steps: 20,
            learning_rate: 1e-2,
            batch_size: 4,
            probe: vec![3, 14, 15, 92, 65, 35],
            reload_tolerance: 1e-5,
        }
    }
}

impl Conformance {
    /// The trainer settings every check starts from: these steps, batch and rate, no warm-up, no evaluation
    /// or log, no progress bar, outputs in `out`.
    fn training(&self, out: PathBuf) -> TrainConfig {
        TrainConfig {
            max_steps: self.steps,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            warmup_steps: 0,
            eval_every: 0,
            log_every: 0,
            progress: false,
            output_dir: out,
            ..TrainConfig::default()
        }
    }
}

/// What the check measured.
#[derive(Debug, Clone)]
pub struct ConformanceReport {
    /// Mean loss of the first three steps.
    pub first_loss: f64,
    /// Mean loss of the last three steps.
    pub last_loss: f64,
    /// Trainable tensors (all of which moved).
    pub trainable_tensors: usize,
    /// Frozen tensors compared (none of which moved).
    pub frozen_tensors: usize,
    /// Max |difference| of the probe's logits between the trained adapter and its saved-and-loaded copy.
    pub reload_diff: f32,
}

/// Trains `adapter` on `task` over `model` and checks the contract; the first broken rule is an error saying
/// which tensor or number broke it.
pub fn check_adapter(
    model: &dyn BaseModel,
    tokenizer: Option<&tokenizers::Tokenizer>,
    adapter: &dyn Adapter,
    task: &dyn Task,
    how: &Conformance,
) -> Result<ConformanceReport> {
    let broken = |what: String| Err(PeftError::Unsupported(format!("conformance: {what}")));
    let frozen_before = frozen_tensors(model)?;
    let trainable_before: Vec<(String, Tensor)> = adapter
        .trainable()
        .into_iter()
        .map(|(k, v)| Ok((k, v.as_tensor().copy()?)))
        .collect::<Result<_>>()?;
    if trainable_before.is_empty() {
        return broken("the adapter has no trainable tensors".into());
    }

    let out = scratch_dir();
    let report = Trainer::new(model, adapter, task, how.training(out.clone())).run()?;
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let k = report.losses.len().min(3);
    let first_loss = mean(&report.losses[..k]);
    let last_loss = mean(&report.losses[report.losses.len() - k..]);
    if last_loss >= first_loss || last_loss.is_nan() {
        let _ = std::fs::remove_dir_all(&out);
        return broken(format!(
            "the loss did not fall over {} steps ({first_loss:.5} -> {last_loss:.5})",
            how.steps
        ));
    }

    let trainable_after = adapter.trainable();
    for ((name, before), (_, after)) in trainable_before.iter().zip(&trainable_after) {
        if max_abs_diff(before, after.as_tensor())? == 0.0 {
            let _ = std::fs::remove_dir_all(&out);
            return broken(format!(
                "trainable tensor `{name}` did not change in training"
            ));
        }
    }
    let frozen_after = frozen_tensors(model)?;
    for ((name, before), (_, after)) in frozen_before.iter().zip(&frozen_after) {
        if max_abs_diff(before, after)? != 0.0 {
            let _ = std::fs::remove_dir_all(&out);
            return broken(format!("frozen tensor `{name}` changed in training"));
        }
    }

    let dir = out.join("saved");
    let reload = (|| {
        save_adapter(&dir, adapter, model.spec())?;
        let mut init = InitCtx {
            model,
            tokenizer,
            rng: rand::rngs::StdRng::seed_from_u64(7),
        };
        let loaded = load_adapter(&dir, &mut init)?;
        let ours = probe_output(model, adapter, &how.probe)?;
        let theirs = probe_output(model, loaded.adapter.as_ref(), &how.probe)?;
        max_abs_diff(&ours, &theirs)
    })();
    let _ = std::fs::remove_dir_all(&out);
    let reload_diff = reload?;
    if reload_diff > how.reload_tolerance {
        return broken(format!(
            "save -> load changed the logits by {reload_diff:e} (allowed {:e})",
            how.reload_tolerance
        ));
    }
    Ok(ConformanceReport {
        first_loss,
        last_loss,
        trainable_tensors: trainable_before.len(),
        frozen_tensors: frozen_before.len(),
        reload_diff,
    })
}

/// What an adapter's output on `probe` is, for any architecture: the last-position logits of a model with an
/// LM head (of the decoder, fed the start token and the probe's first id, for an encoder-decoder), otherwise
/// the final states of every position; plus the trained head's logits where the adapter carries one.
pub fn probe_output(model: &dyn BaseModel, adapter: &dyn Adapter, probe: &[u32]) -> Result<Tensor> {
    let hooks: &dyn Hooks = adapter;
    peft_core::grad::no_grad(|| {
        let mut parts = Vec::new();
        if let Some(ed) = model.encoder_decoder() {
            let dec = [ed.decoder_start_token_id(), probe[0]];
            parts.push(last_decoder_logits(model, hooks, probe, &dec)?);
        } else if model.lm_head().is_some() {
            parts.push(last_logits(model, hooks, probe)?);
        }
        if model.lm_head().is_none() || adapter.classifier().is_some() {
            let batch = Batch::single(probe, model.device())?;
            let out = model.forward(&batch, hooks)?;
            parts.push(out.hidden.flatten_all()?);
            if let Some(head) = adapter.classifier() {
                if !model.spec().is_encoder_decoder {
                    parts.push(
                        head.forward(&model.pooled(&out, &batch, hooks)?)?
                            .flatten_all()?,
                    );
                }
            }
        }
        Ok(Tensor::cat(&parts, 0)?)
    })
}

/// Trains a fresh adapter from `build` for `how.steps` steps without a stop, and another one stopped halfway
/// and resumed from its checkpoint; both must end with the same losses and the same trainable tensors. Returns
/// the largest difference seen.
pub fn check_resume(
    model: &dyn BaseModel,
    build: &dyn Fn() -> Result<Box<dyn Adapter>>,
    task: &dyn Task,
    how: &Conformance,
) -> Result<f64> {
    let config = |out: PathBuf| TrainConfig {
        save_every: 1,
        ..how.training(out)
    };
    let (straight_dir, stopped_dir) = (scratch_dir(), scratch_dir());
    let outcome = (|| {
        let straight = build()?;
        let straight_losses =
            Trainer::new(model, straight.as_ref(), task, config(straight_dir.clone()))
                .run()?
                .losses;
        let stopped = build()?;
        let mut losses = Trainer::new(model, stopped.as_ref(), task, config(stopped_dir.clone()))
            .run_until(how.steps / 2)?
            .losses;
        let resumed = build()?;
        let resume_config = TrainConfig {
            resume: true,
            ..config(stopped_dir.clone())
        };
        losses.extend(
            Trainer::new(model, resumed.as_ref(), task, resume_config)
                .run()?
                .losses,
        );
        let mut worst = 0f64;
        for (a, b) in straight_losses.iter().zip(&losses) {
            worst = worst.max((a - b).abs());
        }
        if straight_losses.len() != losses.len() {
            return Err(PeftError::Unsupported(format!(
                "conformance: a resumed run made {} steps, an uninterrupted one {}",
                losses.len(),
                straight_losses.len()
            )));
        }
        for ((_, a), (_, b)) in straight.trainable().iter().zip(&resumed.trainable()) {
            worst = worst.max(f64::from(max_abs_diff(a.as_tensor(), b.as_tensor())?));
        }
        // The method's own state between steps, where it keeps one, resumes too.
        let (kept, restored) = (straight.step_state()?, resumed.step_state()?);
        let names = |s: &[(String, Tensor)]| s.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        if names(&kept) != names(&restored) {
            return Err(PeftError::Unsupported(format!(
                "conformance: the resumed adapter keeps state {:?} between steps, the uninterrupted one {:?}",
                names(&restored),
                names(&kept)
            )));
        }
        for ((_, a), (_, b)) in kept.iter().zip(&restored) {
            worst = worst.max(f64::from(max_abs_diff(a, b)?));
        }
        Ok(worst)
    })();
    let _ = std::fs::remove_dir_all(&straight_dir);
    let _ = std::fs::remove_dir_all(&stopped_dir);
    outcome
}

/// Trains a fresh adapter from `build` in one process, and again as a data-parallel job of `ranks` threads
/// (each with its own adapter from `build`, the model shared), both with `how`'s global batch and two
/// micro-batches per step; the job must end with the same losses and, on every rank, the same trainable
/// tensors as the single process. Returns the largest difference seen.
pub fn check_data_parallel(
    model: &dyn BaseModel,
    build: &(dyn Fn() -> Result<Box<dyn Adapter>> + Sync),
    task: &dyn Task,
    how: &Conformance,
    ranks: usize,
) -> Result<f64> {
    let config = |out: PathBuf| TrainConfig {
        gradient_accumulation_steps: 2,
        // Some gradients are zero in exact arithmetic (a key bias: softmax ignores a constant shift of its
        // row) and come out as rounding noise that depends on the order of the sums; Adam's first steps turn
        // such noise into moves of about the learning rate, of either sign, that change no output. A larger
        // epsilon keeps those moves below the tolerance and leaves every real gradient's update as it was.
        optimizer: crate::train::optim::AdamWConfig {
            eps: 1e-4,
            ..Default::default()
        },
        checkpoints: false,
        ..how.training(out)
    };
    let (single_dir, job_dir) = (scratch_dir(), scratch_dir());
    let outcome = (|| {
        let single = build()?;
        let single_losses = Trainer::new(model, single.as_ref(), task, config(single_dir.clone()))
            .run()?
            .losses;
        // Trainable tensors, then the method's state between steps (equal gradients on every rank make it
        // equal).
        let expected: Vec<(String, Tensor)> = single
            .trainable()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .chain(single.step_state()?)
            .collect();
        let per_rank = crate::dist::threads::ThreadGroup::run(ranks, |comm| {
            let adapter = build()?;
            let losses = Trainer::new(model, adapter.as_ref(), task, config(job_dir.clone()))
                .with_communicator(comm)
                .run()?
                .losses;
            let mut worst = 0f64;
            if losses.len() != single_losses.len() {
                return Err(PeftError::Unsupported(format!(
                    "conformance: rank {} made {} steps, one process {}",
                    comm.rank(),
                    losses.len(),
                    single_losses.len()
                )));
            }
            for (a, b) in single_losses.iter().zip(&losses) {
                worst = worst.max((a - b).abs());
            }
            let got: Vec<Tensor> = adapter
                .trainable()
                .into_iter()
                .map(|(_, v)| v.as_tensor().clone())
                .chain(adapter.step_state()?.into_iter().map(|(_, t)| t))
                .collect();
            if got.len() != expected.len() {
                return Err(PeftError::Unsupported(format!(
                    "conformance: rank {} has {} trained and step-state tensors, one process {}",
                    comm.rank(),
                    got.len(),
                    expected.len()
                )));
            }
            for ((name, a), b) in expected.iter().zip(&got) {
                let d = f64::from(max_abs_diff(a, b)?);
                if d.is_nan() {
                    return Err(PeftError::Unsupported(format!(
                        "conformance: `{name}` is NaN on rank {}",
                        comm.rank()
                    )));
                }
                worst = worst.max(d);
            }
            Ok(worst)
        });
        per_rank
            .into_iter()
            .try_fold(0f64, |worst, r| Ok(worst.max(r?)))
    })();
    let _ = std::fs::remove_dir_all(&single_dir);
    let _ = std::fs::remove_dir_all(&job_dir);
    outcome
}

/// Copies of every frozen tensor: the checkpoint parameters and each linear site's weight and bias as the
/// forward pass uses them.
fn frozen_tensors(model: &dyn BaseModel) -> Result<Vec<(String, Tensor)>> {
    let mut all: Vec<(String, Tensor)> = model
        .parameters()
        .into_iter()
        .map(|(k, t)| Ok((k, t.copy()?)))
        .collect::<Result<_>>()?;
    for (id, site) in model.spec().iter_sites() {
        if !matches!(site.kind, SiteKind::Linear { .. }) {
            continue;
        }
        if let Some(linear) = model.frozen_linear(id) {
            all.push((
                format!("{} (forward weight)", site.name),
                linear.weight()?.copy()?,
            ));
            if let Some(b) = linear.bias() {
                all.push((format!("{} (forward bias)", site.name), b.copy()?));
            }
        }
    }
    Ok(all)
}

/// A fresh folder for the check's trainer outputs.
fn scratch_dir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "peft-conformance-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}
