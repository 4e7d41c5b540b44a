//! Loads a Hugging Face model folder as `save_pretrained` writes it: `config.json` (dispatched on
//! `model_type`), the weights from `model.safetensors` or a sharded `model.safetensors.index.json`
//! (f32, f16 and bf16 storage, converted to f32), and `tokenizer.json` where the folder has one.
//!
//! ```
//! use std::path::Path;
//! use peft_models::folder::load_folder;
//! let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-llama");
//! let loaded = load_folder(&fixture, &candle_core::Device::Cpu).unwrap();
//! assert_eq!(loaded.model.spec().architecture, "llama");
//! assert!(loaded.tokenizer.is_none()); // this fixture has no tokenizer.json
//!
//! let err = load_folder(Path::new("/nonexistent"), &candle_core::Device::Cpu).err().unwrap();
//! assert!(err.to_string().contains("config.json"));
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::config::{Gpt2Config, LlamaConfig};
use crate::error::{ModelError, Result};
use crate::gpt2::Gpt2;
use crate::llama::Llama;
use crate::loaded::{LoadOptions, LoadedModel};
use crate::weights::WeightMap;

/// The `model_type` values [`load_folder`] knows.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["gpt2", "llama", "opt", "bert", "t5", "gemma3_text"];

/// Loads the model, tokenizer (optional) and eos id of a Hugging Face folder onto `device`.
pub fn load_folder(dir: &Path, device: &Device) -> Result<LoadedModel> {
    load_folder_with(dir, device, LoadOptions::default())
}

/// [`load_folder`] with options (trainable weights for full fine-tuning).
pub fn load_folder_with(dir: &Path, device: &Device, options: LoadOptions) -> Result<LoadedModel> {
    let config_path = dir.join("config.json");
    let mut config = read_json(
        &config_path,
        "a Hugging Face model folder needs the config.json that save_pretrained writes",
    )?;
    let model_type = config.get("model_type").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
        bad_file(&config_path, "has no `model_type` string: it is not a transformers config (re-save the model with save_pretrained)")
    })?;
    normalise_token_ids(&mut config);
    let mut weights = load_weights(dir, device)?;
    weights.set_bf16_projections(options.bf16_projections);
    if options.trainable_weights {
        weights.make_trainable()?;
    }
    let name = dir.display().to_string();
    let (model, eos_token_id) = build(&model_type, config, &config_path, &weights, &name)
        .map_err(|e| with_config_path(e, &config_path))?;
    Ok(LoadedModel {
        model,
        tokenizer: load_tokenizer(dir)?,
        eos_token_id,
    })
}

/// A config error names the config file it comes from (once).
fn with_config_path(e: ModelError, config_path: &Path) -> ModelError {
    let path = config_path.display().to_string();
    match e {
        ModelError::Config(m) if !m.starts_with(&path) => {
            ModelError::Config(format!("{path}: {m}"))
        }
        other => other,
    }
}

/// The model of `model_type` from its parsed config and weights, with its eos token id.
fn build(
    model_type: &str,
    mut config: Value,
    config_path: &Path,
    weights: &WeightMap,
    name: &str,
) -> Result<(Box<dyn peft_core::model::BaseModel>, Option<u32>)> {
    Ok(match model_type {
        "gpt2" => {
            let cfg: Gpt2Config = parse_config(config_path, config)?;
            (
                Box::new(Gpt2::from_weights(&cfg, weights, name)?),
                cfg.eos_token_id,
            )
        }
        "llama" => {
            normalise_llama(config_path, &mut config)?;
            let cfg: LlamaConfig = parse_config(config_path, config)?;
            (
                Box::new(Llama::from_weights(&cfg, weights, name)?),
                cfg.eos_token_id,
            )
        }
        "opt" => crate::opt::from_folder(config, config_path, weights, name)?,
        "bert" => crate::bert::from_folder(config, config_path, weights, name)?,
        "t5" => crate::t5::from_folder(config, config_path, weights, name)?,
        "gemma3_text" | "gemma3" => crate::gemma3::from_folder(config, config_path, weights, name)?,
        other => {
            return Err(ModelError::Config(format!(
                "model_type `{other}` is not supported; supported model types: {}",
                SUPPORTED_MODEL_TYPES.join(", ")
            )))
        }
    })
}

