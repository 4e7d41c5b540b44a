//! What a run shows of its progress: the progress bar on a terminal, and the training records of the metrics
//! log (`output_dir/metrics.jsonl`, rank 0 alone), one every `log_every` steps and one at the last step.
//!
//! ```no_run
//! # fn demo(model: &dyn peft_core::model::BaseModel, adapter: &dyn peft_core::method::Adapter,
//! #         task: &dyn peft_train::task::Task) -> peft_core::Result<()> {
//! use peft_train::train::{TrainConfig, Trainer};
//! let config = TrainConfig { max_steps: 25, log_every: 10, progress: false, ..TrainConfig::default() };
//! Trainer::new(model, adapter, task, config).run()?;
//! // Training records of steps 10, 20 and 25 (each with `loss`, `lr`, `grad_norm`, `tokens_per_s`, ...).
//! let log = std::fs::read_to_string("out/metrics.jsonl").unwrap();
//! assert!(log.lines().any(|l| l.contains("\"grad_norm\"")));
//! # Ok(()) }
//! ```

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::metrics_log::MetricsLog;
use super::run::Run;
use super::step::StepOutcome;
use super::trainer::Trainer;
use peft_core::error::Result;

impl Trainer<'_> {
    /// The metrics log on rank 0 (none elsewhere): a new one, or on a resume the old one without what steps
    /// after `step` had logged (the resumed run logs them again).
    pub(super) fn open_log(&self, step: usize, resumed: bool) -> Result<Option<MetricsLog>> {
        let log_path = self.config.output_dir.join("metrics.jsonl");
        Ok(match (self.comm.is_root(), resumed) {
            (false, _) => None,
            (true, false) => Some(MetricsLog::create(&log_path, false)?),
            (true, true) => Some(MetricsLog::resume(&log_path, step)?),
        })
    }

    /// Shows the step that just finished on the progress bar and, when a training record is due, writes it
    /// (rank 0) and starts a new throughput window.
    pub(super) fn log_step(&self, run: &mut Run, outcome: &StepOutcome) -> Result<()> {
        let c = &self.config;
        let step = run.state.step;
        let elapsed = run.window_start.elapsed().as_secs_f64();
        let tokens_per_s = run.window_tokens as f64 / elapsed.max(1e-9);
        run.bar.set_position(step as u64);
        run.bar
            .set_message(format!("loss {:.4}  {tokens_per_s:.0} tok/s", outcome.loss));
        if !(c.log_every > 0 && (step.is_multiple_of(c.log_every) || step == c.max_steps)) {
            return Ok(());
        }
        if let Some(log) = run.log.as_mut() {
            let mut record = serde_json::json!({
                "step": step, "loss": outcome.loss, "lr": outcome.lr, "grad_norm": outcome.grad_norm,
                "tokens_per_s": tokens_per_s, "elapsed_s": run.started.elapsed().as_secs_f64(),
            });
            if self.comm.size() > 1 {
                record["processes"] = self.comm.size().into();
                record["comm_s"] = outcome.comm_seconds.into();
            }
            log.write(&record)?;
        }
        run.window_tokens = 0;
        run.window_start = Instant::now();
        Ok(())
    }

    /// The progress bar from step `start` to `max_steps`; hidden when `progress` is off, and on every rank
    /// but rank 0.
    pub(super) fn progress_bar(&self, start: usize) -> ProgressBar {
        if !self.config.progress || !self.comm.is_root() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(self.config.max_steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(start as u64);
        bar
    }
}
