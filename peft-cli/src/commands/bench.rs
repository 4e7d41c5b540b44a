//! `peft bench`: times training steps of one method on one model through the shared trainer, on seeded random
//! token ids, and prints the medians after a warm-up step:
//!
//! ```text
//! peft bench --model random:gpt2-124m --method lora --batch 4 --seq 128 --steps 5 --json
//! {"step_s_median": 1.9, "forward_s_median": 0.7, "peak_rss_mb": 1200.0, "tokens_per_s": 270.0, ...}
//! ```
//!
//! A step is what [`peft_train::train::Trainer`] runs: the task's forward pass and loss, the backward pass,
//! global-norm clipping and the AdamW update. `--task causal-lm` puts the loss on every position (labels are
//! the inputs, as `labels=input_ids` in transformers); `--task classify` is verbalizer classification with two
//! label words at the last position. The method is a tag with HF PEFT's defaults ([`METHOD_TAGS`]) or a TOML
//! file holding a method table (an experiment's `[method]` or the table itself).
//!
//! Under `mpirun -np N` (a build with the `mpi` feature) the step is data-parallel: `--batch` is the global
//! batch, split over the processes, and rank 0 prints, adding the time a step spends in collectives
//! (`comm_s_median`: transfers plus any wait for a slower rank) and the time of the gradients' all-reduce alone
//! (`allreduce_s_median`, timed after training with every rank in step).

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use peft_core::method::PeftMethod;
use peft_train::dist::Communicator;
use peft_train::task::{CausalLm, ClassExample, LmExample, Task, VerbalizerClassification};
use peft_train::train::{Precision, TrainConfig, Trainer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::experiment::parse_method;
use crate::measure::{median, minor_page_faults, peak_rss_bytes};
use crate::session::{init_ctx, open_model_with};

/// The method tags `--method` takes, each with the config it stands for (HF PEFT's defaults otherwise).
pub const METHOD_TAGS: [(&str, &str); 13] = [
    (
        "prompt-tuning",
        "peft_type = \"PROMPT_TUNING\"\nnum_virtual_tokens = 20",
    ),
    (
        "p-tuning",
        "peft_type = \"P_TUNING\"\nnum_virtual_tokens = 20",
    ),
    (
        "prefix-tuning",
        "peft_type = \"PREFIX_TUNING\"\nnum_virtual_tokens = 20",
    ),
    (
        "lora",
        "peft_type = \"LORA\"\nr = 8\nlora_alpha = 16\nlora_dropout = 0.0",
    ),
    (
        "dora",
        "peft_type = \"LORA\"\nr = 8\nlora_alpha = 16\nlora_dropout = 0.0\nuse_dora = true",
    ),
    (
        "pissa",
        "peft_type = \"LORA\"\nr = 8\nlora_alpha = 16\nlora_dropout = 0.0\ninit_lora_weights = \"pissa\"",
    ),
    ("bitfit", "peft_type = \"BITFIT\""),
    ("vera", "peft_type = \"VERA\"\nr = 256"),
    ("loha", "peft_type = \"LOHA\"\nr = 8\nalpha = 16"),
    ("lokr", "peft_type = \"LOKR\"\nr = 8\nalpha = 16"),
    (
        "adalora",
        "peft_type = \"ADALORA\"\ninit_r = 12\ntarget_r = 8\ntotal_step = 1000",
    ),
    ("ln-tuning", "peft_type = \"LN_TUNING\""),
    ("oft", "peft_type = \"OFT\"\noft_block_size = 32"),
];

/// What the loss is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTask {
    /// Next-token loss on every position.
    CausalLm,
    /// Two-class verbalizer classification at the last position.
    Classify,
}

/// Arguments of `peft bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Zoo name, model folder, .gguf file, hub id, or `random:gpt2-124m` / `random:llama-135m`.
    #[arg(long)]
    model: String,
    /// A method tag (prompt-tuning, p-tuning, prefix-tuning, lora, dora, pissa, bitfit, vera, loha, lokr, adalora, ln-tuning, oft) or a TOML
    /// file with a method table.
    #[arg(long)]
    method: String,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence (virtual tokens come on top).
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed steps, after one warm-up step.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// The loss.
    #[arg(long, value_enum, default_value_t = BenchTask::CausalLm)]
    task: BenchTask,
    /// Threads for candle and the kernels (sets RAYON_NUM_THREADS; default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
    /// Keep a GGUF model's weights in their block formats (QLoRA-style) instead of dequantizing them to f32.
    #[arg(long)]
    keep_quantized: bool,
    /// The frozen projections' precision (`bf16`: weights stored in bf16, products on the CPU's bf16 units,
    /// everything else f32; `[training] precision`).
    #[arg(long, value_enum, default_value_t = BenchPrecision::F32)]
    precision: BenchPrecision,
    /// Gradient checkpointing: keep only each layer's input for the backward and run the layers again
    /// (`[training] gradient_checkpointing`).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Keep every MLP block's activations for the backward instead of recomputing the blocks no adapter
    /// touches (`[training] recompute_mlp = false`): more memory, less time.
    #[arg(long)]
    no_recompute_mlp: bool,
}

