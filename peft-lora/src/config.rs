//! HF PEFT's `LoraConfig`: the same field names, defaults and meaning, so that an `adapter_config.json` written
//! by HF PEFT 0.21 parses here and one written here loads there. Fields for LoRA variants this crate does not
//! implement (aLoRA, QALoRA, ...) are read and written back unchanged, and `build` refuses the values
//! that would change the computation. `build` resolves the targets, draws the factors and makes the
//! [`Lora`] adapter.
//!
//! ```
//! use peft_core::method::PeftMethod;
//! use peft_lora::LoraConfig;
//! // Every unset field takes HF PEFT's default, stated once in `LoraConfig::default`.
//! let read: LoraConfig = serde_json::from_str(r#"{"target_modules": ["q_proj"]}"#).unwrap();
//! assert_eq!(read, LoraConfig::new(8, ["q_proj"]));
//! assert_eq!((read.r, read.lora_alpha), (8, 8.0));
//! assert_eq!(serde_json::to_value(&read).unwrap()["lora_alpha"], 8); // written as HF writes it
//! // Sized for a parameter budget by its rank, keeping lora_alpha / r.
//! let spec = peft_core::spec::ModelSpec::new("llama", 2, 32, 4, 2, 128, 64);
//! let r4 = serde_json::to_value(read.with_size(4, &spec).unwrap()).unwrap();
//! assert_eq!((&r4["r"], &r4["lora_alpha"]), (&serde_json::json!(4), &serde_json::json!(4)));
//! ```

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::spec::ModelSpec;
use peft_core::{PeftError, Result};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::adapter::{trainable_biases, Lora, LoraLayer};
use crate::dora::DoraLayer;
use crate::dropout::Dropout;
use crate::init::{factors_from_base, initial_pair};
use crate::targets::resolve_targets;

pub use peft_core::tuner::{LayerSelection, LayersPattern, TargetModules, ALL_LINEAR};

/// `init_lora_weights`: `true`, `false`, or the name of an initialisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true`: A kaiming-uniform (a = sqrt 5), B zero, so the fresh adapter is a no-op. `false`: A and B both
    /// as `nn.Linear` initialises them, so the fresh adapter changes the model (for tests and debugging).
    Flag(bool),
    /// `"gaussian"`: A ~ N(0, (1/r)^2), B zero. `"pissa"`, `"pissa_niter_<K>"`, `"olora"`: factors taken from
    /// the frozen weight (see [`LoraInit`]). Other names (`"eva"`, `"loftq"`, `"corda"`, ...) are HF PEFT
    /// initialisations this crate does not implement.
    Named(String),
}

impl Default for InitLoraWeights {
    fn default() -> Self {
        InitLoraWeights::Flag(true)
    }
}

/// How the adapter starts, once `init_lora_weights` is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraInit {
    /// HF PEFT's default: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0.
    KaimingUniform,
    /// A ~ N(0, (1/r)^2), B = 0.
    Gaussian,
    /// A ~ U(-1/sqrt(in), 1/sqrt(in)), B ~ U(-1/sqrt(r), 1/sqrt(r)): not a no-op.
    Random,
    /// PiSSA: the top `r` singular triplets of W, `A = sqrt(S/s) V^T`, `B = U sqrt(S/s)` (`s` the scale), and the
    /// model runs on `W - s B A`; `Some(niter)` finds them by randomized subspace iteration.
    Pissa {
        /// Subspace iterations of the randomized SVD (`"pissa_niter_<K>"`), or `None` for the exact SVD.
        niter: Option<usize>,
    },
    /// OLoRA: `B = Q[:, :r]`, `A = R[:r]` of W's QR, and the model runs on `W - s B A`.
    Olora,
}

impl LoraInit {
    /// Whether the factors come from the frozen weight, whose part `s B0 A0` then leaves the base (PiSSA,
    /// OLoRA): the adapter keeps `B0`, `A0` and subtracts their product, so the shared base stays as loaded.
    pub fn rewrites_base(self) -> bool {
        matches!(self, LoraInit::Pissa { .. } | LoraInit::Olora)
    }
}

