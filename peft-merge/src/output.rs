//! The merged adapter and the folder it is written to: HF PEFT's format (`adapter_config.json` +
//! `adapter_model.safetensors`, keys `base_model.model.<module>.lora_A.weight`), written beside its target and
//! renamed into place, so that a crash never leaves half an adapter.
//!
//! The config is the first adapter's with `r = lora_alpha =` the new rank and HF's merged `target_modules`, so
//! that every module's scaling is 1, as the merged factors mean it. Two fields differ from what HF PEFT 0.21
//! writes, both so that the folder reloads as merged (here and in HF PEFT):
//!
//! - where a module's merged rank is not the new rank (the element-wise combinations keep each module's rank,
//!   and adapters with a `rank_pattern` have modules of another rank), that module gets a `rank_pattern` entry
//!   with its rank and an `alpha_pattern` entry of the same value (scaling 1), keyed by its full name. HF PEFT
//!   writes empty patterns there and then cannot reload its own merged adapter (HF PEFT issue 3737);
//! - `use_rslora` is false: HF PEFT 0.21 copies the first adapter's, which scales the merged adapter by
//!   `sqrt(r)` instead of 1 (fixed upstream in HF PEFT pull request 3449).
//!
//! ```
//! use peft_lora::LoraConfig;
//! use peft_merge::{merge, Combination, Matrix, MergeOptions, ModuleFactors, SourceAdapter};
//! let v_rank_1 = [("v_proj".to_string(), 1)].into();
//! let config = LoraConfig { rank_pattern: v_rank_1, ..LoraConfig::new(2, ["q_proj", "v_proj"]) };
//! let f = |r: usize| {
//!     ModuleFactors::linear(Matrix::new(r, 2, vec![0.5; 2 * r]), Matrix::new(2, r, vec![1.0; 2 * r]))
//! };
//! let modules = [("l0.q_proj".to_string(), f(2)), ("l0.v_proj".to_string(), f(1))].into();
//! let adapter = SourceAdapter::new("a", config, modules).unwrap();
//! let merged = merge(&[adapter.clone(), adapter], &MergeOptions::new(Combination::Linear, vec![0.5, 0.5])).unwrap();
//! assert_eq!(merged.config().rank_pattern["l0.v_proj"], 1);
//! assert_eq!(merged.config().alpha_pattern["l0.v_proj"], 1.0);
//! let dir = tempfile::tempdir().unwrap();
//! merged.save(&dir.path().join("merged")).unwrap();
//! let back = SourceAdapter::read(&dir.path().join("merged")).unwrap();
//! assert_eq!(back.scale("l0.v_proj"), Some(1.0));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};
use peft_core::adapter_io::{replace_dir, CONFIG_FILE, WEIGHTS_FILE};
use peft_core::atomic::{save_safetensors, write_atomic};
use peft_core::finite::{describe_non_finite, non_finite_tensors};
use peft_core::method::PeftMethod;
use peft_core::PeftError;
use peft_lora::{LoraConfig, TargetModules};

use crate::combination::Combination;
use crate::error::Result;
use crate::matrix::Matrix;
use crate::source::{ModuleFactors, SourceAdapter};

/// A merged LoRA adapter, ready to save.
#[derive(Debug, Clone)]
pub struct MergedAdapter {
    combination: Combination,
    adapter: SourceAdapter,
}

impl MergedAdapter {
    /// The merged adapter of `modules` (rank `rank` unless a module's factors say otherwise) under a config made
    /// from `first` (the first input's), with `target_modules`; checked as an input adapter is.
    pub(crate) fn new(
        combination: Combination,
        first: &LoraConfig,
        rank: usize,
        target_modules: TargetModules,
        modules: BTreeMap<String, ModuleFactors>,
        dtype: DType,
    ) -> Result<Self> {
        let mut config = first.clone();
        config.r = rank;
        config.lora_alpha = rank as f64;
        config.target_modules = Some(target_modules);
        config.use_rslora = false;
        config.common.inference_mode = true;
        config.rank_pattern = modules
            .iter()
            .filter(|(_, f)| f.rank() != rank)
            .map(|(name, f)| (name.clone(), f.rank()))
            .collect();
        config.alpha_pattern = config
            .rank_pattern
            .iter()
            .map(|(name, &r)| (name.clone(), r as f64))
            .collect();
        let mut adapter = SourceAdapter::new("(merged)", config, modules)?;
        adapter.set_dtype(dtype);
        Ok(MergedAdapter {
            combination,
            adapter,
        })
    }

    /// The combination applied (`linear` where a single adapter was given, as HF PEFT does).
    pub fn combination(&self) -> Combination {
        self.combination
    }

    /// The config written to `adapter_config.json`.
    pub fn config(&self) -> &LoraConfig {
        self.adapter.config()
    }

    /// The new rank (`r`).
    pub fn rank(&self) -> usize {
        self.config().r
    }

    /// The merged factors, by full module name.
    pub fn modules(&self) -> &BTreeMap<String, ModuleFactors> {
        self.adapter.modules()
    }

    /// The update the merged adapter makes to `module`, `[out, in]`, with the scaling its config gives it.
    pub fn delta(&self, module: &str) -> Option<Matrix> {
        let f = self.modules().get(module)?;
        Some(f.product().scaled(self.adapter.scale(module)?))
    }

    /// The tensors under HF PEFT's keys, in the inputs' dtype.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let dtype = self.adapter.dtype();
        let mut out = Vec::with_capacity(2 * self.modules().len());
        for (module, f) in self.modules() {
            let (a_key, b_key) = f.keys.keys(module);
            out.push((a_key, f.a.to_tensor(dtype)?));
            out.push((b_key, f.b.to_tensor(dtype)?));
        }
        Ok(out)
    }

    /// `adapter_config.json`'s text (with `"peft_type": "LORA"`).
    pub fn config_json(&self) -> Result<String> {
        let method: Box<dyn PeftMethod> = Box::new(self.config().clone());
        serde_json::to_string_pretty(&method).map_err(|e| {
            PeftError::Config(format!("serialising the merged adapter's config: {e}")).into()
        })
    }

    /// Writes the adapter folder `dir`, replacing what was there only once the new one is complete. Refused
    /// (nothing written) where a merged tensor is not finite (f16 inputs whose merge overflows, say).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tensors = self.tensors()?;
        let found = non_finite_tensors(tensors.iter().map(|(k, t)| (k.as_str(), t)))?;
        if !found.is_empty() {
            return Err(PeftError::NonFinite {
                action: "save",
                path: dir.to_path_buf(),
                found: describe_non_finite(&found),
            }
            .into());
        }
        let json = self.config_json()?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "merged".into());
        let staging = dir.with_file_name(format!(".{name}.merge-staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let written = (|| -> Result<()> {
            std::fs::create_dir_all(&staging)
                .map_err(|e| PeftError::io("creating folder", &staging, e))?;
            write_atomic(&staging.join(CONFIG_FILE), json.as_bytes())?;
            let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
            save_safetensors(&staging.join(WEIGHTS_FILE), &tensors, Some(metadata))?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        replace_dir(&staging, dir)?;
        Ok(())
    }
}
