//! Saving and loading adapters in Hugging Face PEFT's format: a folder with `adapter_config.json` (the
//! method's config, tagged by `peft_type`) and `adapter_model.safetensors` (tensors by HF PEFT key). The
//! folder is written beside its target and renamed into place, so a crash never leaves half an adapter.
//!
//! Where transformers' task-head models nest the base model under a name our sites lack
//! ([`ModelSpec::base_model_prefix`]: `bert.` for BERT), a `SEQ_CLS` / `TOKEN_CLS` adapter is saved with HF
//! PEFT's keys (`base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`; the head's
//! `base_model.model.classifier.weight` stays as it is), and the prefix is stripped from any key holding it
//! when loading.
//!
//! ```no_run
//! # fn demo(adapter: &dyn peft_core::method::Adapter, mut init: peft_core::method::InitCtx) -> peft_core::Result<()> {
//! let dir = std::path::Path::new("out/adapter");
//! peft_core::adapter_io::save_adapter(dir, adapter, init.model.spec())?;
//! let loaded = peft_core::adapter_io::load_adapter(dir, &mut init)?;
//! for warning in &loaded.warnings { eprintln!("warning: {warning}"); }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::atomic::{save_safetensors, write_atomic};
use candle_core::Tensor;

use crate::error::{PeftError, Result};
use crate::head::{WithClassifier, SEQ_CLS, TOKEN_CLS};
use crate::method::{Adapter, InitCtx, PeftMethod};
use crate::spec::ModelSpec;

/// Name of the config file inside an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Name of the weights file inside an adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// An adapter read from disk, with what the reader noticed but did not refuse.
pub struct LoadedAdapter {
    /// The built adapter holding the saved tensors.
    pub adapter: Box<dyn Adapter>,
    /// Non-fatal findings (a different base model name, say).
    pub warnings: Vec<String>,
}

