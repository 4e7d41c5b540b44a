//! `peft eval`: the dev metrics of an experiment, zero-shot (the frozen model alone) or with an adapter.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::experiment::Experiment;
use crate::session::{adapter_options, with_adapter};
use crate::task_setup::build_task;

/// Arguments of `peft eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// The experiment file (model, task, data).
    experiment: PathBuf,
    /// HF PEFT adapter folder; without it the frozen model is evaluated zero-shot.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Load the adapter even if its tensors hold NaN or infinite values (refused by default: such an adapter
    /// comes from a diverged run).
    #[arg(long, requires = "adapter")]
    allow_non_finite: bool,
    /// Examples per evaluation batch (default: the experiment's eval_batch_size).
    #[arg(long)]
    batch_size: Option<usize>,
}

/// Runs `peft eval`: prints the metrics as one JSON object.
pub fn run(args: EvalArgs) -> Result<()> {
    let exp = Experiment::load(&args.experiment)?;
    exp.file.data.locate()?;
    let loaded = crate::session::open_model_with(
        &exp.file.model.name,
        peft_models::LoadOptions {
            keep_quantized: exp.file.model.quantized,
            ..Default::default()
        },
    )?;
    let batch = args.batch_size.unwrap_or(exp.file.training.eval_batch_size);
    let metrics = with_adapter(
        &loaded,
        args.adapter.as_deref(),
        &adapter_options(args.allow_non_finite),
        |tuned| {
            let taken = peft_core::hooks::positions_taken(
                tuned.hooks(),
                loaded.model.spec().hidden_size,
                loaded.model.device(),
            )?;
            let task = build_task(&exp, &loaded, taken)?;
            Ok(task.evaluate(loaded.model.as_ref(), &tuned, batch)?)
        },
    )?;
    println!("{}", serde_json::to_string(&metrics)?);
    Ok(())
}