/// `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchPrecision {
    /// f32 weights and products.
    F32,
    /// bf16 frozen weights and products, f32 elsewhere.
    Bf16,
}

/// Runs `peft bench`.
pub fn run(args: BenchArgs, comm: &dyn Communicator) -> Result<()> {
    if args.batch == 0 || args.seq < 2 || args.steps == 0 {
        bail!("--batch and --steps must be at least 1 and --seq at least 2");
    }
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        // Read by candle and rayon when their thread pools start, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let method = resolve_method(&args.method)?;
    let loaded = open_model_with(
        &args.model,
        peft_models::LoadOptions {
            keep_quantized: args.keep_quantized,
            bf16_projections: args.precision == BenchPrecision::Bf16,
            ..Default::default()
        },
    )?;
    let model = loaded.model.as_ref();
    let spec = model.spec();
    if args.seq > spec.max_positions {
        bail!(
            "--seq {} exceeds the model's {} positions",
            args.seq,
            spec.max_positions
        );
    }
    let adapter = method
        .build(&mut init_ctx(&loaded, 0))
        .with_context(|| format!("building `{}` on {}", args.method, args.model))?;
    let task = synthetic_task(
        args.task,
        spec.vocab_size,
        args.batch,
        args.seq,
        args.steps + 1,
    )?;
    let output_dir = std::env::temp_dir().join(format!("peft-bench-{}", std::process::id()));
    let config = TrainConfig {
        batch_size: args.batch,
        max_steps: args.steps + 1,
        warmup_steps: 0,
        log_every: 0,
        eval_every: 0,
        checkpoints: false,
        gradient_checkpointing: args.gradient_checkpointing,
        recompute_mlp: !args.no_recompute_mlp,
        precision: match args.precision {
            BenchPrecision::F32 => Precision::F32,
            BenchPrecision::Bf16 => Precision::Bf16,
        },
        output_dir: output_dir.clone(),
        ..TrainConfig::default()
    };
    let faults_before = minor_page_faults();
    let report = Trainer::new(model, adapter.as_ref(), task.as_ref(), config)
        .with_communicator(comm)
        .run();
    let faults_per_step = (minor_page_faults() - faults_before) as f64 / (args.steps + 1) as f64;
    let _ = std::fs::remove_dir_all(&output_dir);
    let report = report?;
    // The first step pays for one-time work (allocations, thread start-up): it is the warm-up.
    let step = median(&report.step_seconds[1..]).unwrap_or(0.0);
    let forward = median(&report.forward_seconds[1..]).unwrap_or(0.0);
    let communication = median(&report.comm_seconds[1..]).unwrap_or(0.0);
    let transfer = all_reduce_seconds(comm, adapter.num_trainable())?;
    if !comm.is_root() {
        return Ok(());
    }
    let peak_mb = peak_rss_bytes() as f64 / (1024.0 * 1024.0);
    let tokens_per_s = (args.batch * args.seq) as f64 / step.max(1e-12);
    let threads = candle_core::utils::get_num_threads();
    if args.json {
        let out = serde_json::json!({
            "step_s_median": step,
            "forward_s_median": forward,
            "comm_s_median": communication,
            "allreduce_s_median": transfer,
            "processes": comm.size(),
            "peak_rss_mb": peak_mb,
            "tokens_per_s": tokens_per_s,
            "model": args.model,
            "method": args.method,
            "task": format!("{:?}", args.task),
            "batch": args.batch,
            "seq": args.seq,
            "steps": args.steps,
            "threads": threads,
            "trainable_parameters": adapter.num_trainable(),
            "minor_faults_per_step": faults_per_step,
            "allocator": crate::ALLOCATOR,
            "element_wise_spin_limit": std::env::var(crate::CANDLE_SPIN_ENV).ok(),
            "matmul": peft_kernels::matmul_backend(),
            "precision": format!("{:?}", args.precision).to_lowercase(),
            "bf16_kernel": peft_kernels::bf16::bf16_kernel_name(),
            "gradient_checkpointing": args.gradient_checkpointing,
            "recompute_mlp": !args.no_recompute_mlp,
            // What the MLP blocks no adapter touches keep for the backward (GPT-2's and LLaMA's).
            "mlp_blocks": match (args.no_recompute_mlp, args.precision) {
                (true, _) => "composed",
                (false, BenchPrecision::Bf16) => "kept-bf16",
                (false, _) => "recomputed",
            },
            "step_s": &report.step_seconds[1..],
        });
        println!("{out}");
    } else {
        let processes = if comm.size() > 1 {
            format!(
                "{} processes x {threads} threads, in collectives {communication:.4} s of which the \
                 gradients' all-reduce {transfer:.4} s",
                comm.size()
            )
        } else {
            format!("{threads} threads")
        };
        println!(
            "{} on {} ({}x{}, {processes}): step {step:.3} s (forward {forward:.3} s), \
             {tokens_per_s:.0} tokens/s, peak RSS {peak_mb:.0} MB (rank 0), {} trainable parameters",
            args.method,
            args.model,
            args.batch,
            args.seq,
            adapter.num_trainable()
        );
    }
    Ok(())
}

