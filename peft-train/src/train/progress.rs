//! What a run shows of its progress: the progress bar on a terminal, and the training records of the metrics
//! log (`output_dir/metrics.jsonl`, rank 0 alone), one every `log_every` steps and one at the last step.
//!
//! With `progress` on and stderr not a terminal (a log file, CI, `nohup`), where the bar would stay hidden,
//! rank 0 instead writes one plain line to stderr with each training record, e.g.
//! `step 150/300  loss 0.3596  1234 tok/s  elapsed 8m12s  left ~8m10s`: the record's loss and tokens/s, the
//! time since this run (or resume) began, and the time left at this run's mean time per step so far.
//! `progress = false` shows neither.
//!
//! A run whose loss climbs far above its start is warned once (rank 0), whatever `progress` says: a line on
//! stderr and a record `{"step": N, "warning": "divergence", ...}` in the log (the rule is in
//! [`divergence`](super::divergence)).
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

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::divergence::{FACTOR, WINDOW};
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
        if self.plain_progress() {
            eprintln!(
                "{}",
                plain_line_of(run, c.max_steps, outcome.loss, tokens_per_s)
            );
        }
        run.window_tokens = 0;
        run.window_start = Instant::now();
        Ok(())
    }

    /// Counts the step that just finished in the divergence watch (every rank, so that their states stay
    /// equal) and, the first time the loss has climbed far above its start, warns on rank 0.
    pub(super) fn watch_divergence(&self, run: &mut Run, outcome: &StepOutcome) -> Result<()> {
        let Some(d) = run.state.divergence.observe(outcome.loss) else {
            return Ok(());
        };
        let Some(log) = run.log.as_mut() else {
            return Ok(());
        };
        let step = run.state.step;
        let c = &self.config;
        let clip = if c.max_grad_norm > 0.0 {
            String::new()
        } else {
            ", or clip the gradients with max_grad_norm (now 0, off), e.g. 1.0".to_string()
        };
        let message = format!(
            "the loss is diverging: its mean over the last {WINDOW} steps is {:.4}, more than {FACTOR} times \
             the first step's ({:.4}); the run goes on, but learning_rate {:e} is likely too high: lower \
             it{clip}",
            d.window_mean, d.reference, c.learning_rate
        );
        log.write(&serde_json::json!({
            "step": step, "warning": "divergence", "loss_window_mean": d.window_mean,
            "loss_reference": d.reference, "message": message,
        }))?;
        run.bar
            .suspend(|| eprintln!("warning: step {step}: {message}"));
        Ok(())
    }

    /// Whether this process writes plain progress lines: `progress` on, rank 0, and stderr not a terminal
    /// (where indicatif hides the bar).
    pub(super) fn plain_progress(&self) -> bool {
        self.config.progress && self.comm.is_root() && !std::io::stderr().is_terminal()
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

/// The plain progress line of the step `run` just finished, its time left estimated from the mean time per
/// step since this run (or its resume) began.
fn plain_line_of(run: &Run, max_steps: usize, loss: f64, tokens_per_s: f64) -> String {
    let step = run.state.step;
    let elapsed = run.started.elapsed();
    let done = step.saturating_sub(run.report.start_step);
    let left =
        (done > 0).then(|| elapsed.mul_f64(max_steps.saturating_sub(step) as f64 / done as f64));
    plain_line(step, max_steps, loss, tokens_per_s, elapsed, left)
}

/// One plain progress line: `step 150/300  loss 0.3596  1234 tok/s  elapsed 8m12s  left ~8m10s`, with
/// `left ?` when no estimate is known yet.
fn plain_line(
    step: usize,
    max_steps: usize,
    loss: f64,
    tokens_per_s: f64,
    elapsed: Duration,
    left: Option<Duration>,
) -> String {
    let left = left.map_or_else(|| "?".to_string(), |d| format!("~{}", human_duration(d)));
    format!(
        "step {step}/{max_steps}  loss {loss:.4}  {tokens_per_s:.0} tok/s  elapsed {}  left {left}",
        human_duration(elapsed)
    )
}

/// A duration to the second, as people read it: `42s`, `8m12s`, and from an hour on `1h03m`.
fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64().round() as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds_minutes_or_hours() {
        let s = Duration::from_secs;
        assert_eq!(human_duration(Duration::from_millis(400)), "0s");
        assert_eq!(human_duration(s(42)), "42s");
        assert_eq!(human_duration(Duration::from_millis(59_600)), "1m00s");
        assert_eq!(human_duration(s(8 * 60 + 12)), "8m12s");
        assert_eq!(human_duration(s(3600 + 3 * 60 + 59)), "1h03m");
        assert_eq!(human_duration(s(27 * 3600)), "27h00m");
    }

    #[test]
    fn a_plain_line_has_step_loss_throughput_and_times() {
        let line = plain_line(
            150,
            300,
            0.359_62,
            1234.4,
            Duration::from_secs(492),
            Some(Duration::from_secs(490)),
        );
        assert_eq!(
            line,
            "step 150/300  loss 0.3596  1234 tok/s  elapsed 8m12s  left ~8m10s"
        );
        let long = plain_line(
            10,
            5000,
            2.5,
            87.6,
            Duration::from_secs(75),
            Some(Duration::from_secs(37_425)),
        );
        assert_eq!(
            long,
            "step 10/5000  loss 2.5000  88 tok/s  elapsed 1m15s  left ~10h23m"
        );
    }

    #[test]
    fn a_plain_line_without_a_step_time_has_no_estimate() {
        let line = plain_line(40, 100, 1.0, 0.0, Duration::ZERO, None);
        assert_eq!(
            line,
            "step 40/100  loss 1.0000  0 tok/s  elapsed 0s  left ?"
        );
    }
}
