//! `peft merge`: LoRA adapters trained on one base model combined into one adapter folder, as HF PEFT's
//! `add_weighted_adapter` combines them (`linear`, `cat`, `svd`, `ties`, `ties_svd`, `dare_linear`,
//! `dare_ties`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune`, `magnitude_prune_svd`). No model is
//! loaded: the adapters' folders are all it reads. See the `peft-merge` crate for what each combination does
//! and where it differs from HF PEFT (DARE's masks come from `--seed`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use peft_merge::{merge_folders, Combination, MajoritySignMethod, MergeOptions};

/// Arguments of `peft merge`.
#[derive(Args)]
pub struct MergeArgs {
    /// A LoRA adapter folder (HF PEFT's format); give one per adapter, in the weights' order.
    #[arg(long = "adapter", required = true)]
    adapters: Vec<PathBuf>,
    /// One weight per adapter, comma-separated (`0.5,0.5`; negative weights subtract).
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        allow_hyphen_values = true
    )]
    weights: Vec<f64>,
    /// How to combine: linear, cat, svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd,
    /// magnitude_prune, magnitude_prune_svd (HF PEFT's default: svd).
    #[arg(long, default_value = "svd")]
    combination: String,
    /// Fraction of entries kept, in (0, 1], for ties, dare_* and magnitude_prune*.
    #[arg(long)]
    density: Option<f64>,
    /// TIES' sign election: total (the sign of the sum) or frequency (the sign most adapters have).
    #[arg(long, default_value = "total")]
    majority_sign_method: String,
    /// Rank of the merged adapter for the SVD combinations (default: the largest input rank).
    #[arg(long)]
    svd_rank: Option<usize>,
    /// Clamp the SVD factors at this quantile of their entries, in [0, 1] (HF's svd_clamp).
    #[arg(long)]
    svd_clamp: Option<f64>,
    /// Seed of DARE's random masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the merged adapter (a new folder; replaced whole if it exists).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `peft merge`: writes the folder and prints one JSON line about it.
pub fn run(args: MergeArgs) -> Result<()> {
    let combination: Combination = args.combination.parse()?;
    let options = MergeOptions {
        density: args.density,
        majority_sign_method: args.majority_sign_method.parse::<MajoritySignMethod>()?,
        svd_rank: args.svd_rank,
        svd_clamp: args.svd_clamp,
        seed: args.seed,
        ..MergeOptions::new(combination, args.weights)
    };
    let merged = merge_folders(&args.adapters, &options, &args.out)?;
    let config = merged.config();
    println!(
        "{}",
        serde_json::json!({
            "merged": args.out,
            "adapters": args.adapters,
            "weights": options.weights,
            "combination": merged.combination().name(),
            "r": merged.rank(),
            "lora_alpha": config.lora_alpha,
            "modules": merged.modules().len(),
            "rank_pattern": config.rank_pattern,
            "target_modules": config.target_modules,
        })
    );
    Ok(())
}
