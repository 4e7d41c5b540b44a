//! The training loop.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::checkpoint::{load_checkpoint, save_checkpoint, TrainerState};
use super::metrics_log::MetricsLog;
use super::optim::{clip_global_norm, AdamW, AdamWConfig};
use super::order::micro_batch;
use super::schedule::Schedule;
use crate::adapter_io::save_adapter;
use crate::dist::pack::{all_reduce_tensors, broadcast_tensors};
use crate::dist::{shard, Communicator, SingleProcess};
use crate::error::{PeftError, Result};
use crate::hooks::Hooks;
use crate::method::Adapter;
use crate::model::BaseModel;
use crate::task::{Metrics, Task};

/// Training settings (the `[training]` table of an experiment file). Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed of the data order (and, through the experiment, of the adapter's initialisation). Default 42.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Optimiser steps. Default 300.
    #[serde(default = "default_max_steps")]
    pub max_steps: usize,
    /// Examples per micro-batch. Default 8.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Micro-batches per optimiser step (effective batch = batch_size x this). Default 1.
    #[serde(default = "default_one")]
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate. Default 3e-2 (prompt tuning's usual AdamW rate).
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// Learning-rate schedule after warm-up: `linear` (default), `cosine` or `constant`.
    #[serde(default)]
    pub schedule: Schedule,
    /// Linear warm-up steps. Default 0.
    #[serde(default)]
    pub warmup_steps: usize,
    /// AdamW settings (`beta1`, `beta2`, `eps`, `weight_decay`); biases and norms never decay.
    #[serde(default)]
    pub optimizer: AdamWConfig,
    /// Global gradient-norm clip; 0 disables. Default 1.0.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// Evaluate every N optimiser steps (0: only at the end). Default 0.
    #[serde(default)]
    pub eval_every: usize,
    /// Examples per evaluation batch. Default 16.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Write a training record to the metrics log every N steps. Default 10.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Save a resumable checkpoint every N steps (0: at each evaluation). Default 0.
    #[serde(default)]
    pub save_every: usize,
    /// Output folder: `metrics.jsonl`, `checkpoint/`, `best/`, `adapter/`. Default `out`.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// Continue from `output_dir/checkpoint` when it exists; `metrics.jsonl` then drops what steps after the
    /// checkpoint had logged, and the resumed run logs them again. Default false.
    #[serde(default)]
    pub resume: bool,
    /// Show a progress bar on a terminal. Default true.
    #[serde(default = "default_true")]
    pub progress: bool,
    /// Write resumable checkpoints (and the best adapter) at all. Default true; `peft compare` turns it off,
    /// since it reruns an interrupted cell from its start and a full fine-tuning checkpoint is the whole model.
    #[serde(default = "default_true")]
    pub checkpoints: bool,
}

fn default_seed() -> u64 {
    42
}
fn default_max_steps() -> usize {
    300
}
fn default_batch_size() -> usize {
    8
}
fn default_one() -> usize {
    1
}
fn default_lr() -> f64 {
    3e-2
}
fn default_clip() -> f64 {
    1.0
}
fn default_eval_batch() -> usize {
    16
}
fn default_log_every() -> usize {
    10
}
fn default_output_dir() -> PathBuf {
    PathBuf::from("out")
}
fn default_true() -> bool {
    true
}

