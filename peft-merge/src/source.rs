//! The adapters merging reads: HF-format LoRA folders (`adapter_config.json` + `adapter_model.safetensors`), no
//! base model needed. The adapted modules and their ranks come from the tensor keys and shapes; each module's
//! scaling `lora_alpha / r` (rsLoRA: `/ sqrt(r)`) from the config, with `rank_pattern` / `alpha_pattern`
//! matched by HF PEFT's rules ([`peft_core::tuner::PatternMap`]). An adapter whose settings merging cannot
//! honour is refused here, naming the setting: DoRA (HF PEFT's merged adapter would carry the base weight's
//! norm, not the adapters' magnitudes), trained biases and heads (`bias`, `modules_to_save`), factors started
//! from the base weight (PiSSA, OLoRA, ...), and a config that disagrees with its own tensors.
//!
//! ```
//! use peft_lora::LoraConfig;
//! use peft_merge::{Matrix, ModuleFactors, SourceAdapter};
//! let v_rank_1 = [("v_proj".to_string(), 1)].into();
//! let config = LoraConfig { rank_pattern: v_rank_1, ..LoraConfig::new(2, ["q_proj", "v_proj"]) };
//! let v = ModuleFactors::linear(Matrix::zeros(1, 4), Matrix::zeros(4, 1));
//! let adapter = SourceAdapter::new("mine", config, [("layers.0.v_proj".to_string(), v)].into()).unwrap();
//! assert_eq!(adapter.scale("layers.0.v_proj"), Some(8.0)); // lora_alpha 8 over the pattern's rank 1
//! // A factor of rank 2 where the config says 1 is refused.
//! let config = LoraConfig { rank_pattern: [("v_proj".to_string(), 1)].into(), ..LoraConfig::new(2, ["v_proj"]) };
//! let v = ModuleFactors::linear(Matrix::zeros(2, 4), Matrix::zeros(4, 2));
//! let err = SourceAdapter::new("mine", config, [("layers.0.v_proj".to_string(), v)].into()).unwrap_err();
//! assert!(err.to_string().contains("rank 2"), "{err}");
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use peft_core::adapter_io::{CONFIG_FILE, WEIGHTS_FILE};
use peft_core::finite::{describe_non_finite, non_finite_tensors};
use peft_core::tuner::PatternMap;
use peft_core::PeftError;
use peft_lora::{BiasMode, InitLoraWeights, LoraConfig};

use crate::error::{MergeError, Result};
use crate::matrix::Matrix;

/// Where HF PEFT keys the tensors of a LoRA adapter.
pub const KEY_PREFIX: &str = "base_model.model.";

/// How a module's factors are keyed: HF PEFT keeps linear (and Conv1D) layers' factors as `nn.Linear`
/// weights, and embeddings' as bare parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorKeys {
    /// `<module>.lora_A.weight` `[r, in]`, `<module>.lora_B.weight` `[out, r]`.
    Linear,
    /// `<module>.lora_embedding_A` `[r, vocab]`, `<module>.lora_embedding_B` `[dim, r]`.
    Embedding,
}

impl FactorKeys {
    /// The suffixes of the A and B keys.
    pub fn suffixes(self) -> (&'static str, &'static str) {
        match self {
            FactorKeys::Linear => (".lora_A.weight", ".lora_B.weight"),
            FactorKeys::Embedding => (".lora_embedding_A", ".lora_embedding_B"),
        }
    }

    /// The keys of `module`'s A and B factors.
    pub fn keys(self, module: &str) -> (String, String) {
        let (a, b) = self.suffixes();
        (
            format!("{KEY_PREFIX}{module}{a}"),
            format!("{KEY_PREFIX}{module}{b}"),
        )
    }

    /// What the module is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            FactorKeys::Linear => "a linear layer",
            FactorKeys::Embedding => "an embedding",
        }
    }
}

