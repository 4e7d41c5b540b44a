//! Evaluation during training: every `eval_every` steps and at the last, rank 0 evaluates on the dev set,
//! logs the metrics and keeps the best adapter so far in `output_dir/best` (by the task's primary metric).
//!
//! ```no_run
//! # fn demo(model: &dyn peft_core::model::BaseModel, adapter: &dyn peft_core::method::Adapter,
//! #         task: &dyn peft_train::task::Task) -> peft_core::Result<()> {
//! use peft_train::train::{TrainConfig, Trainer};
//! let config = TrainConfig { max_steps: 300, eval_every: 100, ..TrainConfig::default() };
//! let report = Trainer::new(model, adapter, task, config).run()?;
//! let steps: Vec<usize> = report.evals.iter().map(|(step, _)| *step).collect();
//! assert_eq!(steps, [100, 200, 300]);
//! let (best_step, _value) = report.best.unwrap();
//! assert!(steps.contains(&best_step));
//! # Ok(()) }
//! ```

use std::time::Instant;

use super::checkpoint::TrainerState;
use super::finite::diverged;
use super::run::Run;
use super::trainer::{TrainReport, Trainer};
use crate::task::{Metrics, Tuned};
use peft_core::adapter_io::save_adapter;
use peft_core::error::{PeftError, Result};

impl Trainer<'_> {
    /// Whether the run evaluates after `step` steps: every `eval_every` (0: never before the last) and at the
    /// last.
    pub(super) fn evaluation_due(&self, step: usize) -> bool {
        let c = &self.config;
        (c.eval_every > 0 && step.is_multiple_of(c.eval_every)) || step == c.max_steps
    }

    /// Evaluates on the dev set, logs the metrics and keeps the best adapter: rank 0's work (the one with the
    /// metrics log); other ranks do nothing.
    pub(super) fn evaluate(&self, run: &mut Run) -> Result<()> {
        let Run {
            state,
            report,
            log,
            bar,
            ..
        } = run;
        let Some(log) = log.as_mut() else {
            return Ok(());
        };
        let eval_started = Instant::now();
        let evaluation = self.task.evaluate_outcomes(
            self.model,
            &Tuned::of(self.adapter),
            self.config.eval_batch_size,
        )?;
        let metrics = evaluation.metrics;
        report
            .eval_seconds
            .push(eval_started.elapsed().as_secs_f64());
        // A non-finite evaluation stops the run before it can replace `best/` or be logged.
        if let Some((name, value)) = metrics.iter().find(|(_, v)| !v.is_finite()) {
            let what = format!("the evaluation's {name} ({value})");
            return Err(diverged(state.step, &what, &self.config));
        }
        self.keep_if_best(state, report, &metrics)?;
        let mut record = serde_json::json!({ "step": state.step });
        for (k, v) in &metrics {
            record[format!("eval_{k}")] = serde_json::json!(v);
        }
        log.write(&record)?;
        let line = format!(
            "step {}: {}",
            state.step,
            metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // A hidden bar drops its lines: off a terminal the result goes to stderr as a plain line.
        if self.plain_progress() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
        report.evals.push((state.step, metrics));
        report.last_outcomes = evaluation.outcomes;
        Ok(())
    }

    /// Records `metrics` as the best so far when the task's primary metric improved on the best (or is the
    /// first), saving the adapter to `output_dir/best` when checkpoints are on.
    fn keep_if_best(
        &self,
        state: &mut TrainerState,
        report: &mut TrainReport,
        metrics: &Metrics,
    ) -> Result<()> {
        let (primary, higher_better) = self.task.primary_metric();
        let value = *metrics.get(primary).ok_or_else(|| {
            PeftError::Unsupported(format!(
                "task {} did not report its metric {primary}",
                self.task.name()
            ))
        })?;
        let better = match state.best_metric {
            None => true,
            Some(best) => (higher_better && value > best) || (!higher_better && value < best),
        };
        if better {
            state.best_metric = Some(value);
            state.best_step = Some(state.step);
            report.best = Some((state.step, value));
            if self.config.checkpoints {
                let best_dir = self.config.output_dir.join("best");
                save_adapter(&best_dir, self.adapter, self.model.spec())?;
            }
        }
        Ok(())
    }
}
