//! The training settings: the `[training]` table of an experiment file, every field with a default.
//!
//! ```
//! use peft_train::train::TrainConfig;
//! let cfg: TrainConfig = toml::from_str("max_steps = 10\ngradient_accumulation_steps = 4").unwrap();
//! assert_eq!((cfg.max_steps, cfg.batch_size * cfg.gradient_accumulation_steps), (10, 32));
//! assert_eq!(TrainConfig::default().output_dir, std::path::PathBuf::from("out"));
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::optim::AdamWConfig;
use super::schedule::Schedule;
use peft_core::error::{PeftError, Result};

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
    /// Write a training record to the metrics log every N steps (0: none). Default 10.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Save a resumable checkpoint every N steps (0: at each evaluation). Default 0.
    #[serde(default)]
    pub save_every: usize,
    /// Output folder: `metrics.jsonl`, `checkpoint/`, `best/`, `adapter/`. Default `out`.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// Continue from `output_dir/checkpoint` when it exists; `metrics.jsonl` then drops what steps after the
    /// checkpoint had logged, and the resumed run logs them again. A checkpoint written with another seed,
    /// batch size, gradient accumulation or inputs digest is refused; one that a killed run left between two
    /// renames is recovered first; with no checkpoint at all the run warns and starts from step 0. Default
    /// false.
    #[serde(default)]
    pub resume: bool,
    /// Show progress on rank 0: a bar when stderr is a terminal, else (a log file, CI, `nohup`) one plain line
    /// on stderr with each training record (every `log_every` steps and the last), e.g.
    /// `step 150/300  loss 0.3596  1234 tok/s  elapsed 8m12s  left ~8m10s`, the time left estimated from
    /// this run's mean time per step since its start or resume. Default true; false shows nothing.
    #[serde(default = "default_true")]
    pub progress: bool,
    /// Write resumable checkpoints (and the best adapter) at all. Default true; `peft compare` turns it off,
    /// since it reruns an interrupted cell from its start and a full fine-tuning checkpoint is the whole model.
    #[serde(default = "default_true")]
    pub checkpoints: bool,
    /// Gradient checkpointing, transformers' `gradient_checkpointing`: the backward keeps only each layer's
    /// input and runs each layer again to differentiate it (one more forward of the layers per step), which
    /// cuts the activation memory to about one layer's. The gradients are those of a run without it (with
    /// dropout above 0 the masks are drawn from a per-step stream instead, so they differ). Decoders and BERT;
    /// refused for T5. Default false.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Run the MLP blocks that no adapter touches (GPT-2's and LLaMA's, with prompt and prefix methods or
    /// LoRA on the attention) as one op that keeps only its input for the backward and computes the norm, the
    /// up and gate products and the activation again there (`peft_core::recompute`). SmolLM2's peak at 8 x 128
    /// drops by about 0.7 GB for two more products per layer. Default true; false keeps every activation, for
    /// the step time.
    #[serde(default = "default_true")]
    pub recompute_mlp: bool,
    /// The frozen weights' precision: `"f32"` (default), or `"bf16"`, mixed precision as torch.autocast runs
    /// it: the frozen projections' weights stored in bf16 and multiplied on the CPU's bf16 units (their inputs
    /// rounded to bf16, the products accumulated in f32), everything else (activations, norms, attention,
    /// the adapter's weights, the optimiser's state, the loss) in f32.
    #[serde(default)]
    pub precision: Precision,
}

/// The precision the frozen projections run in ([`TrainConfig::precision`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights and products.
    #[default]
    F32,
    /// bf16 weights, bf16 products accumulated in f32.
    Bf16,
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