/// One module's LoRA factors: `A` `[r, in]` and `B` `[out, r]`, the update being `scale * B A`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleFactors {
    /// `lora_A`.
    pub a: Matrix,
    /// `lora_B`.
    pub b: Matrix,
    /// How they are keyed.
    pub keys: FactorKeys,
}

impl ModuleFactors {
    /// The factors of a linear (or Conv1D) layer.
    pub fn linear(a: Matrix, b: Matrix) -> Self {
        ModuleFactors {
            a,
            b,
            keys: FactorKeys::Linear,
        }
    }

    /// The rank (rows of A).
    pub fn rank(&self) -> usize {
        self.a.rows
    }

    /// The update `B A` at scaling 1, `[out, in]`.
    pub fn product(&self) -> Matrix {
        self.b.matmul(&self.a)
    }
}

/// A LoRA adapter to merge: its config, and its modules' factors with each module's scaling.
#[derive(Debug, Clone)]
pub struct SourceAdapter {
    name: String,
    config: LoraConfig,
    modules: BTreeMap<String, ModuleFactors>,
    scales: BTreeMap<String, f64>,
    dtype: DType,
}

impl SourceAdapter {
    /// The adapter `name` (its folder, in messages) of `config` with the factors of `modules` (by full module
    /// name, without HF's `base_model.model.`), stored as f32. Refused: settings merging cannot honour, factors
    /// whose shapes do not fit together, and ranks that disagree with the config's `r` / `rank_pattern`.
    pub fn new(
        name: impl Into<String>,
        config: LoraConfig,
        modules: BTreeMap<String, ModuleFactors>,
    ) -> Result<Self> {
        let name = name.into();
        check_mergeable(&name, &config)?;
        if modules.is_empty() {
            return Err(MergeError::Inconsistent {
                adapter: name,
                message: "it holds no LoRA factors (no lora_A / lora_B tensors)".into(),
            });
        }
        let bad_pattern = |e: PeftError| MergeError::Inconsistent {
            adapter: name.clone(),
            message: e.to_string(),
        };
        let ranks = PatternMap::new(&config.rank_pattern, "rank_pattern").map_err(bad_pattern)?;
        let alphas =
            PatternMap::new(&config.alpha_pattern, "alpha_pattern").map_err(bad_pattern)?;
        let mut scales = BTreeMap::new();
        for (module, f) in &modules {
            if f.a.rows != f.b.cols {
                return Err(MergeError::Inconsistent {
                    adapter: name,
                    message: format!(
                        "module `{module}` has lora_A {:?} and lora_B {:?}: A's rows and B's columns (the rank) must \
                         agree",
                        f.a.shape(),
                        f.b.shape()
                    ),
                });
            }
            let r = ranks.get(module).copied().unwrap_or(config.r);
            if r != f.rank() {
                return Err(MergeError::Inconsistent {
                    adapter: name,
                    message: format!(
                        "module `{module}` holds factors of rank {} but the config gives it rank {r} (r = {}, \
                         rank_pattern = {:?}): the config and the weights disagree, so its scaling is unknown; fix \
                         r / rank_pattern in adapter_config.json (HF PEFT's own merged adapters of issue 3737 look \
                         like this: give the module's rank in rank_pattern and the same value in alpha_pattern)",
                        f.rank(),
                        config.r,
                        config.rank_pattern
                    ),
                });
            }
            let alpha = alphas.get(module).copied().unwrap_or(config.lora_alpha);
            scales.insert(module.clone(), config.scale_for(r, alpha));
        }
        Ok(SourceAdapter {
            name,
            config,
            modules,
            scales,
            dtype: DType::F32,
        })
    }

