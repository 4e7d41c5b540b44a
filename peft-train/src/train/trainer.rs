//! The trainer: its public face, and the training loop as the sequence of its steps (each in its own file:
//! `resume`, `step`, `progress`, `evaluate`, with the run's state in `run`).
//!
//! ```no_run
//! # fn demo(model: &dyn peft_core::model::BaseModel, adapter: &dyn peft_core::method::Adapter,
//! #         task: &dyn peft_train::task::Task) -> peft_core::Result<()> {
//! use peft_train::train::{TrainConfig, Trainer};
//! let config = TrainConfig { max_steps: 100, eval_every: 50, ..TrainConfig::default() };
//! let report = Trainer::new(model, adapter, task, config).run()?;
//! assert_eq!((report.losses.len(), report.evals.len()), (100, 2));
//! # Ok(()) }
//! ```

use std::time::Instant;

use super::config::TrainConfig;
use crate::dist::{Communicator, SingleProcess};
use crate::task::{Metrics, Task};
use peft_core::error::{PeftError, Result};
use peft_core::lock::DirLock;
use peft_core::method::Adapter;
use peft_core::model::BaseModel;

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct TrainReport {
    /// Mean loss of each optimiser step run in this process (a resumed run starts at its checkpoint).
    pub losses: Vec<f64>,
    /// Evaluations as (step, metrics).
    pub evals: Vec<(usize, Metrics)>,
    /// Best (step, primary metric value).
    pub best: Option<(usize, f64)>,
    /// Step the run started from (0, or the checkpoint's step when resumed).
    pub start_step: usize,
    /// Wall time of each optimiser step run in this process (forward, backward, clipping, update), seconds.
    pub step_seconds: Vec<f64>,
    /// Of each step's wall time, the part spent in the forward pass and the loss (summed over micro-batches).
    pub forward_seconds: Vec<f64>,
    /// Of each step's wall time, the part spent in collectives between the ranks of a data-parallel job (the
    /// transfer, plus any wait for a slower rank); zeros in one process.
    pub comm_seconds: Vec<f64>,
    /// Real (non-padding) input tokens the training steps covered, over all ranks of a data-parallel job.
    pub tokens: usize,
    /// Wall time of each evaluation in `evals`, seconds.
    pub eval_seconds: Vec<f64>,
    /// Bytes held by the optimiser's state (AdamW's two moments per trainable tensor), as allocated.
    pub optimizer_state_bytes: usize,
    /// Per-example outcomes of the last evaluation, where the task keeps them (rank 0 only).
    pub last_outcomes: Option<crate::task::Outcomes>,
}

/// Trains an adapter on a task over a frozen model, in one process or as one rank of a data-parallel job.
///
/// With a [`Communicator`] of several ranks, every rank runs the same trainer on its own copy of the model and
/// adapter: each micro-batch of `batch_size` examples (the same global order as one process) is split over
/// the ranks ([`shard`](crate::dist::shard)), each rank's mean loss is weighed by its share of the loss
/// terms, the gradients are summed over the ranks once per optimiser step (one packed buffer), and clipping
/// and AdamW then run on equal gradients on every rank, so that the adapters stay equal. Rank 0 alone
/// evaluates and writes the log, checkpoints and adapters; a resumed run reads the checkpoint on rank 0 and
/// sends it to the others.
///
/// Rank 0 locks `output_dir` for the run ([`DirLock`]: a second run on the folder is refused, naming this
/// one), recovers what a killed run left half-replaced and removes its temporaries (see
/// [`output_dir`](super::output_dir)). A run stops with an error at the first non-finite loss, gradient,
/// parameter or evaluation, saving nothing after it (see `finite`), and warns once when its loss climbs far
/// above its start (see [`divergence`](super::divergence)).
pub struct Trainer<'a> {
    pub(super) model: &'a dyn BaseModel,
    pub(super) adapter: &'a dyn Adapter,
    pub(super) task: &'a dyn Task,
    pub(super) config: TrainConfig,
    pub(super) comm: &'a dyn Communicator,
    /// The caller's digest of what the run learns from, checked on resume.
    pub(super) inputs_digest: Option<String>,
    /// A lock on `output_dir` the caller took already (else the run takes its own).
    pub(super) lock: Option<DirLock>,
}