impl Default for TrainConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

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
/// the ranks ([`shard`]), each rank's mean loss is weighed by its share of the loss terms, the gradients are
/// summed over the ranks once per optimiser step (one packed buffer), and clipping and AdamW then run on
/// equal gradients on every rank, so that the adapters stay equal. Rank 0 alone evaluates and writes the log,
/// checkpoints and adapters; a resumed run reads the checkpoint on rank 0 and sends it to the others.
pub struct Trainer<'a> {
    model: &'a dyn BaseModel,
    adapter: &'a dyn Adapter,
    task: &'a dyn Task,
    config: TrainConfig,
    comm: &'a dyn Communicator,
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
        let c = &self.config;
        let comm = self.comm;
        let root = comm.is_root();
        let stop = stop.min(c.max_steps);
        self.validate()?;
        let vars = self.adapter.trainable();
        let mut optimizer = AdamW::new(vars.clone(), c.optimizer);
        let checkpoint_dir = c.output_dir.join("checkpoint");
        let mut state = TrainerState {
            step: 0,
            best_metric: None,
            best_step: None,
            seed: c.seed,
        };
        // Rank 0 alone looks for a checkpoint: the others may not share its file system.
        let mut found = [f64::from(u8::from(
            root && c.resume && checkpoint_dir.join("trainer_state.json").is_file(),
        ))];
        comm.all_reduce_sum_f64(&mut found)?;
        let resumed = found[0] > 0.0;
        if resumed && root {
            state = load_checkpoint(&checkpoint_dir, self.adapter, &mut optimizer)?;
            if state.seed != c.seed {
                return Err(PeftError::Config(format!(
                    "the checkpoint in {} was trained with seed {}, this run has seed {}: resume with the same seed",
                    checkpoint_dir.display(),
                    state.seed,
                    c.seed
                )));
            }
        }
        if comm.size() > 1 {
            self.share_start(&mut state, &mut optimizer, resumed)?;
        }
        let log_path = c.output_dir.join("metrics.jsonl");
        let mut log = match (root, resumed) {
            (false, _) => None,
            (true, false) => Some(MetricsLog::create(&log_path, false)?),
            (true, true) => Some(MetricsLog::resume(&log_path, state.step)?),
        };
        let mut report = TrainReport {
            start_step: state.step,
            optimizer_state_bytes: optimizer.state_bytes(),
            ..TrainReport::default()
        };
        if let (Some(step), Some(value)) = (state.best_step, state.best_metric) {
            report.best = Some((step, value));
        }
        let bar = self.progress_bar(state.step);
        let hooks: &dyn Hooks = self.adapter;
        let n = self.task.train_len();
        let started = Instant::now();
        let (mut window_tokens, mut window_start) = (0usize, Instant::now());

        while state.step < stop {
            let lr = c.learning_rate * c.schedule.factor(state.step, c.warmup_steps, c.max_steps);
            let step_started = Instant::now();
            let mut accumulated: Option<Vec<Tensor>> = None;
            let mut step_loss = 0f64;
            let (mut forward_seconds, mut comm_seconds) = (0f64, 0f64);
            for a in 0..c.gradient_accumulation_steps {
                let k = state.step * c.gradient_accumulation_steps + a;
                let indices = micro_batch(n, c.batch_size, c.seed, k);
                let forward_started = Instant::now();
                let out =
                    self.task
                        .loss(self.model, hooks, shard(&indices, comm.rank(), comm.size()))?;
                forward_seconds += forward_started.elapsed().as_secs_f64();
                // The micro-batch's loss terms and tokens over all ranks: each rank's mean loss counts in
                // proportion to its terms (a share of exactly 1 in one process).
                let mut counts = [out.terms as f64, out.tokens as f64];
                if comm.size() > 1 {
                    let t = Instant::now();
                    comm.all_reduce_sum_f64(&mut counts)?;
                    comm_seconds += t.elapsed().as_secs_f64();
                }
                if counts[0] == 0.0 {
                    return Err(PeftError::Data(format!(
                        "micro-batch {} of step {} has nothing to learn from: every label of its {} examples is \
                         -100 (answers cut off by truncation?); raise the length limit or drop such examples",
                        a + 1,
                        state.step + 1,
                        indices.len()
                    )));
                }
                window_tokens += counts[1] as usize;
                report.tokens += counts[1] as usize;
                let mut these = Vec::with_capacity(vars.len());
                if out.terms == 0 {
                    // This rank's shard has no labelled token: it adds nothing, the other shards carry the
                    // micro-batch (as the whole micro-batch's mean would).
                    for (_, var) in &vars {
                        these.push(var.as_tensor().zeros_like()?);
                    }
                } else {
                    let share = out.terms as f64 / counts[0];
                    let scaled = ((out.loss * share)? / c.gradient_accumulation_steps as f64)?;
                    step_loss += scaled
                        .to_dtype(candle_core::DType::F64)?
                        .to_scalar::<f64>()?;
                    let grads = scaled.backward()?;
                    for (name, var) in &vars {
                        let g = grads.get(var.as_tensor()).ok_or_else(|| {
                            PeftError::Unsupported(format!(
                                "trainable parameter `{name}` received no gradient: the forward pass does not \
                                 use it or an op without backward cut the graph"
                            ))
                        })?;
                        these.push(g.clone());
                    }
                }
                accumulated = Some(match accumulated {
                    None => these,
                    Some(acc) => acc
                        .iter()
                        .zip(&these)
                        .map(|(x, y)| x + y)
                        .collect::<candle_core::Result<_>>()?,
                });
            }
            let mut grads = accumulated.expect("at least one micro-batch");
            if comm.size() > 1 {
                let t = Instant::now();
                all_reduce_tensors(comm, &mut grads)?;
                let mut loss = [step_loss];
                comm.all_reduce_sum_f64(&mut loss)?;
                step_loss = loss[0];
                comm_seconds += t.elapsed().as_secs_f64();
            }
            let grad_norm = clip_global_norm(&mut grads, c.max_grad_norm)?;
            if !step_loss.is_finite() {
                return Err(PeftError::Unsupported(format!(
                    "loss became {step_loss} at step {}: lower the learning rate",
                    state.step + 1
                )));
            }
            optimizer.step(&grads, lr)?;
            state.step += 1;
            report.losses.push(step_loss);
            report
                .step_seconds
                .push(step_started.elapsed().as_secs_f64());
            report.forward_seconds.push(forward_seconds);
            report.comm_seconds.push(comm_seconds);

            let elapsed = window_start.elapsed().as_secs_f64();
            let tokens_per_s = window_tokens as f64 / elapsed.max(1e-9);
            bar.set_position(state.step as u64);
            bar.set_message(format!("loss {step_loss:.4}  {tokens_per_s:.0} tok/s"));
            if c.log_every > 0
                && (state.step.is_multiple_of(c.log_every) || state.step == c.max_steps)
            {
                if let Some(log) = log.as_mut() {
                    let mut record = serde_json::json!({
                        "step": state.step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                        "tokens_per_s": tokens_per_s, "elapsed_s": started.elapsed().as_secs_f64(),
                    });
                    if comm.size() > 1 {
                        record["processes"] = comm.size().into();
                        record["comm_s"] = comm_seconds.into();
                    }
                    log.write(&record)?;
                }
                window_tokens = 0;
                window_start = Instant::now();
            }

            let eval_now = (c.eval_every > 0 && state.step.is_multiple_of(c.eval_every))
                || state.step == c.max_steps;
            if let (true, Some(log)) = (eval_now, log.as_mut()) {
                self.evaluate(&mut state, &mut report, log, &bar)?;
            }
            let save_now = if c.save_every > 0 {
                state.step.is_multiple_of(c.save_every)
            } else {
                eval_now
            };
            if save_now && c.checkpoints && root {
                save_checkpoint(
                    &checkpoint_dir,
                    self.adapter,
                    self.model.spec(),
                    &optimizer,
                    &state,
                )?;
            }
        }
        bar.finish_and_clear();
        if !root {
            return Ok(report);
        }
        if state.step < c.max_steps {
            if c.checkpoints {
                save_checkpoint(
                    &checkpoint_dir,
                    self.adapter,
                    self.model.spec(),
                    &optimizer,
                    &state,
                )?;
            }
            return Ok(report);
        }
        save_adapter(
            &c.output_dir.join("adapter"),
            self.adapter,
            self.model.spec(),
        )?;
        Ok(report)
    }

    /// Evaluates on the dev set (rank 0), logs the metrics and keeps the best adapter.
    fn evaluate(
        &self,
        state: &mut TrainerState,
        report: &mut TrainReport,
        log: &mut MetricsLog,
        bar: &ProgressBar,
    ) -> Result<()> {
        let c = &self.config;
        let eval_started = Instant::now();
        let metrics = self
            .task
            .evaluate(self.model, self.adapter, c.eval_batch_size)?;
        report
            .eval_seconds
            .push(eval_started.elapsed().as_secs_f64());
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
            if c.checkpoints {
                save_adapter(&c.output_dir.join("best"), self.adapter, self.model.spec())?;
            }
        }
        let mut record = serde_json::json!({ "step": state.step });
        for (k, v) in &metrics {
            record[format!("eval_{k}")] = serde_json::json!(v);
        }
        log.write(&record)?;
        bar.println(format!(
            "step {}: {}",
            state.step,
            metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        report.evals.push((state.step, metrics));
        Ok(())
    }

    /// Gives every rank rank 0's start: its trainable variables (so that the copies are equal whatever each
    /// rank's initialisation drew) and, on a resume, its optimiser moments and progress.
    fn share_start(
        &self,
        state: &mut TrainerState,
        optimizer: &mut AdamW,
        resumed: bool,
    ) -> Result<()> {
        let comm = self.comm;
        let vars = self.adapter.trainable();
        let device = vars[0].1.device().clone();
        let mut named: Vec<(String, Tensor)> = vars
            .iter()
            .map(|(k, v)| (format!("param.{k}"), v.as_tensor().clone()))
            .collect();
        if resumed {
            let (moments, _) = optimizer.state();
            named.extend(moments.into_iter().map(|(k, t)| (format!("optim.{k}"), t)));
        }
        let received: std::collections::HashMap<String, Tensor> =
            broadcast_tensors(comm, &named, &device)?
                .into_iter()
                .collect();
        for (name, var) in &vars {
            let value = received.get(&format!("param.{name}")).ok_or_else(|| {
                PeftError::Communication(format!(
                    "rank 0 has no trainable `{name}`: every rank must build the same adapter"
                ))
            })?;
            if value.dims() != var.dims() {
                return Err(PeftError::ShapeMismatch {
                    what: name.clone(),
                    expected_from: format!("rank {}'s adapter", comm.rank()),
                    expected: var.dims().to_vec(),
                    got_from: "rank 0's adapter".into(),
                    got: value.dims().to_vec(),
                });
            }
            var.set(value)?;
        }
        let mut bytes =
            serde_json::to_vec(state).map_err(|e| PeftError::Communication(e.to_string()))?;
        comm.broadcast_bytes(&mut bytes)?;
        *state =
            serde_json::from_slice(&bytes).map_err(|e| PeftError::Communication(e.to_string()))?;
        if resumed {
            let moments = received
                .into_iter()
                .filter_map(|(k, t)| k.strip_prefix("optim.").map(|k| (k.to_string(), t)))
                .collect();
            optimizer.load_state(&moments, state.step)?;
        }
        Ok(())
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

    fn progress_bar(&self, start: usize) -> ProgressBar {
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
