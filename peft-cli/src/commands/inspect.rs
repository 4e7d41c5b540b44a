//! `peft inspect`: architecture, total and trainable parameters, adapter size.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use peft_core::adapter_io::WEIGHTS_FILE;

use crate::session::{adapter_options, build_adapter, open_adapter, open_model_with};

/// Arguments of `peft inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// Zoo name, HF model folder, .gguf file or hub id.
    #[arg(long)]
    model: String,
    /// HF PEFT adapter folder.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// An experiment file: its method is built on the model (fresh, untrained) and counted.
    #[arg(long, conflicts_with = "adapter")]
    experiment: Option<PathBuf>,
    /// Load the adapter even if its tensors hold NaN or infinite values (refused by default: such an adapter
    /// comes from a diverged run; inspecting one is how to see what it is).
    #[arg(long, requires = "adapter")]
    allow_non_finite: bool,
    /// Keep a GGUF model's weights in their block formats (QLoRA-style) instead of dequantizing them to f32.
    #[arg(long)]
    keep_quantized: bool,
}

/// Runs `peft inspect`: prints one JSON object.
pub fn run(args: InspectArgs) -> Result<()> {
    let loaded = open_model_with(
        &args.model,
        peft_models::LoadOptions {
            keep_quantized: args.keep_quantized,
            ..Default::default()
        },
    )?;
    let spec = loaded.model.spec();
    let mut report = serde_json::json!({
        "model": spec.name_or_path,
        "architecture": spec.architecture,
        "layers": spec.num_layers,
        "hidden_size": spec.hidden_size,
        "attention_heads": spec.num_heads,
        "kv_heads": spec.num_kv_heads,
        "vocab_size": spec.vocab_size,
        "context": spec.max_positions,
        "total_parameters": spec.num_parameters,
        "weight_storage": spec.weight_storage,
        "weight_bytes": spec.weight_storage.values().map(|s| s.bytes).sum::<usize>(),
        "has_tokenizer": loaded.tokenizer.is_some(),
    });
    let adapter = match (&args.adapter, &args.experiment) {
        (Some(dir), _) => {
            let loaded_adapter =
                open_adapter(&loaded, dir, &adapter_options(args.allow_non_finite))?;
            let bytes = std::fs::metadata(dir.join(WEIGHTS_FILE))
                .map(|m| m.len())
                .unwrap_or(0);
            Some((loaded_adapter.adapter, Some(bytes)))
        }
        (None, Some(path)) => {
            let exp = crate::experiment::Experiment::load(path)?;
            Some((build_adapter(&exp, &loaded)?, None))
        }
        (None, None) => None,
    };
    if let Some((adapter, file_bytes)) = adapter {
        let trainable = adapter.num_trainable();
        report["method"] = serde_json::to_value(adapter.config())?["peft_type"].clone();
        report["trainable_parameters"] = trainable.into();
        report["trainable_percent"] =
            (100.0 * trainable as f64 / spec.num_parameters.max(1) as f64).into();
        let notes = adapter.notes();
        if !notes.is_empty() {
            report["notes"] = notes.into();
        }
        if let Some(bytes) = file_bytes {
            report["adapter_file_bytes"] = bytes.into();
        }
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
