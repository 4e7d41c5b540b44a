//! `peft logits`: the logits of the last input position, as one JSON object other tools rely on:
//! `{"input_ids": [...], "top_k": [[token_id, logit], ...]}` sorted by logit, virtual tokens not listed.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use peft_core::generate::last_logits;

use crate::session::{open_model, with_adapter, Tokens};

/// Arguments of `peft logits`.
#[derive(Args)]
pub struct LogitsArgs {
    /// Zoo name, HF model folder, .gguf file or hub id.
    #[arg(long)]
    model: String,
    /// HF PEFT adapter folder.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Text to tokenize (with the tokenizer's special tokens, as HF's `tokenizer(text)` does).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    text: Option<String>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// How many logits to list.
    #[arg(long, default_value_t = 20)]
    top_k: usize,
}

/// Runs `peft logits`.
pub fn run(args: LogitsArgs) -> Result<()> {
    let loaded = open_model(&args.model)?;
    let ids = Tokens::from_args(args.text.as_deref(), args.ids.as_deref()).resolve(&loaded)?;
    if args.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    let json = with_adapter(&loaded, args.adapter.as_deref(), |hooks| {
        crate::session::check_fits(&loaded, hooks, ids.len())?;
        let logits: Vec<f32> = last_logits(loaded.model.as_ref(), hooks, &ids)?.to_vec1()?;
        let mut ranked: Vec<(usize, f32)> = logits.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(args.top_k);
        let top: Vec<serde_json::Value> = ranked
            .iter()
            .map(|(i, v)| serde_json::json!([i, v]))
            .collect();
        Ok(serde_json::json!({ "input_ids": ids, "top_k": top }))
    })
    .context("computing logits")?;
    println!("{json}");
    Ok(())
}