/// The checkpoint tensors of a folder: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`; floating-point tensors are converted to f32.
pub fn load_weights(dir: &Path, device: &Device) -> Result<WeightMap> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let tensors = if single.is_file() {
        read_safetensors(&single, device)?
    } else if index.is_file() {
        let json = read_json(&index, "")?;
        let map = json.get("weight_map").and_then(Value::as_object).ok_or_else(|| {
            bad_file(&index, "has no `weight_map` object (tensor name -> shard file): re-save the model with save_pretrained")
        })?;
        let mut shards = BTreeSet::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                bad_file(
                    &index,
                    format!("maps tensor `{tensor}` to {shard}, not to a shard file name"),
                )
            })?;
            shards.insert(shard.to_string());
        }
        let mut tensors = HashMap::new();
        for shard in shards {
            let path = dir.join(&shard);
            if !path.is_file() {
                return Err(bad_file(
                    &path,
                    format!(
                        "is listed in {} but missing: download every shard of the checkpoint",
                        index.display()
                    ),
                ));
            }
            tensors.extend(read_safetensors(&path, device)?);
        }
        for tensor in map.keys() {
            if !tensors.contains_key(tensor) {
                return Err(ModelError::MissingTensor {
                    name: tensor.clone(),
                    source_desc: index.display().to_string(),
                });
            }
        }
        tensors
    } else {
        return Err(bad_file(
            &single,
            "not found (nor model.safetensors.index.json): save the model with save_pretrained in safetensors format \
             (pytorch_model.bin is not read)",
        ));
    };
    Ok(WeightMap::new(tensors, dir.display().to_string()))
}

/// One safetensors file, floating tensors as f32 (other dtypes, such as old GPT-2 mask buffers, as stored).
fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let raw = candle_core::safetensors::load(path, device).map_err(|e| {
        bad_file(
            path,
            format!(
                "is not a readable safetensors file ({e}): re-download it or re-save the model"
            ),
        )
    })?;
    raw.into_iter()
        .map(|(name, t)| {
            let t = match t.dtype() {
                DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
                _ => t,
            };
            Ok((name, t))
        })
        .collect()
}

/// `tokenizer.json` where the folder has one. A padding setting in the file is switched off (all-MiniLM-L6-v2's
/// pads every encoding to 128 tokens): batches are padded by the tasks, and a single text must keep its own
/// length, as `tokenizer(text)` gives it in transformers.
fn load_tokenizer(dir: &Path) -> Result<Option<tokenizers::Tokenizer>> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(None);
    }
    let mut tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
        bad_file(
            &path,
            format!("could not be read as a tokenizers JSON file ({e}): re-download it, or remove it to load the model without a tokenizer"),
        )
    })?;
    tokenizer.with_padding(None);
    Ok(Some(tokenizer))
}

pub(crate) fn read_json(path: &Path, hint: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let what = if e.kind() == std::io::ErrorKind::NotFound {
            "not found".to_string()
        } else {
            format!("unreadable ({e})")
        };
        let hint = if hint.is_empty() {
            String::new()
        } else {
            format!(": {hint}")
        };
        bad_file(path, format!("{what}{hint}"))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        bad_file(
            path,
            format!("is not valid JSON ({e}): re-download it or re-save the model"),
        )
    })
}

pub(crate) fn parse_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    config: Value,
) -> Result<T> {
    serde_json::from_value(config)
        .map_err(|e| bad_file(path, format!("does not describe this architecture ({e})")))
}

/// Some configs list several eos (or bos) ids; the first one ends a generation.
fn normalise_token_ids(config: &mut Value) {
    for key in ["eos_token_id", "bos_token_id"] {
        if let Some(first) = config
            .get(key)
            .and_then(Value::as_array)
            .map(|ids| ids.first().cloned())
        {
            config[key] = first.unwrap_or(Value::Null);
        }
    }
}

/// transformers 5 writes `rope_parameters: {rope_theta, rope_type}` instead of a top-level `rope_theta`
/// (older versions `rope_scaling`); only plain RoPE and the SiLU MLP are implemented, anything else is refused
/// rather than computed wrongly.
fn normalise_llama(path: &Path, config: &mut Value) -> Result<()> {
    let rope = config
        .get("rope_parameters")
        .filter(|v| v.is_object())
        .cloned();
    if config.get("rope_theta").is_none() {
        if let Some(theta) = rope.as_ref().and_then(|r| r.get("rope_theta")).cloned() {
            config["rope_theta"] = theta;
        }
    }
    let scaling = config
        .get("rope_scaling")
        .filter(|v| v.is_object())
        .cloned();
    for params in [rope, scaling].into_iter().flatten() {
        let kind = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if kind != "default" {
            return Err(ModelError::Config(format!(
                "{}: RoPE type `{kind}` is not supported (only the default rotary embedding is implemented)",
                path.display()
            )));
        }
    }
    if let Some(act) = config.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            return Err(ModelError::Config(format!(
                "{}: LLaMA hidden_act `{act}` is not supported (only silu)",
                path.display()
            )));
        }
    }
    Ok(())
}

