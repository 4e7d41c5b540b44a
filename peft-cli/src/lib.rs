//! The `peft` command as a library: [`run`] parses the command line and runs it. The `peft` binary is
//! `peft_cli::run()`; a crate that adds a method (see `examples/ia3`) links its method and calls the same
//! function, so its binary is the whole `peft` command with one more `peft_type`.
//!
//! ```no_run
//! // A third-party binary's main: link your method (its typetag registration), then hand over to the CLI.
//! let code = peft_cli::run();
//! std::process::exit(code);
//! ```

pub mod commands;
pub mod compare;
pub mod experiment;
pub mod input_file;
pub mod launch;
pub mod measure;
#[cfg(feature = "mpi")]
pub mod mpi_comm;
pub mod plots;
pub mod serve;
pub mod session;
pub mod task_file;
pub mod task_setup;

use std::path::PathBuf;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "mimalloc")]
extern "C" {
    // mimalloc's option setter; `libmimalloc-sys` links the library but exports this only with its
    // `extended` feature, which pulls in more than this one call.
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

/// Keeps freed memory mapped: mimalloc's default hands freed pages back to the kernel after 10 ms, and every
/// training step then faults them in again (measured on GPT-2 124M: 5,000-30,000 faults and 0.3-0.6 s a
/// step, for 10 MB less peak memory). `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn configure_allocator() {
    #[cfg(feature = "mimalloc")]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        const PURGE_DELAY: std::os::raw::c_int = 15; // mi_option_purge_delay in mimalloc.h
                                                     // SAFETY: sets one of mimalloc's options; -1 means never purge. Safe at any time.
        unsafe { mi_option_set(PURGE_DELAY, -1) };
    }
}

/// The environment variable for how long candle's element-wise workers spin before they park.
pub const CANDLE_SPIN_ENV: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Parks candle's element-wise workers as soon as their op is done. candle runs element-wise ops on a thread
/// pool of its own beside rayon's (which runs the products), and by default its workers spin for 25,000
/// iterations after each op, taking a core from the products' threads: on 2 cores that cost 10-13% of
/// SmolLM2's 8 x 128 LoRA step (1.92-1.93 s against 1.68-1.75 s parked at once). `CANDLE_BARRIER_POOL_SPIN_LIMIT`
/// in the environment still wins. Runs before any thread starts, as candle reads it when its pool starts.
fn configure_element_wise_pool() {
    if std::env::var_os(CANDLE_SPIN_ENV).is_none() {
        std::env::set_var(CANDLE_SPIN_ENV, "1");
    }
}

/// The global allocator this build uses (`peft bench` reports it).
pub const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

use clap::{Parser, Subcommand};
use peft_train::dist::Communicator;

/// Parameter-efficient fine-tuning of frozen transformers (prompt tuning, ...) on candle.
#[derive(Parser)]
#[command(name = "peft", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a zoo model into the cache ($PEFT_HOME, default ~/.cache/peft).
    Fetch(commands::fetch::FetchArgs),
    /// Train the method of an experiment file; prints dev metrics before (zero-shot) and after.
    Train(commands::train::TrainArgs),
    /// Evaluate an experiment's dev set, zero-shot or with an adapter.
    Eval(commands::eval::EvalArgs),
    /// Generate text from a prompt, with an optional adapter.
    Generate(commands::generate::GenerateArgs),
    /// Print the top-k logits of the last input position as one JSON object.
    Logits(commands::logits::LogitsArgs),
    /// Print a sentence embedding (mean-pooled, L2-normalised last hidden state) as one JSON object.
    Embed(commands::embed::EmbedArgs),
    /// Show a model's architecture and parameter counts, and an adapter's size.
    Inspect(commands::inspect::InspectArgs),
    /// Write a LoRA adapter started from PiSSA or OLoRA as plain LoRA of rank 2r against the original weights.
    Convert(commands::convert::ConvertArgs),
    /// Combine LoRA adapters of one base model into one, as HF PEFT's add_weighted_adapter (linear, svd, ties, ...).
    Merge(commands::merge::MergeArgs),
    /// Serve OpenAI's completions API over a model and its adapters, batched continuously (HTTP).
    Serve(commands::serve::ServeArgs),
    /// Time training steps of one method on one model (medians after a warm-up step).
    Bench(commands::bench::BenchArgs),
    /// Run a grid of models x tasks x methods x seeds and write tables and plots (see README).
    Compare(compare::CompareArgs),
    /// Run one cell of a grid (started by `peft compare`).
    #[command(hide = true)]
    CompareCell(compare::CellArgs),
}

/// Parses `std::env::args` and runs the command; returns the process exit code (errors are printed).
pub fn run() -> i32 {
    configure_allocator();
    configure_element_wise_pool();
    link_methods();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => in_job(|comm| commands::train::run(a, comm)),
        Command::Compare(a) => in_job(|comm| compare::run(a, comm)),
        Command::Bench(a) => in_job(|comm| commands::bench::run(a, comm)),
        // A grid cell runs alone, whichever rank started it.
        Command::CompareCell(a) => compare::run_cell(a),
        other => launch::refuse_under_mpi(other.name()).and_then(|()| match other {
            Command::Fetch(a) => commands::fetch::run(a),
            Command::Eval(a) => commands::eval::run(a),
            Command::Generate(a) => commands::generate::run(a),
            Command::Logits(a) => commands::logits::run(a),
            Command::Embed(a) => commands::embed::run(a),
            Command::Inspect(a) => commands::inspect::run(a),
            Command::Convert(a) => commands::convert::run(a),
            Command::Merge(a) => commands::merge::run(a),
            Command::Serve(a) => commands::serve::run(a),
            Command::Train(_)
            | Command::Compare(_)
            | Command::Bench(_)
            | Command::CompareCell(_) => {
                unreachable!("matched above")
            }
        }),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

impl Command {
    /// The subcommand's name on the command line.
    fn name(&self) -> &'static str {
        match self {
            Command::Fetch(_) => "fetch",
            Command::Train(_) => "train",
            Command::Eval(_) => "eval",
            Command::Generate(_) => "generate",
            Command::Logits(_) => "logits",
            Command::Embed(_) => "embed",
            Command::Inspect(_) => "inspect",
            Command::Convert(_) => "convert",
            Command::Merge(_) => "merge",
            Command::Serve(_) => "serve",
            Command::Bench(_) => "bench",
            Command::Compare(_) => "compare",
            Command::CompareCell(_) => "compare-cell",
        }
    }
}

/// Runs `work` as this process's part of its job (one process, or a rank of an MPI job); an error on one
/// rank of several stops them all.
fn in_job(work: impl FnOnce(&dyn Communicator) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let job = launch::Job::start()?;
    let result = work(job.comm());
    if let Err(e) = &result {
        job.stop_on_error(e);
    }
    result
}

/// Links the workspace's method crates, so that their typetag registrations are in every binary.
pub fn link_methods() {
    peft_prompt::register();
    peft_prefix::register();
    peft_lora::register();
    peft_bitfit::register();
    peft_vera::register();
    peft_lycoris::register();
    peft_ln_tuning::register();
    peft_adalora::register();
    peft_oft::register();
    peft_baselines::register();
}

/// Paths given on the command line are taken as they are; this only names the type for the commands.
pub type CliPath = PathBuf;