impl InitLoraWeights {
    /// HF PEFT initialisations not implemented here that only choose the starting values and leave the base
    /// weights alone, so that an adapter saved with them loads like any other.
    fn only_starting_values(&self) -> bool {
        matches!(self, InitLoraWeights::Named(name)
            if matches!(name.to_ascii_lowercase().as_str(), "eva" | "orthogonal"))
    }

    /// The initialisation this value asks for, or an error naming the supported ones.
    pub fn resolve(&self) -> Result<LoraInit> {
        match self {
            InitLoraWeights::Flag(true) => Ok(LoraInit::KaimingUniform),
            InitLoraWeights::Flag(false) => Ok(LoraInit::Random),
            InitLoraWeights::Named(name) => {
                let lower = name.to_ascii_lowercase();
                if lower == "gaussian" {
                    return Ok(LoraInit::Gaussian);
                }
                if lower == "olora" {
                    return Ok(LoraInit::Olora);
                }
                // HF PEFT is case-sensitive here: "pissa" or "pissa_niter_<K>".
                if name == "pissa" {
                    return Ok(LoraInit::Pissa { niter: None });
                }
                if let Some(k) = name.strip_prefix("pissa_niter_") {
                    return match k.parse::<usize>() {
                        Ok(niter) => Ok(LoraInit::Pissa { niter: Some(niter) }),
                        Err(_) => Err(PeftError::Config(format!(
                            "init_lora_weights = {name:?}: the number after pissa_niter_ must be a whole number \
                             of subspace iterations, as in \"pissa_niter_4\""
                        ))),
                    };
                }
                Err(PeftError::Unsupported(format!(
                    "init_lora_weights = {name:?} is not implemented here: use true (default), false, \
                     \"gaussian\", \"pissa\", \"pissa_niter_<K>\" or \"olora\""
                )))
            }
        }
    }
}

/// `bias`: which frozen biases become trainable (and are saved with the adapter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BiasMode {
    /// No bias is trained.
    #[default]
    #[serde(rename = "none")]
    None,
    /// Every bias of the model (linear and norm modules), saved as `<module>.bias`, or
    /// `<module>.base_layer.bias` for LoRA-wrapped modules.
    #[serde(rename = "all")]
    All,
    /// The biases of the LoRA-wrapped modules only, saved as `<module>.base_layer.bias`.
    #[serde(rename = "lora_only")]
    LoraOnly,
}

/// HF PEFT's `LoraConfig` (peft_type `LORA`). A field missing from the JSON takes its value in
/// [`LoraConfig::default`], HF PEFT's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Rank of the update (default 8).
    pub r: usize,
    /// Modules to adapt; `None` picks the query and value projections (or the fused one) by their roles,
    /// HF PEFT's default for the zoo's architectures ([`DEFAULT_ROLES`](crate::DEFAULT_ROLES); filled in when built).
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt, matched as `target_modules` is.
    pub exclude_modules: Option<TargetModules>,
    /// Scale numerator (default 8): the update is scaled by `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA).
    #[serde(serialize_with = "peft_core::tuner::numbers::whole_as_integer")]
    pub lora_alpha: f64,
    /// Dropout on the LoRA branch's input during training (default 0).
    pub lora_dropout: f64,
    /// True where the frozen weight is stored `[in, out]` (GPT-2's Conv1D); filled in from the model. The
    /// frozen weights here are always `[out, in]`, so it only matters to HF PEFT.
    pub fan_in_fan_out: bool,
    /// Which biases are trained: `none` (default), `all`, `lora_only`.
    pub bias: BiasMode,
    /// Rank-stabilised LoRA: scale by `lora_alpha / sqrt(r)`.
    pub use_rslora: bool,
    /// Extra modules trained in full; not supported here (must be empty).
    pub modules_to_save: Option<Vec<String>>,
    /// Initialisation: `true` (default), `false` or `"gaussian"`.
    pub init_lora_weights: InitLoraWeights,
    /// Only adapt the modules of these layer indices.
    pub layers_to_transform: Option<LayerSelection>,
    /// Name of the layer list (`layers`, `h`) that `layers_to_transform` indexes.
    pub layers_pattern: Option<LayersPattern>,
    /// Per-module ranks by name pattern (`(.*\.)?<key>$`), overriding `r`.
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alphas by name pattern, overriding `lora_alpha`.
    #[serde(serialize_with = "peft_core::tuner::numbers::map_whole_as_integer")]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// A bias on `lora_B`; not supported here (must be false).
    pub lora_bias: bool,
    /// DoRA: a trained magnitude per output feature times the normalised direction of `W + scale B A`
    /// (see [`DoraLayer`](crate::DoraLayer)).
    pub use_dora: bool,
    /// Version of HF PEFT that wrote the config.
    pub peft_version: Option<String>,
    /// Fields of HF PEFT 0.21 kept for round trips; a value that would change the computation is refused.
    #[serde(flatten)]
    pub hf: HfLoraFields,
}

