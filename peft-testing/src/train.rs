//! A short run of the shared trainer.

use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_models::LoadedModel;
use peft_train::task::Task;
use peft_train::train::{TrainConfig, TrainReport, Trainer};

/// Trains `adapter` on `task` for `steps` optimiser steps (every other setting at its default, no progress
/// bar), writing the run's outputs to a temporary folder that is removed afterwards.
pub fn train(
    model: &dyn BaseModel,
    adapter: &dyn Adapter,
    task: &dyn Task,
    steps: usize,
    batch_size: usize,
    learning_rate: f64,
) -> TrainReport {
    let out = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        max_steps: steps,
        batch_size,
        learning_rate,
        output_dir: out.path().to_path_buf(),
        progress: false,
        ..TrainConfig::default()
    };
    Trainer::new(model, adapter, task, config).run().unwrap()
}

/// How the tiny `ours-*` fixture adapters are made: `config` built on a tiny fixture model (init seed 7), then
/// 5 steps (batch 2) at `learning_rate` on the [`toy_lm_task`](crate::toy_lm_task).
pub fn toy_trained(
    loaded: &LoadedModel,
    config: &dyn PeftMethod,
    learning_rate: f64,
) -> (Box<dyn Adapter>, TrainReport) {
    let adapter = config.build(&mut crate::init_loaded(loaded, 7)).unwrap();
    let report = train(
        loaded.model.as_ref(),
        adapter.as_ref(),
        &crate::toy_lm_task(),
        5,
        2,
        learning_rate,
    );
    (adapter, report)
}
