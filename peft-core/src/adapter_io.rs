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
//! Nothing non-finite passes: an adapter holding NaN or infinite values is neither saved nor loaded unless
//! [`AdapterIoOptions::allow_non_finite`] says so (the `_with` variants take the options). Loading checks the
//! config against the weights file before building anything: the method's size (`num_virtual_tokens`, `r`)
//! must agree with the file's tensor shapes, read from its header ([`crate::adapter_checks`]), and after
//! building, every tensor of the file must be one the adapter holds.
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

use crate::adapter_checks::{check_size_agrees, read_header, size_setting, unused_keys};
use crate::error::{PeftError, Result};
use crate::finite::{describe_non_finite, non_finite_tensors};
use crate::head::{WithClassifier, SEQ_CLS, TOKEN_CLS};
use crate::method::{Adapter, InitCtx, PeftMethod};
use crate::method_config::method_from_json;
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

/// What saving and loading let through that they refuse by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdapterIoOptions {
    /// Save or load an adapter whose tensors hold NaN or infinite values (refused by default: such an adapter
    /// comes from a diverged run and computes nothing meaningful). For inspecting a broken adapter.
    pub allow_non_finite: bool,
}

impl AdapterIoOptions {
    /// The options that let non-finite tensors through.
    pub fn allowing_non_finite() -> Self {
        AdapterIoOptions {
            allow_non_finite: true,
        }
    }
}

/// Saves `adapter` as an HF PEFT folder at `dir`, replacing what was there only once the new one is complete.
/// An adapter holding NaN or infinite values is refused ([`save_adapter_with`] can allow it).
pub fn save_adapter(dir: &Path, adapter: &dyn Adapter, spec: &ModelSpec) -> Result<()> {
    save_adapter_with(dir, adapter, spec, &AdapterIoOptions::default())
}

