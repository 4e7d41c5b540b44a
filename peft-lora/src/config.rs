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
use serde::{Deserialize, Serialize, Serializer};

use crate::adapter::{trainable_biases, Lora, LoraLayer};
use crate::dora::DoraLayer;
use crate::dropout::Dropout;
use crate::init::initial_pair;
use crate::targets::resolve_targets;

/// `target_modules` / `exclude_modules`: a list of names, or one string that is a regular expression
/// full-matched against whole module names (`"all-linear"` is the shorthand for every linear module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names; an entry matches a module whose full name equals it or ends with `"." + entry`.
    List(Vec<String>),
    /// A regular expression over full module names, or `"all-linear"`.
    Pattern(String),
}

impl TargetModules {
    /// A list of names.
    pub fn list<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        TargetModules::List(names.into_iter().map(Into::into).collect())
    }

    /// Whether this is HF PEFT's `"all-linear"` shorthand (compared case-insensitively, as HF PEFT does).
    pub fn is_all_linear(&self) -> bool {
        matches!(self, TargetModules::Pattern(p) if p.eq_ignore_ascii_case(ALL_LINEAR))
    }
}

/// HF PEFT's shorthand for every linear module except the output head.
pub const ALL_LINEAR: &str = "all-linear";

/// `layers_to_transform`: one layer index or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerSelection {
    /// A single layer.
    One(usize),
    /// Several layers.
    Many(Vec<usize>),
}

impl LayerSelection {
    /// Whether layer `index` is selected.
    pub fn contains(&self, index: usize) -> bool {
        match self {
            LayerSelection::One(i) => *i == index,
            LayerSelection::Many(v) => v.contains(&index),
        }
    }

    /// HF PEFT treats an empty list as "no selection".
    pub fn is_empty(&self) -> bool {
        matches!(self, LayerSelection::Many(v) if v.is_empty())
    }
}

/// `layers_pattern`: the name (or names) of the module list holding the layers (`"layers"`, `"h"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayersPattern {
    /// One name.
    One(String),
    /// Several names, tried in order.
    Many(Vec<String>),
}

impl LayersPattern {
    /// The names, in order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            LayersPattern::One(s) => vec![s.as_str()],
            LayersPattern::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// `init_lora_weights`: `true`, `false`, or the name of an initialisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true`: A kaiming-uniform (a = sqrt 5), B zero, so the fresh adapter is a no-op. `false`: A and B both
    /// as `nn.Linear` initialises them, so the fresh adapter changes the model (for tests and debugging).
    Flag(bool),
    /// `"gaussian"`: A ~ N(0, (1/r)^2), B zero. Other names (`"pissa"`, `"olora"`, `"eva"`, ...) are HF PEFT
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
}

impl InitLoraWeights {
    /// The initialisation this value asks for, or an error naming the supported ones.
    pub fn resolve(&self) -> Result<LoraInit> {
        match self {
            InitLoraWeights::Flag(true) => Ok(LoraInit::KaimingUniform),
            InitLoraWeights::Flag(false) => Ok(LoraInit::Random),
            InitLoraWeights::Named(name) if name.eq_ignore_ascii_case("gaussian") => {
                Ok(LoraInit::Gaussian)
            }
            InitLoraWeights::Named(name) => Err(PeftError::Unsupported(format!(
                "init_lora_weights = {name:?} is not implemented here: use true (default), false or \"gaussian\""
            ))),
        }
    }

    /// Named initialisations that only choose the starting values and leave the base weights alone, so that
    /// an adapter saved with them loads like any other.
    fn leaves_base_weights_alone(&self) -> bool {
        match self {
            InitLoraWeights::Flag(_) => true,
            InitLoraWeights::Named(name) => {
                let name = name.to_ascii_lowercase();
                matches!(name.as_str(), "gaussian" | "eva" | "orthogonal")
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
    #[serde(serialize_with = "number")]
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
    #[serde(serialize_with = "number_map")]
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

/// Writes whole numbers as integers (HF PEFT writes `"lora_alpha": 16`), others as floats.
fn number<S: Serializer>(value: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        s.serialize_i64(*value as i64)
    } else {
        s.serialize_f64(*value)
    }
}

fn number_map<S: Serializer>(
    map: &BTreeMap<String, f64>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    struct Num(f64);
    impl Serialize for Num {
        fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            number(&self.0, s)
        }
    }
    let mut m = s.serialize_map(Some(map.len()))?;
    for (k, v) in map {
        m.serialize_entry(k, &Num(*v))?;
    }
    m.end()
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
        if self.r == 0 {
            return Err(PeftError::Config(
                "r = 0: the LoRA rank must be at least 1 (HF PEFT's default is 8)".into(),
            ));
        }
        if let Some((key, _)) = self.rank_pattern.iter().find(|(_, &r)| r == 0) {
            return Err(PeftError::Config(format!(
                "rank_pattern gives `{key}` rank 0: every rank must be at least 1"
            )));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(PeftError::Config(format!(
                "lora_dropout = {} must be in [0, 1)",
                self.lora_dropout
            )));
        }
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
        if self.common.inference_mode {
            // A saved adapter: its tensors come from the file, so only inits that changed the base weights
            // (PiSSA, OLoRA, LoftQ, ...) make it unusable on the unchanged base model.
            if !self.init_lora_weights.leaves_base_weights_alone() {
                return Err(PeftError::Unsupported(format!(
                    "this adapter was made with init_lora_weights = {:?}, which also changes the base model's \
                     weights; convert it to plain LoRA with HF PEFT (save_pretrained with \
                     path_initial_model_for_weight_conversion) before loading it here",
                    self.init_lora_weights
                )));
            }
        } else {
            self.init_lora_weights.resolve()?;
        }
        if let (Some(TargetModules::Pattern(p)), Some(_)) =
            (&self.target_modules, &self.layers_to_transform)
        {
            return Err(PeftError::Config(format!(
                "layers_to_transform cannot be used when target_modules is a string ({p:?}), as in HF PEFT: \
                 list the module names instead, or put the layer numbers in the regular expression"
            )));
        }
        if self.layers_pattern.is_some() && self.layers_to_transform.is_none() {
            return Err(PeftError::Config(
                "layers_pattern is set but layers_to_transform is not: give the layer indices too"
                    .into(),
            ));
        }
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

        let fresh = if self.common.inference_mode {
            None
        } else {
            Some(self.init_lora_weights.resolve()?)
        };
        let mut layers = Vec::with_capacity(targets.len());
        for target in targets {
            let (a, b) = match fresh {
                Some(how) => initial_pair(
                    how,
                    target.r,
                    target.in_features,
                    target.out_features,
                    &mut init.rng,
                    &device,
                )?,
                None => (
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
            layers.push(match dora {
                Some(dora) => layer.with_dora(dora),
                None => layer,
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