/// Median time of one all-reduce of `n` f32 (the trainable gradients' packed buffer) over 10, with every rank
/// already in step, so that no wait for a slower rank is counted; 0 in one process.
fn all_reduce_seconds(comm: &dyn Communicator, n: usize) -> Result<f64> {
    if comm.size() == 1 {
        return Ok(0.0);
    }
    let mut buffer = vec![1f32; n];
    // One untimed round: the ranks leave training at different moments.
    comm.all_reduce_sum_f32(&mut buffer)?;
    let mut times = Vec::with_capacity(10);
    for _ in 0..10 {
        let started = std::time::Instant::now();
        comm.all_reduce_sum_f32(&mut buffer)?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(median(&times).unwrap_or(0.0))
}

/// The method a tag or a TOML file names.
pub fn resolve_method(method: &str) -> Result<Box<dyn PeftMethod>> {
    if let Some((_, toml)) = METHOD_TAGS.iter().find(|(tag, _)| *tag == method) {
        let table: toml::Table = toml::from_str(toml).expect("the tag configs parse");
        return parse_method(&table, toml);
    }
    let path = Path::new(method);
    if !path.is_file() {
        bail!(
            "`{method}` is neither a method tag ({}) nor a TOML file",
            METHOD_TAGS.map(|(t, _)| t).join(", ")
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {method}"))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {method} as TOML"))?;
    let table = match table.get("method") {
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => bail!("{method}: `method` must be a table"),
        None => table,
    };
    parse_method(&table, &text).with_context(|| format!("the method in {method}"))
}

/// `batches` batches of `batch` sequences of `seq` seeded random token ids (all real, no padding).
fn synthetic_task(
    kind: BenchTask,
    vocab: usize,
    batch: usize,
    seq: usize,
    batches: usize,
) -> Result<Box<dyn Task>> {
    let mut rng = StdRng::seed_from_u64(0);
    let mut ids = || -> Vec<u32> {
        (0..seq)
            .map(|_| rng.random_range(0..vocab as u32))
            .collect()
    };
    let n = batch * batches;
    Ok(match kind {
        BenchTask::CausalLm => {
            let mut example = || {
                let input_ids = ids();
                let labels = input_ids.iter().map(|&t| t as i64).collect();
                LmExample { input_ids, labels }
            };
            let train = (0..n).map(|_| example()).collect();
            let eval = vec![example()];
            Box::new(CausalLm::new(train, eval, 0)?)
        }
        BenchTask::Classify => {
            let mut example = |label: usize| ClassExample {
                input_ids: ids(),
                label,
                token_type_ids: Vec::new(),
            };
            let train = (0..n).map(|i| example(i % 2)).collect();
            let eval = vec![example(0)];
            let words = vec![1.min(vocab as u32 - 1), 2.min(vocab as u32 - 1)];
            Box::new(VerbalizerClassification::new(train, eval, words, 0)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tag_parses_and_unknown_names_are_explained() {
        for (tag, _) in METHOD_TAGS {
            resolve_method(tag).unwrap_or_else(|e| panic!("{tag}: {e:#}"));
        }
        let err = format!("{:#}", resolve_method("loraa").unwrap_err());
        assert!(
            err.contains("prompt-tuning") && err.contains("loraa"),
            "{err}"
        );
    }

    #[test]
    fn a_method_file_may_hold_an_experiment_method_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "[method]\npeft_type = \"LORA\"\nr = 4\n").unwrap();
        let m = resolve_method(path.to_str().unwrap()).unwrap();
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["r"], 4);
        std::fs::write(&path, "peft_type = \"LORA\"\nrank = 4\n").unwrap();
        assert!(resolve_method(path.to_str().unwrap()).is_err());
    }

    #[test]
    fn synthetic_tasks_have_the_asked_shape() {
        let t = synthetic_task(BenchTask::CausalLm, 50, 3, 7, 2).unwrap();
        assert_eq!(t.train_len(), 6);
        let t = synthetic_task(BenchTask::Classify, 50, 2, 5, 4).unwrap();
        assert_eq!(t.train_len(), 8);
    }
}