/// [`save_adapter`] with `options`.
pub fn save_adapter_with(
    dir: &Path,
    adapter: &dyn Adapter,
    spec: &ModelSpec,
    options: &AdapterIoOptions,
) -> Result<()> {
    let staging = sibling(dir, "staging");
    let _ = std::fs::remove_dir_all(&staging);
    if let Err(e) = write_adapter_files_with(&staging, adapter, spec, options) {
        let _ = std::fs::remove_dir_all(&staging);
        // A refusal names the folder the caller asked for, not the staging one.
        return Err(match e {
            PeftError::NonFinite { action, found, .. } => PeftError::NonFinite {
                action,
                path: dir.to_path_buf(),
                found,
            },
            other => other,
        });
    }
    replace_dir(&staging, dir)
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` for `adapter` into `dir` (created if
/// needed), with no staging of its own: for a caller that already writes into a staging folder it renames
/// into place itself (a checkpoint, say). Each file is written atomically. An adapter holding NaN or infinite
/// values is refused before anything is written ([`write_adapter_files_with`] can allow it).
pub fn write_adapter_files(dir: &Path, adapter: &dyn Adapter, spec: &ModelSpec) -> Result<()> {
    write_adapter_files_with(dir, adapter, spec, &AdapterIoOptions::default())
}

/// [`write_adapter_files`] with `options`.
pub fn write_adapter_files_with(
    dir: &Path,
    adapter: &dyn Adapter,
    spec: &ModelSpec,
    options: &AdapterIoOptions,
) -> Result<()> {
    let saved = adapter.saved_config();
    let mut common = saved.common().clone();
    if common.base_model_name_or_path.is_none() && !spec.name_or_path.is_empty() {
        common.base_model_name_or_path = Some(spec.name_or_path.clone());
    }
    common.inference_mode = true;
    let config = saved.with_common(common);
    let json = serde_json::to_string_pretty(&config)
        .map_err(|e| PeftError::Config(format!("serialising the adapter config: {e}")))?;

    let tensors = adapter.tensors()?;
    if !options.allow_non_finite {
        let found = non_finite_tensors(tensors.iter().map(|(k, t)| (k.as_str(), t)))?;
        if !found.is_empty() {
            return Err(PeftError::NonFinite {
                action: "save",
                path: dir.to_path_buf(),
                found: describe_non_finite(&found),
            });
        }
    }
    let task_type = adapter.config().common().task_type.as_deref();
    let tensors = match &spec.base_model_prefix {
        Some(prefix) if matches!(task_type, Some(SEQ_CLS | TOKEN_CLS)) => tensors
            .into_iter()
            .map(|(k, t)| (task_model_key(&k, prefix, &spec.classifier_module), t))
            .collect(),
        _ => tensors,
    };

    std::fs::create_dir_all(dir).map_err(|e| PeftError::io("creating folder", dir, e))?;
    write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(&dir.join(WEIGHTS_FILE), &tensors, Some(metadata))
}

/// Reads an adapter folder's config. An error names what is wrong: a missing folder or file, JSON that does
/// not parse, a missing or unknown `peft_type` (the known ones listed), or the key whose value is of the wrong
/// type.
pub fn read_adapter_config(dir: &Path) -> Result<Box<dyn PeftMethod>> {
    let path = dir.join(CONFIG_FILE);
    if !dir.is_dir() {
        return Err(PeftError::bad_file(dir, "no such adapter folder (it should hold adapter_config.json and adapter_model.safetensors)"));
    }
    if !path.is_file() {
        return Err(PeftError::bad_file(
            &path,
            "missing: an HF PEFT adapter folder holds adapter_config.json",
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| PeftError::io("reading", &path, e))?;
    method_from_json(&text).map_err(|message| PeftError::bad_file(&path, message))
}

/// Loads an adapter folder for `init.model`. A different `base_model_name_or_path` is a warning. Refused,
/// each with a message naming the file and what is wrong: a config whose size disagrees with the weights
/// file's tensors (checked before the adapter is built), tensors whose shapes do not fit the model (both
/// shapes named), tensors the adapter does not use, and tensors holding NaN or infinite values
/// ([`load_adapter_with`] can allow those).
pub fn load_adapter(dir: &Path, init: &mut InitCtx) -> Result<LoadedAdapter> {
    load_adapter_with(dir, init, &AdapterIoOptions::default())
}

/// [`load_adapter`] with `options`.
pub fn load_adapter_with(
    dir: &Path,
    init: &mut InitCtx,
    options: &AdapterIoOptions,
) -> Result<LoadedAdapter> {
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
    let weights = weights_bytes(dir)?;
    // The file is checked, and the config's size against its header, before building allocates anything.
    let header = read_header(&weights.bytes).map_err(|e| not_safetensors(&weights.path, e))?;
    if let Some((knob, value)) = size_setting(config.as_ref()) {
        check_size_agrees(knob, value, &header)
            .map_err(|message| PeftError::bad_file(dir.join(CONFIG_FILE), message))?;
    }
    let adapter = config.build(init)?;
    let mut tensors = weights.tensors(init.model.device(), options)?;
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
    let held = adapter.tensors()?;
    let unused = unused_keys(
        tensors.keys().map(String::as_str),
        held.iter().map(|(k, _)| k.as_str()),
    );
    if !unused.is_empty() {
        return Err(PeftError::bad_file(
            &weights.path,
            format!(
                "{} tensor(s) the {} adapter does not use: {} (is the file from another adapter or model?)",
                unused.len(),
                config.typetag_name(),
                unused.join(", ")
            ),
        ));
    }
    Ok(LoadedAdapter { adapter, warnings })
}

/// Reads `adapter_model.safetensors` from `dir` into an adapter already built; a tensor whose shape does not
/// fit is an error naming the key, the adapter folder and both shapes, and tensors holding NaN or infinite
/// values are refused ([`load_adapter_tensors_with`] can allow those).
pub fn load_adapter_tensors(
    dir: &Path,
    adapter: &dyn Adapter,
    device: &candle_core::Device,
) -> Result<()> {
    load_adapter_tensors_with(dir, adapter, device, &AdapterIoOptions::default())
}

/// [`load_adapter_tensors`] with `options`.
pub fn load_adapter_tensors_with(
    dir: &Path,
    adapter: &dyn Adapter,
    device: &candle_core::Device,
    options: &AdapterIoOptions,
) -> Result<()> {
    load_into(dir, adapter, &weights_bytes(dir)?.tensors(device, options)?)
}

/// The bytes of an adapter folder's weights file, read once: its header is checked before the adapter is
/// built, its tensors loaded after.
struct WeightsFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// Reads `dir/adapter_model.safetensors`.
fn weights_bytes(dir: &Path) -> Result<WeightsFile> {
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        return Err(PeftError::bad_file(
            &path,
            "missing: an HF PEFT adapter folder holds adapter_model.safetensors",
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| PeftError::io("reading", &path, e))?;
    Ok(WeightsFile { path, bytes })
}

impl WeightsFile {
    /// The file's tensors on `device`; tensors holding NaN or infinite values are refused unless `options`
    /// allow them.
    fn tensors(
        &self,
        device: &candle_core::Device,
        options: &AdapterIoOptions,
    ) -> Result<HashMap<String, Tensor>> {
        let tensors = candle_core::safetensors::load_buffer(&self.bytes, device)
            .map_err(|e| not_safetensors(&self.path, e))?;
        if !options.allow_non_finite {
            let mut named: Vec<(&str, &Tensor)> =
                tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
            named.sort_by_key(|(k, _)| *k);
            let found = non_finite_tensors(named)?;
            if !found.is_empty() {
                return Err(PeftError::NonFinite {
                    action: "load",
                    path: self.path.clone(),
                    found: describe_non_finite(&found),
                });
            }
        }
        Ok(tensors)
    }
}

/// The error for a weights file that is not a readable safetensors file.
fn not_safetensors(path: &Path, cause: impl std::fmt::Display) -> PeftError {
    PeftError::bad_file(path, format!("not a readable safetensors file: {cause}"))
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
    use super::{
        load_adapter_tensors, load_adapter_tensors_with, save_adapter, save_adapter_with,
        write_adapter_files, AdapterIoOptions, CONFIG_FILE, WEIGHTS_FILE,
    };
    use crate::hooks::Hooks;
    use crate::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
    use crate::spec::ModelSpec;
    use crate::PeftError;
    use candle_core::{Device, Tensor, Var};
    use serde::{Deserialize, Serialize};
    use std::collections::HashMap;

    /// A method config for [`Toy`].
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    struct ToyConfig {
        #[serde(flatten)]
        common: CommonConfig,
    }

    #[typetag::serde(name = "TEST_IO_TOY")]
    impl PeftMethod for ToyConfig {
        fn build(&self, _init: &mut InitCtx) -> crate::Result<Box<dyn Adapter>> {
            Err(PeftError::Unsupported("a toy builds nothing".into()))
        }
        fn common(&self) -> &CommonConfig {
            &self.common
        }
        fn common_mut(&mut self) -> &mut CommonConfig {
            &mut self.common
        }
    }

    /// An adapter of one tensor, `weight`.
    struct Toy {
        config: ToyConfig,
        weight: Var,
    }

    impl Toy {
        fn new(values: &[f32]) -> Self {
            let weight = Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap();
            Toy {
                config: ToyConfig::default(),
                weight,
            }
        }
    }

    impl Hooks for Toy {}

    impl Adapter for Toy {
        fn config(&self) -> &dyn PeftMethod {
            &self.config
        }
        fn trainable(&self) -> Vec<(String, Var)> {
            vec![("weight".into(), self.weight.clone())]
        }
        fn tensors(&self) -> crate::Result<Vec<(String, Tensor)>> {
            Ok(vec![("weight".into(), self.weight.as_tensor().clone())])
        }
        fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> crate::Result<()> {
            Ok(self.weight.set(&tensors["weight"])?)
        }
    }

    fn spec() -> ModelSpec {
        ModelSpec::new("toy", 1, 4, 1, 1, 8, 8)
    }

    #[test]
    fn a_non_finite_adapter_is_not_saved_without_the_override() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("adapter");
        let bad = Toy::new(&[1.0, f32::NAN, f32::INFINITY]);
        let err = save_adapter(&dir, &bad, &spec()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PeftError::NonFinite { .. }), "{text}");
        assert!(
            text.contains("`weight` holds 2 non-finite values (NaN or infinite) of 3")
                && text.contains(&dir.display().to_string())
                && !text.contains("staging"),
            "{text}"
        );
        // Nothing is left behind: no folder, no staging sibling.
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
        let files = root.path().join("files");
        assert!(write_adapter_files(&files, &bad, &spec()).is_err());
        assert!(!files.exists());

        save_adapter_with(
            &dir,
            &bad,
            &spec(),
            &AdapterIoOptions::allowing_non_finite(),
        )
        .unwrap();
        assert!(dir.join(CONFIG_FILE).is_file() && dir.join(WEIGHTS_FILE).is_file());
    }

    #[test]
    fn a_non_finite_adapter_is_not_loaded_without_the_override() {
        let root = tempfile::tempdir().unwrap();
        let bad = Toy::new(&[f32::NAN, 2.0, 3.0]);
        save_adapter_with(
            root.path(),
            &bad,
            &spec(),
            &AdapterIoOptions::allowing_non_finite(),
        )
        .unwrap();
        let target = Toy::new(&[0.0, 0.0, 0.0]);
        let err = load_adapter_tensors(root.path(), &target, &Device::Cpu).unwrap_err();
        assert!(
            err.to_string().contains("refusing to load")
                && err.to_string().contains("`weight` holds 1 non-finite"),
            "{err}"
        );
        assert_eq!(target.weight.to_vec1::<f32>().unwrap(), [0.0, 0.0, 0.0]);
        load_adapter_tensors_with(
            root.path(),
            &target,
            &Device::Cpu,
            &AdapterIoOptions::allowing_non_finite(),
        )
        .unwrap();
        assert!(target.weight.to_vec1::<f32>().unwrap()[0].is_nan());
    }

    #[test]
    fn write_adapter_files_writes_into_the_folder_itself() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("staging").join("adapter");
        write_adapter_files(&dir, &Toy::new(&[1.0]), &spec()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [CONFIG_FILE, WEIGHTS_FILE]);
        // No sibling staging folder of its own.
        assert_eq!(std::fs::read_dir(dir.parent().unwrap()).unwrap().count(), 1);
    }

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