impl<'a> Trainer<'a> {
    /// A trainer; nothing runs until [`Trainer::run`].
    pub fn new(
        model: &'a dyn BaseModel,
        adapter: &'a dyn Adapter,
        task: &'a dyn Task,
        config: TrainConfig,
    ) -> Self {
        Trainer {
            model,
            adapter,
            task,
            config,
            comm: &SingleProcess,
            inputs_digest: None,
            lock: None,
        }
    }

    /// Records `digest`, the caller's fingerprint of what the run learns from (the data files' content, the
    /// task and its template), in each checkpoint; a resume whose digest differs is refused. A digest of
    /// space-separated `name:value` parts (`task:3fa2 data:91bc`) lets the refusal name the parts that
    /// changed.
    pub fn with_inputs_digest(mut self, digest: impl Into<String>) -> Self {
        self.inputs_digest = Some(digest.into());
        self
    }

    /// Uses `lock`, taken by the caller before its own work (`peft train` takes it before the zero-shot
    /// evaluation), instead of locking `output_dir` at the run's start; a lock on another folder is ignored.
    pub fn with_output_lock(mut self, lock: DirLock) -> Self {
        self.lock = Some(lock);
        self
    }

    /// Runs as one rank of the data-parallel job `comm` connects (every rank must build the same trainer).
    pub fn with_communicator(mut self, comm: &'a dyn Communicator) -> Self {
        self.comm = comm;
        self
    }

    /// Runs training to `max_steps`, evaluating, logging and checkpointing as configured; the final adapter is
    /// saved to `output_dir/adapter` and the best one to `output_dir/best`.
    pub fn run(&self) -> Result<TrainReport> {
        self.run_until(self.config.max_steps)
    }

    /// Like [`Trainer::run`], but stops once `stop` optimiser steps are done (a time-boxed session), leaving a
    /// checkpoint that a later run with `resume = true` continues exactly: the schedule still spans
    /// `max_steps`.
    pub fn run_until(&self, stop: usize) -> Result<TrainReport> {
        let stop = stop.min(self.config.max_steps);
        self.check()?;
        let mut run = self.start()?;
        while run.state.step < stop {
            let step_started = Instant::now();
            let outcome = self.optimiser_step(&mut run)?;
            run.record(&outcome, step_started);
            self.log_step(&mut run, &outcome)?;
            self.watch_divergence(&mut run, &outcome)?;
            let eval_now = self.evaluation_due(run.state.step);
            if eval_now {
                self.evaluate(&mut run)?;
            }
            self.checkpoint_if_due(&run, eval_now)?;
        }
        self.finish(run)
    }

    /// Refuses what cannot train, before any work: the settings ([`TrainConfig::check`]), an empty training
    /// set, a batch more than twice the training set, an adapter with nothing to train, and fewer examples per
    /// micro-batch than processes. Cheap: a caller runs it before its own long work (an evaluation).
    pub fn check(&self) -> Result<()> {
        let c = &self.config;
        c.check()?;
        let examples = self.task.train_len();
        if examples == 0 {
            return Err(PeftError::Data(
                "the training set is empty: give [data.train] at least one example".into(),
            ));
        }
        // A micro-batch a little larger than the set wraps into the next epoch's order (tests train 3
        // examples in batches of 4); one more than twice the set only repeats examples at a memory cost
        // that grows with it.
        if c.batch_size > 2 * examples {
            return Err(PeftError::Config(format!(
                "batch_size {} is far above the {examples} examples of the training set: every micro-batch \
                 would repeat each example {} times or more; set batch_size to at most {examples}",
                c.batch_size,
                c.batch_size / examples
            )));
        }
        if self.adapter.trainable().is_empty() {
            return Err(PeftError::Config(
                "the adapter has no trainable parameters".into(),
            ));
        }
        if c.gradient_checkpointing && !self.model.supports_gradient_checkpointing() {
            return Err(PeftError::Config(format!(
                "gradient_checkpointing = true, but the {} model does not run its layers as one checkpointable \
                 stack (an encoder-decoder such as T5); set gradient_checkpointing = false",
                self.model.spec().architecture
            )));
        }
        if c.batch_size < self.comm.size() {
            return Err(PeftError::Config(format!(
                "batch_size {} is smaller than the {} processes of this job: each process needs at least one \
                 example of every micro-batch; raise batch_size (the global batch) or start fewer processes",
                c.batch_size,
                self.comm.size()
            )));
        }
        Ok(())
    }
}
