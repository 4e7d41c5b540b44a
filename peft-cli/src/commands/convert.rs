//! `peft convert`: a LoRA adapter started from PiSSA or OLoRA (`init_lora_weights = "pissa"`, `"pissa_niter_K"`,
//! `"olora"`), written as the plain LoRA of rank 2r that makes the same change to the original weights (HF
//! PEFT's `save_pretrained(path_initial_model_for_weight_conversion = ...)`): it loads without recomputing the
//! starting factors, stacks with other adapters, and an HF PEFT user needs no residual model for it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use peft_core::adapter_io::{load_adapter_tensors, read_adapter_config, save_adapter};
use peft_lora::LoraConfig;

use crate::session::{init_ctx, open_model};

/// Arguments of `peft convert`.
#[derive(Args)]
pub struct ConvertArgs {
    /// Zoo name, HF model folder, .gguf file or hub id: the base the adapter was trained on.
    #[arg(long)]
    model: String,
    /// The PiSSA / OLoRA adapter folder (HF PEFT's format).
    #[arg(long)]
    adapter: PathBuf,
    /// Where to write the plain LoRA adapter (a new folder; replaced whole if it exists).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `peft convert`: writes the folder and prints one JSON line about it.
pub fn run(args: ConvertArgs) -> Result<()> {
    if args.out.exists() && same_folder(&args.out, &args.adapter) {
        bail!(
            "--out {} is the adapter folder itself: write the converted adapter to a new folder",
            args.out.display()
        );
    }
    let loaded = open_model(&args.model)?;
    // Read as LoRA and built once: PiSSA's SVD runs a single time.
    let method = read_adapter_config(&args.adapter)?;
    let mut value = serde_json::to_value(&method)?;
    if value["peft_type"] != "LORA" {
        bail!(
            "{} is a {} adapter: only LoRA adapters started from PiSSA or OLoRA convert to plain LoRA",
            args.adapter.display(),
            value["peft_type"]
        );
    }
    value
        .as_object_mut()
        .context("an adapter config is a JSON object")?
        .remove("peft_type");
    let config: LoraConfig = serde_json::from_value(value)?;
    let lora = config.build_lora(&mut init_ctx(&loaded, 0))?;
    load_adapter_tensors(&args.adapter, &lora, loaded.model.device())
        .with_context(|| format!("loading adapter {}", args.adapter.display()))?;
    let plain = lora.to_plain_lora()?;
    save_adapter(&args.out, &plain, loaded.model.spec())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}",
        serde_json::json!({
            "converted": args.out,
            "from_init": config.init_lora_weights,
            "r": plain.lora_config().r,
            "lora_alpha": plain.lora_config().lora_alpha,
        })
    );
    Ok(())
}

fn same_folder(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
