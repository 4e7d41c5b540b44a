//! `peft`: parameter-efficient fine-tuning of frozen transformers from the command line.

mod commands;
mod experiment;
mod session;
mod task_setup;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Show a model's architecture and parameter counts, and an adapter's size.
    Inspect(commands::inspect::InspectArgs),
}

fn main() {
    peft_prompt::register();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fetch(a) => commands::fetch::run(a),
        Command::Train(a) => commands::train::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Logits(a) => commands::logits::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Paths given on the command line are taken as they are; this only names the type for the commands.
pub type CliPath = PathBuf;
