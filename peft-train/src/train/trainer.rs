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
pub struct Trainer<'a> {
    pub(super) model: &'a dyn BaseModel,
    pub(super) adapter: &'a dyn Adapter,
    pub(super) task: &'a dyn Task,
    pub(super) config: TrainConfig,
    pub(super) comm: &'a dyn Communicator,
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
        }
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
        self.validate()?;
        let mut run = self.start()?;
        while run.state.step < stop {
            let step_started = Instant::now();
            let outcome = self.optimiser_step(&mut run)?;
            run.record(&outcome, step_started);
            self.log_step(&mut run, &outcome)?;
            let eval_now = self.evaluation_due(run.state.step);
            if eval_now {
                self.evaluate(&mut run)?;
            }
            self.checkpoint_if_due(&run, eval_now)?;
        }
        self.finish(run)
    }

    /// Refuses settings that cannot train, before any work.
    fn validate(&self) -> Result<()> {
        let c = &self.config;
        let bad = |m: &str| Err(PeftError::Config(m.to_string()));
        if c.batch_size == 0 || c.gradient_accumulation_steps == 0 || c.eval_batch_size == 0 {
            return bad(
                "batch_size, gradient_accumulation_steps and eval_batch_size must be at least 1",
            );
        }
        if !(c.learning_rate.is_finite() && c.learning_rate > 0.0) {
            return bad("learning_rate must be a positive number");
        }
        if self.task.train_len() == 0 {
            return bad("the training set is empty");
        }
        if self.adapter.trainable().is_empty() {
            return bad("the adapter has no trainable parameters");
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
