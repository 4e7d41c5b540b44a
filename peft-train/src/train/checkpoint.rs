//! Training checkpoints: the adapter (HF PEFT format, for inspection), the trainable variables themselves
//! (`trainable.safetensors`: what a resume restores, since some methods save a folded form that cannot be
//! trained further, as prefix tuning's projection and P-tuning's encoder), the optimiser moments and the
//! trainer state, written to a staging folder and renamed into place, so that a crash leaves the previous
//! checkpoint intact. `trainer_state.json` is written last: a folder holding it is complete.
//!
//! The state records what a resumed run must share with the run that wrote it (seed, batch size, gradient
//! accumulation, a digest of the data and task); a field missing from an older checkpoint reads as unknown
//! (`None`), which a resume accepts with a note.
//!
//! ```no_run
//! # fn demo(adapter: &dyn peft_core::method::Adapter, spec: &peft_core::spec::ModelSpec,
//! #         opt: &peft_train::train::optim::AdamW) -> peft_core::Result<()> {
//! use peft_train::train::checkpoint::{save_checkpoint, TrainerState};
//! let state = TrainerState { step: 100, best_metric: Some(0.9), best_step: Some(100), ..TrainerState::fresh(42) };
//! save_checkpoint(std::path::Path::new("out/checkpoint"), adapter, spec, opt, &state)?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::train::divergence::DivergenceWatch;
use crate::train::optim::AdamW;
use peft_core::adapter_io::{replace_dir, write_adapter_files};
use peft_core::atomic::{save_safetensors, write_atomic};
use peft_core::error::{PeftError, Result};
use peft_core::method::Adapter;
use peft_core::spec::ModelSpec;

/// Trainer progress saved with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps completed.
    pub step: usize,
    /// Best value of the primary metric so far.
    pub best_metric: Option<f64>,
    /// Step at which the best value was reached.
    pub best_step: Option<usize>,
    /// The run's seed (a resumed run must use the same one).
    pub seed: u64,
    /// Examples per micro-batch (a resumed run must use the same; `None` in checkpoints of older versions).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimiser step (the same rule).
    #[serde(default)]
    pub gradient_accumulation_steps: Option<usize>,
    /// The caller's digest of what the run learns from (data files' content, task, template), as given to
    /// [`Trainer::with_inputs_digest`](crate::train::Trainer::with_inputs_digest); `None` when none was given.
    #[serde(default)]
    pub inputs_digest: Option<String>,
    /// What the divergence warning has seen of the losses.
    #[serde(default)]
    pub divergence: DivergenceWatch,
}

impl TrainerState {
    /// The state of a run at step 0 with `seed`, nothing else known yet.
    pub fn fresh(seed: u64) -> Self {
        TrainerState {
            step: 0,
            best_metric: None,
            best_step: None,
            seed,
            batch_size: None,
            gradient_accumulation_steps: None,
            inputs_digest: None,
            divergence: DivergenceWatch::default(),
        }
    }
}

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The method's state between steps ([`Adapter::step_state`]), where it keeps any.
const METHOD_STATE_FILE: &str = "method_state.safetensors";
const TRAINABLE_FILE: &str = "trainable.safetensors";
/// The trainer state's file, written last: a checkpoint folder holding it is complete.
pub const STATE_FILE: &str = "trainer_state.json";

/// Writes a checkpoint folder at `dir`.
pub fn save_checkpoint(
    dir: &Path,
    adapter: &dyn Adapter,
    spec: &ModelSpec,
    optimizer: &AdamW,
    state: &TrainerState,
) -> Result<()> {
    let staging = dir.with_file_name(format!(
        ".{}.staging-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    let written = (|| {
        // Into the staging folder directly: this function renames the whole folder into place itself.
        write_adapter_files(&staging, adapter, spec)?;
        let trainable: Vec<(String, candle_core::Tensor)> = adapter
            .trainable()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        save_safetensors(&staging.join(TRAINABLE_FILE), &trainable, None)?;
        let (tensors, _) = optimizer.state();
        save_safetensors(&staging.join(OPTIMIZER_FILE), &tensors, None)?;
        let method_state = adapter.step_state()?;
        if !method_state.is_empty() {
            save_safetensors(&staging.join(METHOD_STATE_FILE), &method_state, None)?;
        }
        let json =
            serde_json::to_string_pretty(state).map_err(|e| PeftError::Config(e.to_string()))?;
        write_atomic(&staging.join(STATE_FILE), json.as_bytes())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    replace_dir(&staging, dir)
}

/// Restores a checkpoint at `dir` into `adapter` and `optimizer`; returns the trainer state.
pub fn load_checkpoint(
    dir: &Path,
    adapter: &dyn Adapter,
    optimizer: &mut AdamW,
) -> Result<TrainerState> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path)
        .map_err(|e| PeftError::io("reading", &state_path, e))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| PeftError::bad_file(&state_path, e.to_string()))?;
    let device = adapter
        .trainable()
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    restore_trainable(dir, adapter, &device)?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let tensors: HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(&opt_path, &device).map_err(|e| {
            PeftError::bad_file(&opt_path, format!("unreadable optimiser state: {e}"))
        })?;
    optimizer.load_state(&tensors, state.step)?;
    restore_method_state(dir, adapter, &device)?;
    Ok(state)
}

/// Restores the method's state between steps from `dir`; a checkpoint without it suits only a method that
/// keeps none.
fn restore_method_state(
    dir: &Path,
    adapter: &dyn Adapter,
    device: &candle_core::Device,
) -> Result<()> {
    let path = dir.join(METHOD_STATE_FILE);
    if !path.exists() {
        return match adapter.step_state()?.first() {
            None => Ok(()),
            Some((key, _)) => Err(PeftError::bad_file(
                &path,
                format!(
                    "missing: the {} adapter keeps `{key}` between steps, and this checkpoint has none (written \
                     by another method, or by an older version: start the run afresh)",
                    adapter.config().typetag_name()
                ),
            )),
        };
    }
    let saved: HashMap<String, candle_core::Tensor> = candle_core::safetensors::load(&path, device)
        .map_err(|e| PeftError::bad_file(&path, format!("unreadable method state: {e}")))?;
    adapter.load_step_state(&saved)
}

/// Sets every trainable variable of `adapter` from `dir/trainable.safetensors`, by name.
fn restore_trainable(
    dir: &Path,
    adapter: &dyn Adapter,
    device: &candle_core::Device,
) -> Result<()> {
    let path = dir.join(TRAINABLE_FILE);
    let saved: HashMap<String, candle_core::Tensor> = candle_core::safetensors::load(&path, device)
        .map_err(|e| PeftError::bad_file(&path, format!("unreadable trainable state: {e}")))?;
    for (name, var) in adapter.trainable() {
        let value = saved.get(&name).ok_or_else(|| {
            PeftError::bad_file(
                &path,
                format!("no tensor `{name}`: the checkpoint was written by another method or configuration"),
            )
        })?;
        if value.dims() != var.dims() {
            return Err(PeftError::ShapeMismatch {
                what: name,
                expected_from: "the adapter".into(),
                expected: var.dims().to_vec(),
                got_from: format!("checkpoint {}", dir.display()),
                got: value.dims().to_vec(),
            });
        }
        var.set(&value.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
