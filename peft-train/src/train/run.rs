//! The state of one training run, threaded through the trainer's steps: how it starts (resumed or fresh),
//! what each optimiser step adds to it, when it checkpoints, and how it ends.
//!
//! ```no_run
//! # fn demo(model: &dyn peft_core::model::BaseModel, adapter: &dyn peft_core::method::Adapter,
//! #         task: &dyn peft_train::task::Task) -> peft_core::Result<()> {
//! use peft_train::train::{TrainConfig, Trainer};
//! // A session stopped at step 40 ends with a checkpoint; the next one continues from it to step 100.
//! let config = TrainConfig { max_steps: 100, resume: true, ..TrainConfig::default() };
//! Trainer::new(model, adapter, task, config.clone()).run_until(40)?;
//! let report = Trainer::new(model, adapter, task, config).run()?;
//! assert_eq!((report.start_step, report.losses.len()), (40, 60));
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Var;
use indicatif::ProgressBar;

use super::checkpoint::{save_checkpoint, TrainerState};
use super::metrics_log::MetricsLog;
use super::optim::AdamW;
use super::step::StepOutcome;
use super::trainer::{TrainReport, Trainer};
use crate::task::Tuned;
use peft_core::adapter_io::save_adapter;
use peft_core::error::Result;
use peft_core::lock::DirLock;

/// One run's state: what its steps read and update.
pub(super) struct Run<'a> {
    /// The adapter's trainable variables, in the optimiser's order.
    pub(super) vars: Vec<(String, Var)>,
    pub(super) optimizer: AdamW,
    /// Where resumable checkpoints go (`output_dir/checkpoint`).
    pub(super) checkpoint_dir: PathBuf,
    /// Progress: optimiser steps done, best metric so far.
    pub(super) state: TrainerState,
    /// The metrics log, which rank 0 alone writes (`None` on the other ranks).
    pub(super) log: Option<MetricsLog>,
    pub(super) report: TrainReport,
    pub(super) bar: ProgressBar,
    /// The adapter as the task's loss sees it.
    pub(super) tuned: Tuned<'a>,
    /// Examples in the training set (the data order's range).
    pub(super) train_len: usize,
    /// When the loop began (a training record's `elapsed_s`).
    pub(super) started: Instant,
    /// Tokens since the last training record, and when that window began (its `tokens_per_s`).
    pub(super) window_tokens: usize,
    pub(super) window_start: Instant,
    /// Rank 0's lock on `output_dir`, released when the run ends (`None` when the trainer holds one).
    pub(super) _lock: Option<DirLock>,
}

impl Run<'_> {
    /// Counts in an optimiser step that just finished: one step more, and its loss, timings and tokens.
    pub(super) fn record(&mut self, outcome: &StepOutcome, step_started: Instant) {
        self.window_tokens += outcome.tokens;
        self.report.tokens += outcome.tokens;
        self.state.step += 1;
        self.report.losses.push(outcome.loss);
        self.report
            .step_seconds
            .push(step_started.elapsed().as_secs_f64());
        self.report.forward_seconds.push(outcome.forward_seconds);
        self.report.comm_seconds.push(outcome.comm_seconds);
    }
}

impl<'a> Trainer<'a> {
    /// Starts a run: `output_dir` locked and tidied (rank 0), a fresh start or rank 0's checkpoint on every
    /// rank, the metrics log opened (or trimmed to the checkpoint's step), and the report's start.
    pub(super) fn start(&self) -> Result<Run<'a>> {
        let c = &self.config;
        let lock = self.take_output_dir()?;
        let vars = self.adapter.trainable();
        let mut optimizer = AdamW::new(vars.clone(), c.optimizer);
        let checkpoint_dir = c.output_dir.join("checkpoint");
        let (state, resumed) = self.resume(&checkpoint_dir, &mut optimizer)?;
        let log = self.open_log(state.step, resumed)?;
        let report = TrainReport {
            start_step: state.step,
            optimizer_state_bytes: optimizer.state_bytes(),
            best: state.best_step.zip(state.best_metric),
            ..TrainReport::default()
        };
        Ok(Run {
            bar: self.progress_bar(state.step),
            tuned: Tuned::of(self.adapter),
            train_len: self.task.train_len(),
            started: Instant::now(),
            window_tokens: 0,
            window_start: Instant::now(),
            vars,
            optimizer,
            checkpoint_dir,
            state,
            log,
            report,
            _lock: lock,
        })
    }

    /// Saves a checkpoint when one is due after this step: every `save_every` steps, or, when that is 0, at
    /// each evaluation.
    pub(super) fn checkpoint_if_due(&self, run: &Run, eval_now: bool) -> Result<()> {
        let c = &self.config;
        let save_now = if c.save_every > 0 {
            run.state.step.is_multiple_of(c.save_every)
        } else {
            eval_now
        };
        if save_now {
            self.checkpoint(run)?;
        }
        Ok(())
    }

    /// Writes the resumable checkpoint (rank 0, and only when checkpoints are on).
    fn checkpoint(&self, run: &Run) -> Result<()> {
        if self.config.checkpoints && self.comm.is_root() {
            save_checkpoint(
                &run.checkpoint_dir,
                self.adapter,
                self.model.spec(),
                &run.optimizer,
                &run.state,
            )?;
        }
        Ok(())
    }

    /// Ends the run on rank 0: a checkpoint when it stopped before `max_steps` (a later run resumes it), else
    /// the final adapter in `output_dir/adapter`.
    pub(super) fn finish(&self, run: Run) -> Result<TrainReport> {
        run.bar.finish_and_clear();
        if !self.comm.is_root() {
            return Ok(run.report);
        }
        if run.state.step < self.config.max_steps {
            self.checkpoint(&run)?;
            return Ok(run.report);
        }
        save_adapter(
            &self.config.output_dir.join("adapter"),
            self.adapter,
            self.model.spec(),
        )?;
        Ok(run.report)
    }
}
