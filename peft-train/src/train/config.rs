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