/// The HF PEFT `LoraConfig` fields that this crate reads and writes back but does not implement. Each is
/// `null` / default in an ordinary LoRA adapter; `build` refuses the ones whose value would change the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfLoraFields {
    /// Activated LoRA invocation tokens (refused when set).
    #[serde(default)]
    pub alora_invocation_tokens: Option<serde_json::Value>,
    /// Arrow routing (refused when set).
    #[serde(default)]
    pub arrow_config: Option<serde_json::Value>,
    /// Custom model mapping of HF PEFT.
    #[serde(default)]
    pub auto_mapping: Option<serde_json::Value>,
    /// CorDA initialisation settings.
    #[serde(default)]
    pub corda_config: Option<serde_json::Value>,
    /// Tie adapters of tied layers.
    #[serde(default)]
    pub ensure_weight_tying: bool,
    /// EVA initialisation settings.
    #[serde(default)]
    pub eva_config: Option<serde_json::Value>,
    /// KaSA variant (refused when set).
    #[serde(default)]
    pub kasa_config: Option<serde_json::Value>,
    /// Layer replication (refused when set).
    #[serde(default)]
    pub layer_replication: Option<serde_json::Value>,
    /// LoftQ settings.
    #[serde(default = "empty_object")]
    pub loftq_config: serde_json::Value,
    /// LoRA-GA settings.
    #[serde(default)]
    pub lora_ga_config: Option<serde_json::Value>,
    /// Megatron parallel layers' config.
    #[serde(default)]
    pub megatron_config: Option<serde_json::Value>,
    /// Megatron module path.
    #[serde(default = "default_megatron_core")]
    pub megatron_core: Option<String>,
    /// MonteCLoRA variant (refused when set).
    #[serde(default)]
    pub monteclora_config: Option<serde_json::Value>,
    /// QALoRA group size.
    #[serde(default = "default_qalora_group_size")]
    pub qalora_group_size: usize,
    /// Parameters (not modules) to adapt (refused when set).
    #[serde(default)]
    pub target_parameters: Option<serde_json::Value>,
    /// Trainable token rows of the embeddings (refused when set).
    #[serde(default)]
    pub trainable_token_indices: Option<serde_json::Value>,
    /// Block-diagonal LoRA (refused when set).
    #[serde(default)]
    pub use_bdlora: Option<serde_json::Value>,
    /// QALoRA (refused when true).
    #[serde(default)]
    pub use_qalora: bool,
    /// VeLoRA variant (refused when set).
    #[serde(default)]
    pub velora_config: Option<serde_json::Value>,
}

impl Default for HfLoraFields {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every field has a default")
    }
}

fn default_megatron_core() -> Option<String> {
    Some("megatron.core".into())
}

fn default_qalora_group_size() -> usize {
    16
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// HF PEFT's defaults, which serde also takes for every field a config leaves out.
impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            common: CommonConfig::default(),
            r: 8,
            target_modules: None,
            exclude_modules: None,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            fan_in_fan_out: false,
            bias: BiasMode::None,
            use_rslora: false,
            modules_to_save: None,
            init_lora_weights: InitLoraWeights::default(),
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            lora_bias: false,
            use_dora: false,
            peft_version: None,
            hf: HfLoraFields::default(),
        }
    }
}