    /// Reads the LoRA adapter folder `dir`. Errors name the folder and what is wrong: a missing folder or
    /// file, another method, a config that does not parse, tensors that are not LoRA factors or hold NaN /
    /// infinite values, and what [`SourceAdapter::new`] refuses.
    pub fn read(dir: &Path) -> Result<Self> {
        let name = dir.display().to_string();
        let config = read_config(dir, &name)?;
        // The config's refusals first: they say more than the tensors they imply (a DoRA magnitude, a bias).
        check_mergeable(&name, &config)?;
        let path = dir.join(WEIGHTS_FILE);
        if !path.is_file() {
            return Err(PeftError::bad_file(
                &path,
                "missing: an HF PEFT adapter folder holds adapter_model.safetensors",
            )
            .into());
        }
        let bytes = std::fs::read(&path).map_err(|e| PeftError::io("reading", &path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            PeftError::bad_file(&path, format!("not a readable safetensors file: {e}"))
        })?;
        let mut named: Vec<(&str, &Tensor)> =
            tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        named.sort_by_key(|(k, _)| *k);
        let found = non_finite_tensors(named.iter().copied())?;
        if !found.is_empty() {
            return Err(PeftError::NonFinite {
                action: "merge",
                path,
                found: describe_non_finite(&found),
            }
            .into());
        }
        let dtype = named.first().map_or(DType::F32, |(_, t)| t.dtype());
        let modules = modules_of(&tensors, &name)?;
        let mut adapter = SourceAdapter::new(name, config, modules)?;
        adapter.dtype = dtype;
        Ok(adapter)
    }

    /// The name in messages (the folder it was read from).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its config.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Its modules' factors, by full module name.
    pub fn modules(&self) -> &BTreeMap<String, ModuleFactors> {
        &self.modules
    }

    /// The scaling of `module`'s update (`lora_alpha / r` with the patterns applied), if it adapts it.
    pub fn scale(&self, module: &str) -> Option<f64> {
        self.scales.get(module).copied()
    }

    /// The dtype its tensors were stored in (f32 for an adapter made in memory).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Records the dtype its tensors are to be written in.
    pub(crate) fn set_dtype(&mut self, dtype: DType) {
        self.dtype = dtype;
    }

    /// The rank HF PEFT gives the adapter when merging: the largest of `r` and the `rank_pattern` values.
    pub fn largest_rank(&self) -> usize {
        self.config
            .rank_pattern
            .values()
            .copied()
            .fold(self.config.r, usize::max)
    }
}

/// Refuses the settings whose merge would not mean what the adapters mean.
fn check_mergeable(name: &str, config: &LoraConfig) -> Result<()> {
    let refuse = |what: String| {
        Err(MergeError::Unsupported {
            adapter: name.to_string(),
            what,
        })
    };
    if config.use_dora {
        return refuse(
            "it is a DoRA adapter (use_dora): its trained magnitude vectors cannot be combined (HF PEFT's merged \
             adapter would take the base weight's norms as magnitude and drop them); merge plain LoRA adapters"
                .into(),
        );
    }
    if config.bias != BiasMode::None {
        return refuse(format!(
            "it trains biases (bias = {}): trained biases replace the base's, so they cannot be weighted and \
             summed; merge adapters saved with bias = \"none\"",
            serde_json::to_string(&config.bias).unwrap_or_default()
        ));
    }
    if config
        .modules_to_save
        .as_ref()
        .is_some_and(|m| !m.is_empty())
    {
        return refuse(format!(
            "it saves whole modules (modules_to_save = {:?}, a trained head): those cannot be combined; merge \
             adapters without modules_to_save",
            config.modules_to_save.as_deref().unwrap_or_default()
        ));
    }
    if let InitLoraWeights::Named(init) = &config.init_lora_weights {
        let starting_values_only = ["gaussian", "eva", "orthogonal"]
            .iter()
            .any(|n| init.eq_ignore_ascii_case(n));
        if !starting_values_only {
            return refuse(format!(
                "it was started from factors of the base weight (init_lora_weights = {init:?}), which the base \
                 must have subtracted: convert it to plain LoRA first (`peft convert`, or HF PEFT's \
                 save_pretrained with path_initial_model_for_weight_conversion)"
            ));
        }
    }
    // Variants this workspace does not implement (aLoRA, QALoRA, ...), refused as loading refuses them.
    config
        .check_supported()
        .or_else(|e| match e {
            // An init that only chose starting values is fine once trained.
            PeftError::Unsupported(m) if m.contains("init_lora_weights") => Ok(()),
            other => Err(other),
        })
        .map_err(|e| MergeError::Unsupported {
            adapter: name.to_string(),
            what: e.to_string(),
        })
}