impl TrainConfig {
    /// Refuses settings that cannot train, naming the setting, its value and what it must be: batch sizes
    /// and `max_steps` of at least 1, a finite positive learning rate, a finite `max_grad_norm` of at least 0,
    /// AdamW's betas in [0, 1), a finite positive `eps`, a finite `weight_decay` of at least 0, and no more
    /// warm-up steps than steps. Cheap: call it before any model is loaded.
    ///
    /// ```
    /// use peft_train::train::TrainConfig;
    /// assert!(TrainConfig::default().check().is_ok());
    /// let zero = TrainConfig { max_steps: 0, ..TrainConfig::default() };
    /// assert!(zero.check().unwrap_err().to_string().contains("max_steps"));
    /// ```
    pub fn check(&self) -> Result<()> {
        let o = &self.optimizer;
        let problems = [
            (self.batch_size == 0).then(|| format!("batch_size is {}: it must be at least 1", self.batch_size)),
            (self.gradient_accumulation_steps == 0)
                .then(|| "gradient_accumulation_steps is 0: it must be at least 1".to_string()),
            (self.eval_batch_size == 0).then(|| "eval_batch_size is 0: it must be at least 1".to_string()),
            (self.max_steps == 0).then(|| "max_steps is 0: a run needs at least 1 optimiser step".to_string()),
            (!(self.learning_rate.is_finite() && self.learning_rate > 0.0)).then(|| {
                format!(
                    "learning_rate is {}: it must be a finite number above 0",
                    self.learning_rate
                )
            }),
            (!(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0)).then(|| {
                format!(
                    "max_grad_norm is {}: it must be a finite number, at least 0 (0 turns clipping off)",
                    self.max_grad_norm
                )
            }),
            (!(0.0..1.0).contains(&o.beta1))
                .then(|| format!("optimizer.beta1 is {}: it must be in [0, 1)", o.beta1)),
            (!(0.0..1.0).contains(&o.beta2))
                .then(|| format!("optimizer.beta2 is {}: it must be in [0, 1)", o.beta2)),
            (!(o.eps.is_finite() && o.eps > 0.0))
                .then(|| format!("optimizer.eps is {}: it must be a finite number above 0", o.eps)),
            (!(o.weight_decay.is_finite() && o.weight_decay >= 0.0)).then(|| {
                format!(
                    "optimizer.weight_decay is {}: it must be a finite number, at least 0",
                    o.weight_decay
                )
            }),
            (self.warmup_steps > self.max_steps).then(|| {
                format!(
                    "warmup_steps ({}) exceeds max_steps ({}): the learning rate would never reach its peak; \
                     lower warmup_steps or raise max_steps",
                    self.warmup_steps, self.max_steps
                )
            }),
        ];
        let problems: Vec<String> = problems.into_iter().flatten().collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PeftError::Config(format!(
                "[training] {}",
                problems.join("; ")
            )))
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(toml_text: &str) -> String {
        let cfg: TrainConfig = toml::from_str(toml_text).unwrap();
        cfg.check().unwrap_err().to_string()
    }

    #[test]
    fn every_setting_that_cannot_train_is_refused_by_name() {
        for (text, needle) in [
            ("batch_size = 0", "batch_size is 0"),
            (
                "gradient_accumulation_steps = 0",
                "gradient_accumulation_steps is 0",
            ),
            ("eval_batch_size = 0", "eval_batch_size is 0"),
            ("max_steps = 0", "max_steps is 0"),
            ("learning_rate = nan", "learning_rate is NaN"),
            ("learning_rate = -0.1", "learning_rate is -0.1"),
            ("learning_rate = 0.0", "learning_rate is 0"),
            ("learning_rate = inf", "learning_rate is inf"),
            ("max_grad_norm = nan", "max_grad_norm is NaN"),
            ("max_grad_norm = -1.0", "max_grad_norm is -1"),
            ("optimizer = { beta1 = 1.0 }", "optimizer.beta1 is 1"),
            ("optimizer = { beta2 = -0.5 }", "optimizer.beta2 is -0.5"),
            ("optimizer = { beta2 = nan }", "optimizer.beta2 is NaN"),
            ("optimizer = { eps = 0.0 }", "optimizer.eps is 0"),
            (
                "optimizer = { weight_decay = -0.01 }",
                "optimizer.weight_decay is -0.01",
            ),
            (
                "max_steps = 5\nwarmup_steps = 6",
                "warmup_steps (6) exceeds max_steps (5)",
            ),
        ] {
            let err = refusal(text);
            assert!(err.contains(needle), "{text}: {needle:?} not in {err}");
        }
    }

    #[test]
    fn several_problems_are_named_together_and_good_settings_pass() {
        let err = refusal("batch_size = 0\nlearning_rate = -1.0");
        assert!(
            err.contains("batch_size is 0") && err.contains("learning_rate is -1"),
            "{err}"
        );
        let fine: TrainConfig = toml::from_str(
            "max_steps = 5\nwarmup_steps = 5\nmax_grad_norm = 0.0\noptimizer = { beta1 = 0.0, weight_decay = 0.1 }",
        )
        .unwrap();
        fine.check().unwrap();
    }
}