impl LoraConfig {
    /// A causal-LM config of rank `r` on the modules `targets` (alpha 8, as HF PEFT's default).
    pub fn new<S: Into<String>>(r: usize, targets: impl IntoIterator<Item = S>) -> Self {
        LoraConfig {
            r,
            target_modules: Some(TargetModules::list(targets)),
            ..LoraConfig::default()
        }
    }

    /// The update's scale for rank `r` and alpha `alpha`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale_for(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// Refuses what this crate cannot reproduce, each with what to change.
    pub fn check_supported(&self) -> Result<()> {
        peft_core::tuner::check_rank(self.r, "LoRA", 8)?;
        peft_core::tuner::check_rank_pattern(&self.rank_pattern, "LoRA")?;
        peft_core::tuner::check_probability("lora_dropout", self.lora_dropout)?;
        if self.use_dora && self.lora_bias {
            return Err(PeftError::Config(
                "DoRA (use_dora = true) with lora_bias = true: HF PEFT refuses the pair; set lora_bias = false \
                 or use_dora = false"
                    .into(),
            ));
        }
        if self.lora_bias {
            return Err(PeftError::Unsupported(
                "lora_bias = true (a bias on lora_B) is not implemented here; set lora_bias = false".into(),
            ));
        }
        // HF PEFT lists the classification head of a SEQ_CLS adapter here; the head travels as WithClassifier.
        peft_core::head::check_modules_to_save(
            self.modules_to_save.as_ref(),
            self.common.task_type.as_deref(),
            "LoRA",
        )?;
        // A saved adapter's tensors come from its file, but PiSSA and OLoRA rebuild B0 A0 from the base weight
        // as HF PEFT does when it loads one, so every init must be one this crate computes.
        let init = match self.init_lora_weights.resolve() {
            Ok(init) => Some(init),
            // Inits that only chose the starting values (EVA, orthogonal) do not matter once trained.
            Err(_) if self.common.inference_mode && self.init_lora_weights.only_starting_values() => {
                None
            }
            Err(_) if self.common.inference_mode => {
                return Err(PeftError::Unsupported(format!(
                    "this adapter was made with init_lora_weights = {:?}, which also changes the base model's \
                     weights in a way not implemented here; convert it to plain LoRA with HF PEFT \
                     (save_pretrained with path_initial_model_for_weight_conversion) before loading it here",
                    self.init_lora_weights
                )))
            }
            Err(e) => return Err(e),
        };
        if init.is_some_and(LoraInit::rewrites_base) && self.use_dora {
            return Err(PeftError::Unsupported(format!(
                "use_dora with init_lora_weights = {:?} is not implemented here: use one of the two",
                self.init_lora_weights
            )));
        }
        self.target_fields().check_layer_selection()?;
        let h = &self.hf;
        let refused: [(&str, bool); 10] = [
            (
                "alora_invocation_tokens (aLoRA)",
                h.alora_invocation_tokens.is_some(),
            ),
            ("arrow_config (Arrow routing)", h.arrow_config.is_some()),
            ("kasa_config (KaSA)", h.kasa_config.is_some()),
            ("layer_replication", h.layer_replication.is_some()),
            (
                "monteclora_config (MonteCLoRA)",
                h.monteclora_config.is_some(),
            ),
            (
                "target_parameters",
                h.target_parameters
                    .as_ref()
                    .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())),
            ),
            (
                "trainable_token_indices",
                h.trainable_token_indices.is_some(),
            ),
            ("use_bdlora (block-diagonal LoRA)", h.use_bdlora.is_some()),
            ("use_qalora (QALoRA)", h.use_qalora),
            ("velora_config (VeLoRA)", h.velora_config.is_some()),
        ];
        if let Some((name, _)) = refused.iter().find(|(_, set)| *set) {
            return Err(PeftError::Unsupported(format!(
                "{name} is set: this LoRA variant is not implemented here; remove it for plain LoRA"
            )));
        }
        Ok(())
    }
}

