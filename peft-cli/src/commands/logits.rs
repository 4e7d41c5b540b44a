//! `peft logits`: the logits of the last input position, as one JSON object other tools rely on:
//! `{"input_ids": [...], "top_k": [[token_id, logit], ...]}` sorted by logit, virtual tokens not listed.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use peft_core::adapter_io::load_adapter;
use peft_core::generate::last_logits;
use peft_core::hooks::Hooks;
use peft_models::LoadedModel;

use crate::session::{init_ctx, open_model, with_adapter, Tokens};

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
    /// Merge the adapter into the frozen weights first (LoRA, IA3): the logits must not change.
    #[arg(long, requires = "adapter")]
    merge: bool,
    /// How many logits to list.
    #[arg(long, default_value_t = 20)]
    top_k: usize,
}

/// Runs `peft logits`.
pub fn run(args: LogitsArgs) -> Result<()> {
    let mut loaded = open_model(&args.model)?;
    let ids = Tokens::from_args(args.text.as_deref(), args.ids.as_deref()).resolve(&loaded)?;
    if args.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    if args.merge {
        let dir = args.adapter.as_deref().context("--merge needs --adapter")?;
        let adapter = load_adapter(dir, &mut init_ctx(&loaded, 0))?.adapter;
        adapter
            .merge_into(loaded.model.as_mut())
            .with_context(|| format!("merging {}", dir.display()))?;
        let json = top_logits(&loaded, adapter.as_ref(), &ids, args.top_k)?;
        println!("{json}");
        return Ok(());
    }
    let json = with_adapter(&loaded, args.adapter.as_deref(), |hooks| {
        top_logits(&loaded, hooks, &ids, args.top_k)
    })
    .context("computing logits")?;
    println!("{json}");
    Ok(())
}

/// The `top_k` last-position logits of `ids` as the command's JSON object.
fn top_logits(
    loaded: &LoadedModel,
    hooks: &dyn Hooks,
    ids: &[u32],
    top_k: usize,
) -> Result<serde_json::Value> {
    crate::session::check_fits(loaded, hooks, ids.len())?;
    let logits: Vec<f32> = last_logits(loaded.model.as_ref(), hooks, ids)?.to_vec1()?;
    let mut ranked: Vec<(usize, f32)> = logits.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(top_k);
    let top: Vec<serde_json::Value> = ranked
        .iter()
        .map(|(i, v)| serde_json::json!([i, v]))
        .collect();
    Ok(serde_json::json!({ "input_ids": ids, "top_k": top }))
}
