//! One optimiser step: the gradients of `gradient_accumulation_steps` micro-batches, each rank's mean loss
//! weighed by its share of the micro-batch's loss terms over all ranks, summed over the micro-batches (in
//! order) and then over the ranks, clipped to the global norm, and applied by AdamW.
//!
//! ```no_run
//! # fn demo(model: &dyn peft_core::model::BaseModel, adapter: &dyn peft_core::method::Adapter,
//! #         task: &dyn peft_train::task::Task) -> peft_core::Result<()> {
//! use peft_train::train::{TrainConfig, Trainer};
//! // Four micro-batches of 8 examples per optimiser step: the update of one batch of 32.
//! let config = TrainConfig { batch_size: 8, gradient_accumulation_steps: 4, ..TrainConfig::default() };
//! let report = Trainer::new(model, adapter, task, config).run()?;
//! assert_eq!(report.losses.len(), 300);
//! # Ok(()) }
//! ```

use std::time::Instant;

use candle_core::{DType, Tensor, Var};

use super::finite::{diverged, first_non_finite};
use super::optim::{clip_global_norm, gradients, gradients_of, with_method_term};
use super::order::micro_batch;
use super::run::Run;
use super::trainer::Trainer;
use crate::dist::pack::all_reduce_tensors;
use crate::dist::shard;
use peft_core::checkpoint::Checkpointing;
use peft_core::error::{PeftError, Result};
use peft_core::recompute::KeepActivations;

/// What one optimiser step did and measured.
#[derive(Debug, Default)]
pub(super) struct StepOutcome {
    /// The learning rate it applied.
    pub(super) lr: f64,
    /// Its loss: the mean over its micro-batches and ranks.
    pub(super) loss: f64,
    /// The global gradient norm before clipping.
    pub(super) grad_norm: f64,
    /// Real (non-padding) input tokens of its micro-batches, over all ranks.
    pub(super) tokens: usize,
    /// Seconds in forward passes and losses.
    pub(super) forward_seconds: f64,
    /// Seconds in collectives between the ranks.
    pub(super) comm_seconds: f64,
}

