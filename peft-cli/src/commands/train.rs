//! `peft train`: the main job. Opens the model (fetching a zoo model on first use), measures the zero-shot
//! dev metrics of the frozen model, trains the experiment's method with the shared trainer, and prints the
//! dev metrics after training. Outputs: `<output_dir>/{metrics.jsonl, checkpoint/, best/, adapter/}`.
//!
//! Every setting, and what needs the task (a batch far above the training set, say), is checked before
//! the zero-shot evaluation; `output_dir` is then locked for the whole command (a second `peft train` on it
//! is refused, naming this one). The checkpoints record a digest of the data files' content and the task, so
//! that `--resume` after either changed is refused.
//!
//! Under `mpirun -np N` (a build with the `mpi` feature) every rank loads the model and trains its share of each
//! global batch; rank 0 alone evaluates, prints and writes the outputs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use peft_core::hooks::positions_taken;
use peft_core::lock::DirLock;
use peft_train::dist::Communicator;
use peft_train::task::{Metrics, Tuned};
use peft_train::train::Trainer;

use crate::experiment::{Experiment, TaskKind};
use crate::session::{build_adapter, open_model_for};
use crate::task_setup::{build_baseline_task, build_task, majority_baseline};

/// Arguments of `peft train`.
#[derive(Args)]
pub struct TrainArgs {
    /// The experiment file.
    experiment: PathBuf,
    /// Override `[training] max_steps`.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Override `[training] output_dir`.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Override `[training] seed`.
    #[arg(long)]
    seed: Option<u64>,
    /// Continue from `<output_dir>/checkpoint`.
    #[arg(long)]
    resume: bool,
    /// Skip the zero-shot evaluation before training.
    #[arg(long)]
    no_baseline: bool,
    /// Evaluate on the first N dev examples only (as HF's `run_glue.py --max_eval_samples`): a smoke run's
    /// evaluations take seconds; its numbers are not the dev set's.
    #[arg(long, value_name = "N")]
    max_eval_samples: Option<usize>,
    /// Keep the GGUF model's weights in their block formats (QLoRA-style), as `[model] quantized = true` does.
    #[arg(long)]
    keep_quantized: bool,
    /// Mixed precision: the frozen projections stored and multiplied in bf16, as `[training] precision =
    /// "bf16"` does.
    #[arg(long)]
    bf16: bool,
    /// Gradient checkpointing, as `[training] gradient_checkpointing = true` does.
    #[arg(long)]
    gradient_checkpointing: bool,
}

fn show(metrics: &Metrics) -> String {
    metrics
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `peft train`.
pub fn run(args: TrainArgs, comm: &dyn Communicator) -> Result<()> {
    let mut exp = Experiment::load(&args.experiment)?;
    if let Some(n) = args.max_eval_samples {
        exp.file.data.eval = exp.file.data.eval.with_limit_at_most(n);
    }
    exp.file.model.quantized |= args.keep_quantized;
    let cfg = &mut exp.file.training;
    if args.bf16 {
        cfg.precision = peft_train::train::Precision::Bf16;
    }
    cfg.gradient_checkpointing |= args.gradient_checkpointing;
    if let Some(s) = args.max_steps {
        cfg.max_steps = s;
        if s > 0 && cfg.warmup_steps > s {
            // A short run of a long experiment (a smoke run): its warm-up shrinks with it, said aloud.
            eprintln!(
                "note: --max-steps {s} is below warmup_steps {}: warm-up shortened to {s} steps",
                cfg.warmup_steps
            );
            cfg.warmup_steps = s;
        }
    }
    if let Some(d) = args.output_dir {
        cfg.output_dir = d;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    cfg.resume |= args.resume;
    cfg.check()?;
    exp.file.data.locate()?;
    let loaded = open_model_for(&exp)?;
    let model = loaded.model.as_ref();
    let spec = model.spec();
    let adapter = build_adapter(&exp, &loaded)?;
    let taken = positions_taken(adapter.as_ref(), spec.hidden_size, model.device())?;
    let task = build_task(&exp, &loaded, taken)?;
    let cfg = exp.file.training.clone();
    let root = comm.is_root();
    let trainer = Trainer::new(model, adapter.as_ref(), task.as_ref(), cfg.clone())
        .with_communicator(comm)
        .with_inputs_digest(exp.inputs_digest()?);
    // Everything the run needs is checked before the zero-shot evaluation, which takes minutes.
    trainer.check()?;
    if !root {
        // The other ranks train their shards in silence; rank 0 reports for the job.
        trainer.run()?;
        return Ok(());
    }
    let trainer = trainer.with_output_lock(DirLock::acquire(&cfg.output_dir, "output_dir")?);
    if comm.size() > 1 {
        eprintln!(
            "data-parallel over {} processes ({}): each global batch of {} split over them, {} compute \
             thread(s) per process",
            comm.size(),
            comm.describe(),
            cfg.batch_size,
            candle_core::utils::get_num_threads()
        );
    }
    eprintln!(
        "model {} ({} parameters), method {}, {} trainable parameters ({:.4}%), {} training examples",
        spec.name_or_path,
        spec.num_parameters,
        serde_json::to_value(adapter.config())?["peft_type"],
        adapter.num_trainable(),
        100.0 * adapter.num_trainable() as f64 / spec.num_parameters.max(1) as f64,
        task.train_len()
    );

    for note in adapter.notes() {
        eprintln!("note: {note}");
    }
    let before = if args.no_baseline {
        None
    } else {
        let t = Instant::now();
        match build_baseline_task(&exp, &loaded)? {
            Some(task) => {
                let m = task.evaluate(model, &Tuned::frozen(), cfg.eval_batch_size)?;
                println!(
                    "dev before training (zero-shot, frozen model): {} [{:.0}s]",
                    show(&m),
                    t.elapsed().as_secs_f64()
                );
                Some(m)
            }
            None if exp.file.task.kind == TaskKind::TokenClassification => {
                println!(
                    "dev before training: none (the frozen model has no token-classification head)"
                );
                None
            }
            None => {
                let (label, accuracy) = majority_baseline(&exp)?;
                println!(
                    "dev baseline (majority class `{label}` of the training set; the model has no LM head for \
                     a zero-shot verbalizer): accuracy {accuracy:.4}"
                );
                Some(Metrics::from([("accuracy".to_string(), accuracy)]))
            }
        }
    };
    let t = Instant::now();
    let report = trainer.run()?;
    let after = report
        .evals
        .last()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    if after.is_empty() {
        // A resume of a checkpoint at the last step: its evaluation was logged by the run that wrote it.
        println!(
            "dev after {} steps: evaluated before the checkpoint this run resumed (see {})",
            cfg.max_steps,
            cfg.output_dir.join("metrics.jsonl").display()
        );
    } else {
        println!(
            "dev after {} steps: {} [{:.0}s of training]",
            cfg.max_steps,
            show(&after),
            t.elapsed().as_secs_f64()
        );
    }
    if let Some((step, value)) = report.best {
        println!(
            "best {}: {value:.4} at step {step} (adapter in {})",
            task.primary_metric().0,
            cfg.output_dir.join("best").display()
        );
    }
    if let (Some(b), Some((name, _))) = (before, Some(task.primary_metric())) {
        if let (Some(x), Some(y)) = (b.get(name), after.get(name)) {
            println!("{name}: {x:.4} -> {y:.4}");
        }
    }
    println!(
        "final adapter: {}",
        cfg.output_dir.join("adapter").display()
    );
    Ok(())
}
