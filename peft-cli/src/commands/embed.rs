//! `peft embed`: a sentence embedding as sentence-transformers computes it (the mean of the last hidden
//! state over the non-padding tokens, L2-normalised), printed as one JSON object:
//! `{"input_ids": [...], "embedding": [...]}`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use peft_core::model::Batch;

use crate::session::{adapter_options, open_model, with_adapter, Tokens};

/// Arguments of `peft embed`.
#[derive(Args)]
pub struct EmbedArgs {
    /// Zoo name (`minilm-l6`), HF model folder, .gguf file or hub id.
    #[arg(long)]
    model: String,
    /// HF PEFT adapter folder.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Load the adapter even if its tensors hold NaN or infinite values (refused by default: such an adapter
    /// comes from a diverged run).
    #[arg(long, requires = "adapter")]
    allow_non_finite: bool,
    /// Text to embed (tokenized with the tokenizer's special tokens, as sentence-transformers does).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    text: Option<String>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
}

/// Runs `peft embed`.
pub fn run(args: EmbedArgs) -> Result<()> {
    let loaded = open_model(&args.model)?;
    let ids = Tokens::from_args(args.text.as_deref(), args.ids.as_deref()).resolve(&loaded)?;
    let embedding: Vec<f32> = with_adapter(
        &loaded,
        args.adapter.as_deref(),
        &adapter_options(args.allow_non_finite),
        |tuned| {
            let hooks = tuned.hooks();
            crate::session::check_fits(&loaded, hooks, ids.len())?;
            let model = loaded.model.as_ref();
            let batch = Batch::single(&ids, model.device())?;
            let e = peft_core::grad::no_grad(|| {
                peft_models::sentence::sentence_embedding(model, &batch, hooks)
                    .map_err(peft_core::PeftError::from)
            })?;
            Ok(e.squeeze(0)?.to_vec1::<f32>()?)
        },
    )
    .context("computing the embedding")?;
    println!(
        "{}",
        serde_json::json!({ "input_ids": ids, "embedding": embedding })
    );
    Ok(())
}
