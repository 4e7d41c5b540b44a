//! `peft logits`: the logits of the last input position, as one JSON object other tools rely on:
//! `{"input_ids": [...], "top_k": [[token_id, logit], ...]}` sorted by logit, virtual tokens not listed.
//! For an encoder-decoder model (T5) the input goes to the encoder and `--decoder-ids` to the decoder; the
//! logits are those of the last decoder position, and the object also lists `"decoder_input_ids"`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use peft_core::hooks::Hooks;
use peft_models::LoadedModel;
use peft_train::generate::{last_decoder_logits, last_logits};

use crate::session::{adapter_options, open_adapter, with_adapter, Tokens};

/// Arguments of `peft logits`.
#[derive(Args)]
pub struct LogitsArgs {
    /// Zoo name, HF model folder, .gguf file or hub id.
    #[arg(long)]
    model: String,
    /// HF PEFT adapter folder.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Load the adapter even if its tensors hold NaN or infinite values (refused by default: such an adapter
    /// comes from a diverged run).
    #[arg(long, requires = "adapter")]
    allow_non_finite: bool,
    /// Text to tokenize (with the tokenizer's special tokens, as HF's `tokenizer(text)` does).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    text: Option<String>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// Merge the adapter into the frozen weights first (LoRA, IA3): the logits must not change.
    #[arg(long, requires = "adapter")]
    merge: bool,
    /// Encoder-decoder models: comma-separated decoder input ids (start with the decoder start token, 0 for
    /// T5); default: the start token alone.
    #[arg(long, value_delimiter = ',')]
    decoder_ids: Option<Vec<u32>>,
    /// How many logits to list.
    #[arg(long, default_value_t = 20)]
    top_k: usize,
    /// Keep a GGUF model's weights in their block formats (QLoRA-style) instead of dequantizing them to f32.
    #[arg(long)]
    keep_quantized: bool,
}

/// Runs `peft logits`.
pub fn run(args: LogitsArgs) -> Result<()> {
    let mut loaded = crate::session::open_model_with(
        &args.model,
        peft_models::LoadOptions {
            keep_quantized: args.keep_quantized,
            ..Default::default()
        },
    )?;
    let ids = Tokens::from_args(args.text.as_deref(), args.ids.as_deref()).resolve(&loaded)?;
    if args.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    if args.merge {
        let dir = args.adapter.as_deref().context("--merge needs --adapter")?;
        let adapter = open_adapter(&loaded, dir, &adapter_options(args.allow_non_finite))?.adapter;
        adapter
            .merge_into(loaded.model.as_mut())
            .with_context(|| format!("merging {}", dir.display()))?;
        let json = top_logits(
            &loaded,
            adapter.as_ref(),
            &ids,
            args.decoder_ids.as_deref(),
            args.top_k,
        )?;
        println!("{json}");
        return Ok(());
    }
    let json = with_adapter(
        &loaded,
        args.adapter.as_deref(),
        &adapter_options(args.allow_non_finite),
        |tuned| {
            let hooks = tuned.hooks();
            top_logits(
                &loaded,
                hooks,
                &ids,
                args.decoder_ids.as_deref(),
                args.top_k,
            )
        },
    )
    .context("computing logits")?;
    println!("{json}");
    Ok(())
}

/// The `top_k` last-position logits of `ids` as the command's JSON object.
fn top_logits(
    loaded: &LoadedModel,
    hooks: &dyn Hooks,
    ids: &[u32],
    decoder_ids: Option<&[u32]>,
    top_k: usize,
) -> Result<serde_json::Value> {
    crate::session::check_fits(loaded, hooks, ids.len())?;
    let model = loaded.model.as_ref();
    let (logits, decoder_ids): (Vec<f32>, Option<Vec<u32>>) = match model.encoder_decoder() {
        Some(ed) => {
            let dec = match decoder_ids {
                Some([]) => bail!("--decoder-ids is empty: give at least the decoder start token"),
                Some(d) => d.to_vec(),
                None => vec![ed.decoder_start_token_id()],
            };
            let logits = last_decoder_logits(model, hooks, ids, &dec)?.to_vec1()?;
            (logits, Some(dec))
        }
        None if decoder_ids.is_some() => bail!(
            "--decoder-ids is for encoder-decoder models (T5); {} is a {} model",
            model.spec().name_or_path,
            model.spec().architecture
        ),
        None => (last_logits(model, hooks, ids)?.to_vec1()?, None),
    };
    // A NaN would sort first (as `null`); a non-finite logit means broken weights, never a ranking.
    if let Some((token, value)) = logits.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let (position, input) = match &decoder_ids {
            Some(dec) => (dec.len() - 1, "decoder input"),
            None => (ids.len().saturating_sub(1), "input"),
        };
        let count = logits.iter().filter(|v| !v.is_finite()).count();
        bail!(
            "the logits at {input} position {position} (the last) are not finite: token {token} has {value}, \
             {count} of {} values are NaN or infinite; the model or adapter weights are broken (NaN / inf values, \
             or a config with a zero or negative norm epsilon)",
            logits.len()
        );
    }
    let mut ranked: Vec<(usize, f32)> = logits.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(top_k);
    let top: Vec<serde_json::Value> = ranked
        .iter()
        .map(|(i, v)| serde_json::json!([i, v]))
        .collect();
    Ok(match decoder_ids {
        Some(dec) => {
            serde_json::json!({ "input_ids": ids, "decoder_input_ids": dec, "top_k": top })
        }
        None => serde_json::json!({ "input_ids": ids, "top_k": top }),
    })
}