impl Trainer<'_> {
    /// Runs the optimiser step that follows `run.state.step` (which it leaves as it is): accumulate, reduce
    /// over the ranks, clip, update.
    pub(super) fn optimiser_step(&self, run: &mut Run) -> Result<StepOutcome> {
        let c = &self.config;
        let step = run.state.step;
        let mut outcome = StepOutcome {
            lr: c.learning_rate * c.schedule.factor(step, c.warmup_steps, c.max_steps),
            ..StepOutcome::default()
        };
        let mut grads = self.accumulate(run, &mut outcome)?;
        if self.comm.size() > 1 {
            self.reduce_over_ranks(&mut grads, &mut outcome)?;
        }
        outcome.grad_norm = clip_global_norm(&mut grads, c.max_grad_norm)?;
        // The guard: nothing non-finite reaches the parameters, and no update leaves one non-finite.
        if !outcome.loss.is_finite() {
            return Err(diverged(
                step + 1,
                &format!("the loss ({})", outcome.loss),
                c,
            ));
        }
        if !outcome.grad_norm.is_finite() {
            let what = format!("the gradient norm before clipping ({})", outcome.grad_norm);
            return Err(diverged(step + 1, &what, c));
        }
        run.optimizer.step(&grads, outcome.lr)?;
        if let Some(name) = first_non_finite(&run.vars)? {
            let what = format!("trainable parameter `{name}` after the update");
            return Err(diverged(step + 1, &what, c));
        }
        self.adapter.after_optimizer_step(step + 1, &grads)?;
        Ok(outcome)
    }

    /// This rank's gradients for the step: the sum over its micro-batches, in order.
    fn accumulate(&self, run: &Run, outcome: &mut StepOutcome) -> Result<Vec<Tensor>> {
        let mut accumulated: Option<Vec<Tensor>> = None;
        for a in 0..self.config.gradient_accumulation_steps {
            let these = self.micro_batch_gradients(run, a, outcome)?;
            accumulated = Some(match accumulated {
                None => these,
                Some(acc) => acc
                    .iter()
                    .zip(&these)
                    .map(|(x, y)| x + y)
                    .collect::<candle_core::Result<_>>()?,
            });
        }
        Ok(accumulated.expect("at least one micro-batch"))
    }

    /// The gradients of micro-batch `a` of the step on this rank's shard: its mean loss weighed by the shard's
    /// share of the micro-batch's loss terms over all ranks (exactly 1 in one process) and divided by the
    /// accumulation steps, so that the sum over micro-batches and ranks is the step's mean loss. Adds that
    /// weighed loss, the micro-batch's tokens and the time taken to `outcome`.
    fn micro_batch_gradients(
        &self,
        run: &Run,
        a: usize,
        outcome: &mut StepOutcome,
    ) -> Result<Vec<Tensor>> {
        let (c, comm) = (&self.config, self.comm);
        let k = run.state.step * c.gradient_accumulation_steps + a;
        let indices = micro_batch(run.train_len, c.batch_size, c.seed, k);
        let forward_started = Instant::now();
        let ours = shard(&indices, comm.rank(), comm.size());
        // Under gradient checkpointing the forward records each layer's input; the backward below then runs
        // the task's forward a second time (the replay) to differentiate the layers one at a time.
        let checkpointing = c.gradient_checkpointing.then(|| {
            let trained: Vec<Tensor> = run
                .vars
                .iter()
                .map(|(_, v)| v.as_tensor().clone())
                .collect();
            Checkpointing::new(run.tuned.hooks(), dropout_seed(c.seed, k), &trained)
        });
        let checkpointed = checkpointing.as_ref().map(|ck| run.tuned.with_hooks(ck));
        let tuned = checkpointed.as_ref().unwrap_or(&run.tuned);
        // `recompute_mlp = false`: hooks that claim every site, so that the models keep each block composed.
        let keep = (!c.recompute_mlp).then(|| KeepActivations(tuned.hooks()));
        let kept = keep.as_ref().map(|k| tuned.with_hooks(k));
        let tuned = kept.as_ref().unwrap_or(tuned);
        let out = self.task.loss(self.model, tuned, ours)?;
        outcome.forward_seconds += forward_started.elapsed().as_secs_f64();
        // The micro-batch's loss terms and tokens over all ranks.
        let mut counts = [out.terms as f64, out.tokens as f64];
        if comm.size() > 1 {
            let t = Instant::now();
            comm.all_reduce_sum_f64(&mut counts)?;
            outcome.comm_seconds += t.elapsed().as_secs_f64();
        }
        if counts[0] == 0.0 {
            return Err(nothing_to_learn(a, run.state.step, indices.len()));
        }
        outcome.tokens += counts[1] as usize;
        if out.terms == 0 {
            // This rank's shard has no labelled token: it adds nothing, the other shards carry the
            // micro-batch (as the whole micro-batch's mean would).
            return zeros_like(&run.vars);
        }
        let share = out.terms as f64 / counts[0];
        let loss = with_method_term(out.loss, self.adapter)?;
        let scaled = ((loss * share)? / c.gradient_accumulation_steps as f64)?;
        outcome.loss += scaled.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        match &checkpointing {
            None => gradients(&scaled, &run.vars),
            Some(ck) => {
                let mut grads = ck.backward(&scaled)?;
                if ck.replay_pending() {
                    // The replay's loss is computed again from the recorded output, untracked; only the
                    // gradients it leaves in the hooks count.
                    self.task.loss(self.model, tuned, ours)?;
                    grads.extend(ck.take_gradients()?)?;
                }
                gradients_of(&grads, &run.vars)
            }
        }
    }

    /// Sums the step's gradients (one packed buffer) and then its loss over the ranks.
    fn reduce_over_ranks(&self, grads: &mut [Tensor], outcome: &mut StepOutcome) -> Result<()> {
        let t = Instant::now();
        all_reduce_tensors(self.comm, grads)?;
        let mut loss = [outcome.loss];
        self.comm.all_reduce_sum_f64(&mut loss)?;
        outcome.loss = loss[0];
        outcome.comm_seconds += t.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Zero gradients for each of `vars`: a shard that adds nothing to the step.
/// The dropout stream's seed of micro-batch `k` of a run seeded `seed`, for checkpointed layers.
fn dropout_seed(seed: u64, k: usize) -> u64 {
    seed.rotate_left(32) ^ (k as u64).wrapping_mul(0xD134_2543_DE82_EF95)
}

fn zeros_like(vars: &[(String, Var)]) -> Result<Vec<Tensor>> {
    vars.iter()
        .map(|(_, var)| Ok(var.as_tensor().zeros_like()?))
        .collect()
}

/// The error for micro-batch `a` (0-based) of step `step` (0-based) with no loss term on any rank.
fn nothing_to_learn(a: usize, step: usize, examples: usize) -> PeftError {
    PeftError::Data(format!(
        "micro-batch {} of step {} has nothing to learn from: every label of its {} examples is \
         -100 (answers cut off by truncation?); raise the length limit or drop such examples",
        a + 1,
        step + 1,
        examples
    ))
}