/// Saves `adapter` as an HF PEFT folder at `dir`, replacing what was there only once the new one is complete.
pub fn save_adapter(dir: &Path, adapter: &dyn Adapter, spec: &ModelSpec) -> Result<()> {
    let mut common = adapter.config().common().clone();
    if common.base_model_name_or_path.is_none() && !spec.name_or_path.is_empty() {
        common.base_model_name_or_path = Some(spec.name_or_path.clone());
    }
    common.inference_mode = true;
    let config = adapter.config().with_common(common);
    let json = serde_json::to_string_pretty(&config)
        .map_err(|e| PeftError::Config(format!("serialising the adapter config: {e}")))?;

    let tensors = adapter.tensors()?;
    let task_type = adapter.config().common().task_type.as_deref();
    let tensors = match &spec.base_model_prefix {
        Some(prefix) if matches!(task_type, Some(SEQ_CLS | TOKEN_CLS)) => tensors
            .into_iter()
            .map(|(k, t)| (task_model_key(&k, prefix, &spec.classifier_module), t))
            .collect(),
        _ => tensors,
    };

    let staging = sibling(dir, "staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| PeftError::io("creating folder", &staging, e))?;
    let written = (|| {
        write_atomic(&staging.join(CONFIG_FILE), json.as_bytes())?;
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        save_safetensors(&staging.join(WEIGHTS_FILE), &tensors, Some(metadata))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    replace_dir(&staging, dir)
}

/// Reads an adapter folder's config.
pub fn read_adapter_config(dir: &Path) -> Result<Box<dyn PeftMethod>> {
    let path = dir.join(CONFIG_FILE);
    if !dir.is_dir() {
        return Err(PeftError::bad_file(dir, "no such adapter folder (it should hold adapter_config.json and adapter_model.safetensors)"));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| PeftError::io("reading", &path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        PeftError::bad_file(
            &path,
            format!("{e}; peft_type must name a method this build knows"),
        )
    })
}

/// Loads an adapter folder for `init.model`. A different `base_model_name_or_path` is a warning; tensors
/// whose shapes do not fit the model are an error naming both shapes.
pub fn load_adapter(dir: &Path, init: &mut InitCtx) -> Result<LoadedAdapter> {
    let config = read_adapter_config(dir)?;
    let mut warnings = Vec::new();
    let spec = init.model.spec();
    if let Some(name) = &config.common().base_model_name_or_path {
        if !spec.name_or_path.is_empty() && !same_model_name(name, &spec.name_or_path) {
            warnings.push(format!(
                "adapter {} was made for base model `{name}`; loading it on `{}`",
                dir.display(),
                spec.name_or_path
            ));
        }
    }
    let adapter = config.build(init)?;
    let mut tensors = read_tensors(dir, init.model.device())?;
    if let Some(prefix) = &init.model.spec().base_model_prefix {
        tensors = tensors
            .into_iter()
            .map(|(k, t)| (base_model_key(&k, prefix), t))
            .collect();
    }
    // A sequence- or token-classification adapter carries its trained head (HF PEFT's `modules_to_save`).
    let task_type = config.common().task_type.as_deref();
    let adapter: Box<dyn Adapter> = match WithClassifier::saved_head(&tensors) {
        Some(head) if task_type == Some(SEQ_CLS) => {
            Box::new(WithClassifier::with_head(adapter, head)?)
        }
        Some(head) if task_type == Some(TOKEN_CLS) => {
            Box::new(WithClassifier::with_head(adapter, head)?.for_tokens())
        }
        _ => adapter,
    };
    load_into(dir, adapter.as_ref(), &tensors)?;
    Ok(LoadedAdapter { adapter, warnings })
}

/// Reads `adapter_model.safetensors` from `dir` into an adapter already built; a tensor whose shape does not
/// fit is an error naming the key, the adapter folder and both shapes.
pub fn load_adapter_tensors(
    dir: &Path,
    adapter: &dyn Adapter,
    device: &candle_core::Device,
) -> Result<()> {
    load_into(dir, adapter, &read_tensors(dir, device)?)
}

/// The tensors of `dir/adapter_model.safetensors`.
fn read_tensors(dir: &Path, device: &candle_core::Device) -> Result<HashMap<String, Tensor>> {
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() {
        return Err(PeftError::bad_file(
            &weights,
            "missing: an HF PEFT adapter folder holds adapter_model.safetensors",
        ));
    }
    candle_core::safetensors::load(&weights, device)
        .map_err(|e| PeftError::bad_file(&weights, format!("not a readable safetensors file: {e}")))
}

/// Loads `tensors` (read from `dir`) into `adapter`, naming the folder in a shape mismatch.
fn load_into(dir: &Path, adapter: &dyn Adapter, tensors: &HashMap<String, Tensor>) -> Result<()> {
    adapter.load_tensors(tensors).map_err(|e| match e {
        PeftError::ShapeMismatch {
            what,
            expected_from,
            expected,
            got,
            ..
        } => PeftError::ShapeMismatch {
            what,
            expected_from,
            expected,
            got_from: format!("adapter {}", dir.display()),
            got,
        },
        other => other,
    })
}

/// Where HF PEFT keys the tensors of an adapter on a model with a tuner (LoRA, IA3, ...).
const TUNER_ROOT: &str = "base_model.model.";

/// The key HF PEFT gives `key` in an adapter for a task-head model that nests the base model under `prefix`:
/// `base_model.model.<site>...` becomes `base_model.model.<prefix>.<site>...`, except for the task head's own
/// keys (`base_model.model.<classifier_module>.*`, which sits beside the base model). Other keys
/// (`prompt_embeddings`, `base_model.classifier.weight` of prompt-learning methods) are unchanged.
fn task_model_key(key: &str, prefix: &str, classifier_module: &str) -> String {
    match key.strip_prefix(TUNER_ROOT) {
        Some(rest) if !rest.starts_with(&format!("{classifier_module}.")) => {
            format!("{TUNER_ROOT}{prefix}.{rest}")
        }
        _ => key.to_string(),
    }
}

/// `key` without the task-head model's `prefix` ([`task_model_key`] undone); a key without it is unchanged.
fn base_model_key(key: &str, prefix: &str) -> String {
    match key
        .strip_prefix(TUNER_ROOT)
        .and_then(|rest| rest.strip_prefix(prefix))
        .and_then(|rest| rest.strip_prefix('.'))
    {
        Some(rest) => format!("{TUNER_ROOT}{rest}"),
        None => key.to_string(),
    }
}

/// Whether two model names plausibly name the same model: equal, or one a path ending in the other
/// (`tiny-gpt2` and `fixtures/tiny-gpt2`, `org/model` and `/cache/org/model`).
fn same_model_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    long == short || (long.ends_with(short) && long[..long.len() - short.len()].ends_with('/'))
}

/// A hidden sibling path of `dir` for staging or backup.
fn sibling(dir: &Path, what: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "adapter".into());
    dir.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// Moves the complete folder `staging` to `dir`, keeping the old `dir` until the new one is in place.
pub fn replace_dir(staging: &Path, dir: &Path) -> Result<()> {
    let backup = sibling(dir, "old");
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &backup).map_err(|e| PeftError::io("moving aside", dir, e))?;
    }
    if let Err(e) = std::fs::rename(staging, dir) {
        if had_old {
            let _ = std::fs::rename(&backup, dir);
        }
        return Err(PeftError::io("renaming into place", dir, e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&backup);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{base_model_key, same_model_name, task_model_key};

    #[test]
    fn task_model_keys_nest_sites_under_the_prefix_but_not_the_head() {
        let site = "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight";
        let nested = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight";
        assert_eq!(task_model_key(site, "bert", "classifier"), nested);
        assert_eq!(base_model_key(nested, "bert"), site);
        for unchanged in [
            "base_model.model.classifier.weight",
            "base_model.model.classifier.bias",
            "base_model.classifier.weight",
            "prompt_embeddings",
            "encoder.layer.0.output.dense.bias",
        ] {
            assert_eq!(task_model_key(unchanged, "bert", "classifier"), unchanged);
            assert_eq!(base_model_key(unchanged, "bert"), unchanged);
        }
        // A site whose name merely starts like the prefix is not stripped.
        let lookalike = "base_model.model.bertish.dense.lora_A.weight";
        assert_eq!(base_model_key(lookalike, "bert"), lookalike);
        // The key of a site named like the head module but deeper is nested (only `classifier.` is the head).
        assert_eq!(
            task_model_key(
                "base_model.model.classifier_x.lora_A.weight",
                "bert",
                "classifier"
            ),
            "base_model.model.bert.classifier_x.lora_A.weight"
        );
    }

    #[test]
    fn model_names_match_by_path_suffix() {
        assert!(same_model_name("tiny-gpt2", "fixtures/tiny-gpt2/"));
        assert!(same_model_name("org/model", "/cache/org/model"));
        assert!(!same_model_name("model", "/cache/other-model"));
        assert!(!same_model_name(
            "HuggingFaceTB/SmolLM2-135M",
            "SmolLM2-135M-Instruct.Q4_1.gguf"
        ));
    }
}