/// The LoRA config of the folder `dir`, or why not.
fn read_config(dir: &Path, name: &str) -> Result<LoraConfig> {
    if !dir.is_dir() {
        return Err(PeftError::bad_file(
            dir,
            "no such adapter folder (it should hold adapter_config.json and adapter_model.safetensors)",
        )
        .into());
    }
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Err(PeftError::bad_file(
            &path,
            "missing: an HF PEFT adapter folder holds adapter_config.json",
        )
        .into());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| PeftError::io("reading", &path, e))?;
    let bad = |message: String| MergeError::Io(PeftError::bad_file(&path, message));
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    match value.get("peft_type").and_then(|t| t.as_str()) {
        Some("LORA") => {}
        Some(other) => {
            return Err(MergeError::NotLora {
                adapter: name.to_string(),
                peft_type: other.to_string(),
            })
        }
        None => {
            return Err(bad(
                "no `peft_type`: an HF PEFT LoRA adapter's config says \"peft_type\": \"LORA\""
                    .into(),
            ))
        }
    }
    // Parsed as the method registry parses it first, for errors that name the key.
    peft_lora::register();
    peft_core::method_config::method_from_value(value.clone()).map_err(bad)?;
    if let Some(object) = value.as_object_mut() {
        object.remove("peft_type");
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// The modules of an adapter's `tensors`, each with its two factors; any other tensor is an error.
fn modules_of(
    tensors: &HashMap<String, Tensor>,
    adapter: &str,
) -> Result<BTreeMap<String, ModuleFactors>> {
    let mut modules = BTreeMap::new();
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let inconsistent = |message: String| MergeError::Inconsistent {
        adapter: adapter.to_string(),
        message,
    };
    for key in keys {
        let parsed = [FactorKeys::Linear, FactorKeys::Embedding]
            .into_iter()
            .find_map(|kind| {
                let (a, b) = kind.suffixes();
                let rest = key.strip_prefix(KEY_PREFIX)?;
                rest.strip_suffix(a)
                    .map(|m| (kind, m, true))
                    .or_else(|| rest.strip_suffix(b).map(|m| (kind, m, false)))
            });
        let Some((kind, module, is_a)) = parsed else {
            return Err(inconsistent(format!(
                "tensor `{key}` is not a LoRA factor (`{KEY_PREFIX}<module>.lora_A.weight` / `.lora_B.weight`): \
                 merging combines LoRA factors only, not trained biases, heads or DoRA magnitudes"
            )));
        };
        if !is_a {
            // Read with its A.
            let (a_key, _) = kind.keys(module);
            if !tensors.contains_key(&a_key) {
                return Err(inconsistent(format!("`{key}` has no `{a_key}` beside it")));
            }
            continue;
        }
        let (_, b_key) = kind.keys(module);
        let Some(b) = tensors.get(&b_key) else {
            return Err(inconsistent(format!("`{key}` has no `{b_key}` beside it")));
        };
        let matrix = |t: &Tensor, k: &str| -> Result<Matrix> {
            Matrix::from_tensor(t)?.ok_or_else(|| {
                inconsistent(format!(
                    "`{k}` has shape {:?}: merging takes the 2-D factors of linear layers and embeddings (not \
                     convolutions)",
                    t.dims()
                ))
            })
        };
        let factors = ModuleFactors {
            a: matrix(&tensors[key], key)?,
            b: matrix(b, &b_key)?,
            keys: kind,
        };
        modules.insert(module.to_string(), factors);
    }
    Ok(modules)
}