#[typetag::serde(name = "LORA")]
impl PeftMethod for LoraConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(self.build_lora(init)?))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonConfig {
        &mut self.common
    }

    fn size_knob(&self) -> Option<&'static str> {
        Some("r")
    }

    /// Rank `size`, with `lora_alpha` scaled along so that `lora_alpha / r` (the update's scale) stays as
    /// configured.
    fn with_size(&self, size: usize, _spec: &ModelSpec) -> Option<Box<dyn PeftMethod>> {
        let r = size.max(1);
        Some(Box::new(LoraConfig {
            r,
            lora_alpha: self.lora_alpha * r as f64 / self.r.max(1) as f64,
            ..self.clone()
        }))
    }
}

impl LoraConfig {
    /// Builds the adapter for `init.model` (what [`PeftMethod::build`] does, with the concrete type). A config
    /// read from a saved adapter (`inference_mode`) starts from zeros and draws nothing: its tensors come from
    /// the file.
    pub fn build_lora(&self, init: &mut InitCtx) -> Result<Lora> {
        self.check_supported()?;
        let model = init.model;
        let spec = model.spec();
        let device = model.device().clone();
        let (targets, saved_targets) = resolve_targets(self, spec)?;

        let mut config = self.clone();
        config.target_modules = Some(saved_targets);
        // HF PEFT switches fan_in_fan_out on for Conv1D modules (and off for nn.Linear), with a warning.
        config.fan_in_fan_out = targets.iter().any(|t| t.fan_in_fan_out);
        if config.common.task_type.is_none() {
            config.common.task_type =
                Some(peft_core::prompt_learning::default_task_type(init.model).into());
        }

        let how = self.init_lora_weights.resolve().ok();
        let fresh = if self.common.inference_mode {
            None
        } else {
            how
        };
        // PiSSA / OLoRA take their factors from the base weight, also for a saved adapter (its B0 A0 are not
        // in the file: HF PEFT recomputes them when it loads one too).
        let from_base = how.filter(|h| h.rewrites_base());
        let mut layers = Vec::with_capacity(targets.len());
        for target in targets {
            let scale = self.scale_for(target.r, target.alpha);
            let initial = match from_base {
                Some(how) => {
                    let frozen = model.frozen_linear(target.site).ok_or_else(|| {
                        PeftError::Unsupported(format!(
                            "init_lora_weights = {:?}: `{}` is not a linear layer the model exposes",
                            self.init_lora_weights, target.name
                        ))
                    })?;
                    Some(factors_from_base(how, &frozen.weight()?, &target, scale)?)
                }
                None => None,
            };
            let (a, b) = match (&initial, fresh) {
                (Some((a0, b0)), _) => (a0.copy()?, b0.copy()?),
                (None, Some(how)) => initial_pair(
                    how,
                    target.r,
                    target.in_features,
                    target.out_features,
                    &mut init.rng,
                    &device,
                )?,
                (None, None) => (
                    Tensor::zeros((target.r, target.in_features), DType::F32, &device)?,
                    Tensor::zeros((target.out_features, target.r), DType::F32, &device)?,
                ),
            };
            let scale = self.scale_for(target.r, target.alpha);
            // HF PEFT sets the magnitude from the factors just drawn (the norm of W where B = 0).
            let dora = if self.use_dora {
                let frozen = model.frozen_linear(target.site).ok_or_else(|| {
                    PeftError::Unsupported(format!(
                        "use_dora: `{}` is not a linear layer the model exposes",
                        target.name
                    ))
                })?;
                Some(DoraLayer::new(frozen.clone(), &a, &b, scale)?)
            } else {
                None
            };
            let layer = LoraLayer::new(target, Var::from_tensor(&a)?, Var::from_tensor(&b)?, scale);
            layers.push(match (dora, initial) {
                (Some(dora), _) => layer.with_dora(dora),
                (None, Some((a0, b0))) => layer.with_initial(a0, b0),
                (None, None) => layer,
            });
        }

        let biases = trainable_biases(self.bias, model, &layers)?;
        // Drawn after the factors, so that the same seed gives the same factors whatever the dropout.
        let dropout_seed = match fresh {
            Some(_) => rand::Rng::random(&mut init.rng),
            None => 0,
        };
        let dropout = Dropout::new(
            self.lora_dropout,
            rand::rngs::StdRng::seed_from_u64(dropout_seed),
        );
        Ok(Lora::new(config, layers, biases, dropout, spec.sites.len()))
    }
}
