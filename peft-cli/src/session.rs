//! What every command shares: opening a model (fetching a zoo model on first use), loading an adapter onto
//! it, turning `--text` / `--ids` into token ids, and checking that a prompt fits the context.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use peft_core::adapter_io::{load_adapter_with, AdapterIoOptions, LoadedAdapter};
use peft_core::head::WithClassifier;
use peft_core::hooks::{positions_taken, Hooks};
use peft_core::method::{Adapter, InitCtx};
use peft_models::{LoadOptions, LoadedModel};
use peft_train::task::Tuned;
use peft_train::train::Precision;
use rand::SeedableRng;

use crate::experiment::{Experiment, TaskKind};

/// Opens a model by zoo name, folder, `.gguf` file or hub id, on the CPU. A zoo model that is not cached yet is
/// fetched first.
pub fn open_model(name: &str) -> Result<LoadedModel> {
    open_model_with(name, LoadOptions::default())
}

/// [`open_model`] with options (trainable weights for full fine-tuning). A zoo model not fetched yet is
/// fetched into the cache first (once).
pub fn open_model_with(name: &str, options: LoadOptions) -> Result<LoadedModel> {
    let options = LoadOptions {
        fetch_missing: true,
        ..options
    };
    peft_models::resolve::load_model_with_options(name, &Device::Cpu, options)
        .with_context(|| format!("loading model `{name}`"))
}

/// Opens the experiment's model, with trainable weights where its method trains them (full fine-tuning).
pub fn open_model_for(exp: &Experiment) -> Result<LoadedModel> {
    open_model_with(
        &exp.file.model.name,
        LoadOptions {
            trainable_weights: exp.method.trains_base_weights(),
            keep_quantized: exp.file.model.quantized,
            bf16_projections: exp.file.training.precision == Precision::Bf16,
            ..Default::default()
        },
    )
}

/// A fresh initialisation context over `loaded` with `seed`.
pub fn init_ctx(loaded: &LoadedModel, seed: u64) -> InitCtx<'_> {
    InitCtx {
        model: loaded.model.as_ref(),
        tokenizer: loaded.tokenizer.as_ref(),
        rng: rand::rngs::StdRng::seed_from_u64(seed),
    }
}

/// The experiment's method built fresh on `loaded` (seeded by `[training] seed`), with a trained
/// classification head added for `kind = "classification-head"` and `"token-classification"`.
pub fn build_adapter(exp: &Experiment, loaded: &LoadedModel) -> Result<Box<dyn Adapter>> {
    let mut init = init_ctx(loaded, exp.file.training.seed);
    let adapter = exp.method.build(&mut init)?;
    Ok(match exp.file.task.kind {
        TaskKind::ClassificationHead => {
            let classes = exp.file.task.label_words.as_ref().map_or(0, |v| v.len());
            Box::new(WithClassifier::new(adapter, classes, &mut init)?)
        }
        TaskKind::TokenClassification => {
            let classes = exp.file.task.labels.as_ref().map_or(0, Vec::len);
            Box::new(WithClassifier::new(adapter, classes, &mut init)?.for_tokens())
        }
        _ => adapter,
    })
}

/// The loader's options for `--allow-non-finite`: an adapter holding NaN or infinite values is refused unless
/// the flag is given.
pub fn adapter_options(allow_non_finite: bool) -> AdapterIoOptions {
    AdapterIoOptions { allow_non_finite }
}

/// Loads the adapter folder `dir` onto `loaded` with `options`, printing the loader's warnings (and one more
/// where non-finite tensors were let through).
pub fn open_adapter(
    loaded: &LoadedModel,
    dir: &Path,
    options: &AdapterIoOptions,
) -> Result<LoadedAdapter> {
    let mut init = init_ctx(loaded, 0);
    let adapter = load_adapter_with(dir, &mut init, options)
        .with_context(|| format!("loading adapter {}", dir.display()))?;
    for w in &adapter.warnings {
        eprintln!("warning: {w}");
    }
    if options.allow_non_finite {
        eprintln!(
            "warning: --allow-non-finite: adapter {} is loaded even if its tensors hold NaN or infinite values",
            dir.display()
        );
    }
    Ok(adapter)
}

/// Runs `f` with the adapter at `adapter` (its hooks and any trained head; or the bare model), loaded with
/// `options` ([`open_adapter`]).
pub fn with_adapter<T>(
    loaded: &LoadedModel,
    adapter: Option<&Path>,
    options: &AdapterIoOptions,
    f: impl FnOnce(Tuned) -> Result<T>,
) -> Result<T> {
    match adapter {
        None => f(Tuned::frozen()),
        Some(dir) => {
            let adapter = open_adapter(loaded, dir, options)?;
            f(Tuned::of(adapter.adapter.as_ref()))
        }
    }
}

/// Token ids given as text or as ids.
pub struct Tokens<'a> {
    text: Option<&'a str>,
    ids: Option<&'a [u32]>,
}

impl<'a> Tokens<'a> {
    /// From the `--text` / `--ids` arguments (exactly one is set).
    pub fn from_args(text: Option<&'a str>, ids: Option<&'a [u32]>) -> Self {
        Tokens { text, ids }
    }

    /// The ids: text is encoded with the tokenizer's special tokens, as HF's `tokenizer(text)` does.
    pub fn resolve(&self, loaded: &LoadedModel) -> Result<Vec<u32>> {
        let vocab = loaded.model.spec().vocab_size;
        let ids = match (self.text, self.ids) {
            (Some(text), None) => {
                let tok = loaded.tokenizer.as_ref().context(
                    "this model folder has no tokenizer.json, so --text cannot be tokenized: pass --ids instead",
                )?;
                tok.encode(text, true)
                    .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?
                    .get_ids()
                    .to_vec()
            }
            (None, Some(ids)) => ids.to_vec(),
            _ => bail!("give exactly one of --text and --ids"),
        };
        if ids.is_empty() {
            bail!("the input has no tokens");
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            bail!("token id {bad} is outside the vocabulary (size {vocab})");
        }
        Ok(ids)
    }
}

/// Refuses a prompt of `len` tokens that, with the positions the hooks add, exceeds the model's context.
pub fn check_fits(loaded: &LoadedModel, hooks: &dyn Hooks, len: usize) -> Result<()> {
    let spec = loaded.model.spec();
    let taken = positions_taken(hooks, spec.hidden_size, loaded.model.device())?;
    if len + taken > spec.max_positions {
        bail!(
            "the prompt has {len} tokens and the adapter adds {taken} positions: {} exceeds the model's context of {}",
            len + taken,
            spec.max_positions
        );
    }
    Ok(())
}