pub(crate) fn bad_file(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::BadFile {
        path: PathBuf::from(path),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(name)
    }

    fn copy_dir(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn unknown_model_type_lists_the_supported_ones() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture("tiny-gpt2"), dir.path());
        let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            cfg.replace("\"gpt2\"", "\"mamba\""),
        )
        .unwrap();
        let err = load_folder(dir.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("mamba") && err.contains("gpt2, llama, opt, bert, t5"),
            "{err}"
        );
    }

    #[test]
    fn bf16_storage_loads_as_its_values_in_f32() {
        use peft_core::hooks::NoHooks;
        use peft_core::model::Batch;
        // The same checkpoint stored as bf16, and as f32 holding the bf16-rounded values: equal logits.
        let source = fixture("tiny-gpt2");
        let raw =
            candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
        let (bf16_dir, f32_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut bf16, mut rounded) = (HashMap::new(), HashMap::new());
        for (name, t) in raw {
            if t.dtype() != DType::F32 {
                continue;
            }
            let b = t.to_dtype(DType::BF16).unwrap();
            rounded.insert(name.clone(), b.to_dtype(DType::F32).unwrap());
            bf16.insert(name, b);
        }
        for (dir, tensors) in [(&bf16_dir, &bf16), (&f32_dir, &rounded)] {
            copy_dir(&source, dir.path());
            candle_core::safetensors::save(tensors, dir.path().join("model.safetensors")).unwrap();
        }
        let logits = |dir: &Path| {
            let m = load_folder(dir, &Device::Cpu).unwrap().model;
            let out = m
                .forward(
                    &Batch::single(&[5, 17, 42], &Device::Cpu).unwrap(),
                    &NoHooks,
                )
                .unwrap();
            m.logits(&out.hidden).unwrap()
        };
        let (a, b) = (logits(bf16_dir.path()), logits(f32_dir.path()));
        assert_eq!(peft_core::compare::max_abs_diff(&a, &b).unwrap(), 0.0);
        let original = logits(&source);
        assert!(
            peft_core::compare::max_abs_diff(&a, &original).unwrap() > 0.0,
            "bf16 rounding changed nothing"
        );
    }

    #[test]
    fn missing_and_corrupt_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_folder(dir.path(), &Device::Cpu).err().unwrap();
        assert!(
            matches!(err, ModelError::BadFile { .. }) && err.to_string().contains("config.json"),
            "{err}"
        );

        copy_dir(&fixture("tiny-llama"), dir.path());
        std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
        let err = load_folder(dir.path(), &Device::Cpu).err().unwrap();
        assert!(
            matches!(err, ModelError::BadFile { .. })
                && err.to_string().contains("model.safetensors"),
            "{err}"
        );

        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let err = load_folder(dir.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("save_pretrained"),
            "{err}"
        );

        std::fs::write(dir.path().join("config.json"), b"{ not json").unwrap();
        let err = load_folder(dir.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("config.json") && err.contains("JSON"), "{err}");
    }

    #[test]
    fn corrupt_tokenizer_is_named() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture("tiny-llama"), dir.path());
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let err = load_folder(dir.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn missing_shard_is_named() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture("tiny-llama/tied"), dir.path());
        std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
        let err = load_folder(dir.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("model-00002-of-00002.safetensors") && err.contains("shard"),
            "{err}"
        );
    }

    #[test]
    fn rope_parameters_and_eos_lists_are_read() {
        let mut cfg = serde_json::json!({"rope_parameters": {"rope_theta": 500.0, "rope_type": "default"},
            "eos_token_id": [5, 6]});
        normalise_token_ids(&mut cfg);
        normalise_llama(Path::new("config.json"), &mut cfg).unwrap();
        assert_eq!(cfg["rope_theta"], 500.0);
        assert_eq!(cfg["eos_token_id"], 5);
        let mut llama3 =
            serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}});
        let err = normalise_llama(Path::new("config.json"), &mut llama3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("llama3"), "{err}");
    }
}
