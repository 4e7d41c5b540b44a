//! `peft serve`: an HTTP server of OpenAI's completions API over one frozen model and any number of
//! adapters, which run side by side in one continuously batched engine ([`peft_train::engine`]). The
//! model loads once; adapters load at start (`--adapter name=DIR`) or at run time (`POST /v1/adapters`).
//! See [`crate::serve::api`] for the routes.
//!
//! ```
//! // `--adapter` takes NAME=DIR.
//! let (name, dir) = peft_cli::commands::serve::parse_named_adapter("sql=runs/sql/adapter").unwrap();
//! assert_eq!((name.as_str(), dir.to_str().unwrap()), ("sql", "runs/sql/adapter"));
//! assert!(peft_cli::commands::serve::parse_named_adapter("runs/sql/adapter").is_err());
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use peft_core::model::BaseModel;
use peft_train::engine::Engine;

use crate::serve::api::{load_adapter, router, unix_now, Server};
use crate::serve::worker::EngineHandle;
use crate::session::{adapter_options, open_model};

/// Arguments of `peft serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Zoo name, HF model folder, .gguf file or hub id (a decoder-only model with a tokenizer).
    #[arg(long)]
    model: String,
    /// An adapter to load at start, as NAME=DIR (repeat for more); requests name it in `adapter`.
    #[arg(long = "adapter", value_name = "NAME=DIR", value_parser = parse_named_adapter)]
    adapters: Vec<(String, PathBuf)>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Most requests decoded at once; more wait in a queue.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Load adapters even if their tensors hold NaN or infinite values.
    #[arg(long)]
    allow_non_finite: bool,
}

/// Parses `--adapter NAME=DIR`.
pub fn parse_named_adapter(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !name.contains('/') && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!(
            "`{s}` is not NAME=DIR: give the name requests use, `=`, and the adapter folder (sql=runs/sql/adapter)"
        )),
    }
}

/// Runs `peft serve` until interrupted (Ctrl-C).
pub fn run(args: ServeArgs) -> Result<()> {
    if args.max_batch == 0 {
        bail!("--max-batch 0 would serve nothing: give at least 1");
    }
    for (i, (name, _)) in args.adapters.iter().enumerate() {
        if args.adapters[..i].iter().any(|(n, _)| n == name) {
            bail!("--adapter names `{name}` twice: give each adapter its own name");
        }
        if *name == args.model {
            bail!("--adapter `{name}` has the base model's name: pick another");
        }
    }
    let loaded = open_model(&args.model)?;
    let model: Arc<dyn BaseModel> = Arc::from(loaded.model);
    let mut engine = Engine::new(model.clone(), args.max_batch)?;
    let tokenizer = Arc::new(loaded.tokenizer.context(
        "this model has no tokenizer (tokenizer.json), so the server cannot read prompts",
    )?);
    let options = adapter_options(args.allow_non_finite);
    for (name, dir) in &args.adapters {
        let adapter = load_adapter(model.as_ref(), Some(tokenizer.as_ref()), dir, &options)?;
        engine.add_adapter(name, adapter)?;
        eprintln!("loaded adapter `{name}` from {}", dir.display());
    }
    let (engine, _thread) = EngineHandle::start(engine).context("starting the engine's thread")?;
    let server = Arc::new(Server {
        engine,
        model,
        tokenizer,
        eos: loaded.eos_token_id,
        base_name: args.model.clone(),
        started: unix_now(),
        adapter_options: options,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    runtime.block_on(async move {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        // Scripts wait for this line (with --port 0 it is the only way to learn the port).
        println!("peft serve: listening on http://{bound}");
        std::io::stdout().flush()?;
        axum::serve(listener, router(server))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .with_context(|| format!("serving on {bound}"))
    })
}
