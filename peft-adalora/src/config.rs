//! HF PEFT's `AdaLoraConfig` (a `LoraConfig` with the allocator's fields): the same field names, defaults and
//! meaning, so that an `adapter_config.json` written by HF PEFT 0.21 parses here and one written here loads
//! there. The LoRA fields AdaLoRA does not use are read and written back unchanged; `check` refuses what HF
//! PEFT refuses, with its reasons. `build` resolves the targets and makes the [`AdaLora`] adapter, at `init_r`
//! for training, or at the ranks of `rank_pattern` for a saved adapter (as HF PEFT resizes one when loading).
//!
//! ```
//! use peft_adalora::AdaLoraConfig;
//! // Every unset field takes HF PEFT's default; HF PEFT requires total_step.
//! let read: AdaLoraConfig = serde_json::from_str(r#"{"total_step": 100}"#).unwrap();
//! assert_eq!((read.init_r, read.target_r, read.tinit, read.tfinal, read.delta_t), (12, 8, 0, 0, 1));
//! assert_eq!((read.beta1, read.beta2, read.orth_reg_weight, read.lora_alpha), (0.85, 0.85, 0.5, 8.0));
//! read.check().unwrap();
//! let no_total: AdaLoraConfig = serde_json::from_str("{}").unwrap();
//! assert!(no_total.check().unwrap_err().to_string().contains("total_step"));
//! ```

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::spec::ModelSpec;
use peft_core::tuner::{check_probability, BiasScope, Dropout, TargetFields};
use peft_core::{PeftError, Result};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::adapter::{AdaLora, AdaLoraLayer};
use crate::rank_pattern::{pattern_for, RankPattern};
use crate::targets::resolve_targets;

pub use peft_core::tuner::{LayerSelection, LayersPattern, TargetModules, ALL_LINEAR};

/// `bias`: which frozen biases become trainable (and are saved with the adapter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BiasMode {
    /// No bias is trained.
    #[default]
    #[serde(rename = "none")]
    None,
    /// Every bias of the model, saved as `<module>.bias`, or `<module>.base_layer.bias` for adapted modules.
    #[serde(rename = "all")]
    All,
    /// The biases of the adapted modules only, saved as `<module>.base_layer.bias`.
    #[serde(rename = "lora_only")]
    LoraOnly,
}

impl BiasMode {
    /// Which biases this setting trains.
    pub fn scope(self) -> BiasScope {
        match self {
            BiasMode::None => BiasScope::None,
            BiasMode::All => BiasScope::All,
            BiasMode::LoraOnly => BiasScope::WrappedOnly,
        }
    }
}

/// HF PEFT's `AdaLoraConfig` (peft_type `ADALORA`, Zhang et al., 2023). A field missing from the JSON takes
/// its value in [`AdaLoraConfig::default`], HF PEFT's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdaLoraConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// The average rank each module keeps at the end of the budgeting phase (default 8).
    pub target_r: usize,
    /// The rank every module starts with (default 12).
    pub init_r: usize,
    /// Steps of warm-up before any rank is masked (default 0).
    pub tinit: usize,
    /// Steps at the end during which the final ranks are kept and only fine-tuned (default 0).
    pub tfinal: usize,
    /// Steps between two allocations in the budgeting phase (default 1; HF's name is `deltaT`).
    #[serde(rename = "deltaT")]
    pub delta_t: usize,
    /// Smoothing of the sensitivity's moving average (default 0.85).
    pub beta1: f64,
    /// Smoothing of the uncertainty's moving average (default 0.85).
    pub beta2: f64,
    /// Weight of the orthogonality regulariser added to the training loss (default 0.5).
    pub orth_reg_weight: f64,
    /// The run's total number of optimiser steps, which the budget schedule is laid out over (HF PEFT
    /// requires it: no default).
    pub total_step: Option<usize>,
    /// Which singular values of each module survived the allocation, by `<module>.lora_E`: written when
    /// saving a trained adapter, and the ranks a saved adapter is built at.
    pub rank_pattern: Option<RankPattern>,
    /// LoRA's rank: not used by AdaLoRA (HF PEFT warns when it is not 8); `init_r` is the starting rank.
    pub r: usize,
    /// Modules to adapt; `None` picks the query and value projections (or the fused one) by their roles
    /// ([`DEFAULT_ROLES`](crate::DEFAULT_ROLES)); filled in when built.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt, matched as `target_modules` is.
    pub exclude_modules: Option<TargetModules>,
    /// Scale numerator (default 8): the update is scaled by `lora_alpha / (init_r + 1e-5)` (by the rank
    /// instead of `lora_alpha` where `lora_alpha <= 0`, as HF PEFT does).
    #[serde(serialize_with = "peft_core::tuner::numbers::whole_as_integer")]
    pub lora_alpha: f64,
    /// Dropout on the branch's input during training (default 0).
    pub lora_dropout: f64,
    /// True where the frozen weight is stored `[in, out]` (GPT-2's Conv1D); filled in from the model.
    pub fan_in_fan_out: bool,
    /// Which biases are trained: `none` (default), `all`, `lora_only`.
    pub bias: BiasMode,
    /// Extra modules trained in full; only a classification head (carried as HF PEFT carries it).
    pub modules_to_save: Option<Vec<String>>,
    /// Truthy (default `true`): `lora_E` zero and `lora_A`, `lora_B` drawn from N(0, 0.02^2), so a fresh adapter
    /// is a no-op; `false`: all three standard normal, as HF PEFT leaves them (for tests).
    pub init_lora_weights: serde_json::Value,
    /// Only adapt the modules of these layer indices.
    pub layers_to_transform: Option<LayerSelection>,
    /// Name of the layer list (`layers`, `h`) that `layers_to_transform` indexes.
    pub layers_pattern: Option<LayersPattern>,
    /// DoRA: refused, as HF PEFT refuses it for AdaLoRA.
    pub use_dora: bool,
    /// LoftQ settings: refused when set, as HF PEFT refuses them for AdaLoRA.
    pub loftq_config: serde_json::Value,
    /// Version of HF PEFT that wrote the config.
    pub peft_version: Option<String>,
    /// The other `LoraConfig` fields HF PEFT writes, which AdaLoRA ignores, kept for round trips.
    #[serde(flatten)]
    pub lora: InheritedLoraFields,
}

/// `LoraConfig` fields that HF PEFT writes into an AdaLoRA config and that AdaLoRA's layers never read
/// (`use_rslora`, `alpha_pattern`, `lora_bias`, ... : its update is always scaled by `lora_alpha / init_r`).
/// Read and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InheritedLoraFields {
    /// Ignored by AdaLoRA (scaling is `lora_alpha / init_r`).
    #[serde(default)]
    pub use_rslora: bool,
    /// Ignored by AdaLoRA.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    /// Ignored by AdaLoRA's layers.
    #[serde(default)]
    pub lora_bias: bool,
    /// The remaining fields of HF PEFT 0.21's `LoraConfig` (variants AdaLoRA does not build on), as written.
    #[serde(default)]
    pub alora_invocation_tokens: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub arrow_config: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub auto_mapping: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub corda_config: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub ensure_weight_tying: bool,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub eva_config: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub kasa_config: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub layer_replication: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub lora_ga_config: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub megatron_config: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub megatron_core: Option<String>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub monteclora_config: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub qalora_group_size: Option<usize>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub target_parameters: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub trainable_token_indices: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub use_bdlora: Option<serde_json::Value>,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub use_qalora: bool,
    /// See `alora_invocation_tokens`.
    #[serde(default)]
    pub velora_config: Option<serde_json::Value>,
}

impl Default for InheritedLoraFields {
    fn default() -> Self {
        let mut fields: InheritedLoraFields =
            serde_json::from_value(serde_json::json!({})).expect("every field has a default");
        fields.megatron_core = Some("megatron.core".into());
        fields.qalora_group_size = Some(16);
        fields
    }
}

/// HF PEFT's defaults, which serde also takes for every field a config leaves out.
impl Default for AdaLoraConfig {
    fn default() -> Self {
        AdaLoraConfig {
            common: CommonConfig::default(),
            target_r: 8,
            init_r: 12,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg_weight: 0.5,
            total_step: None,
            rank_pattern: None,
            r: 8,
            target_modules: None,
            exclude_modules: None,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            fan_in_fan_out: false,
            bias: BiasMode::None,
            modules_to_save: None,
            init_lora_weights: serde_json::Value::Bool(true),
            layers_to_transform: None,
            layers_pattern: None,
            use_dora: false,
            loftq_config: serde_json::json!({}),
            peft_version: None,
            lora: InheritedLoraFields::default(),
        }
    }
}

/// Python's truth of a JSON value (`init_lora_weights` is tested with `if` in HF PEFT).
fn truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

impl AdaLoraConfig {
    /// A config starting at rank `init_r` and ending at `target_r` on average on the modules `targets`, laid
    /// out over `total_step` steps, other fields at HF PEFT's defaults.
    pub fn new<S: Into<String>>(
        init_r: usize,
        target_r: usize,
        total_step: usize,
        targets: impl IntoIterator<Item = S>,
    ) -> Self {
        AdaLoraConfig {
            init_r,
            target_r,
            total_step: Some(total_step),
            target_modules: Some(TargetModules::list(targets)),
            ..AdaLoraConfig::default()
        }
    }

    /// The fields that select the adapted modules.
    pub fn target_fields(&self) -> TargetFields<'_> {
        TargetFields {
            target_modules: self.target_modules.as_ref(),
            exclude_modules: self.exclude_modules.as_ref(),
            layers_to_transform: self.layers_to_transform.as_ref(),
            layers_pattern: self.layers_pattern.as_ref(),
        }
    }

    /// The scale of a module built at rank `r`: `lora_alpha` (or `r` where `lora_alpha <= 0`) over
    /// `ranknum + 1e-5`, HF PEFT's `scaling / (ranknum + 1e-5)`. `ranknum` is `init_r`, also for a module a
    /// rank pattern shrank (HF PEFT copies it over when resizing); a module of rank 0 adds nothing.
    pub fn scale_for(&self, r: usize) -> f64 {
        let scaling = if self.lora_alpha > 0.0 {
            self.lora_alpha
        } else {
            r as f64
        };
        // ranknum is a float32 parameter in HF PEFT; the 1e-5 is added in float32.
        let ranknum = self.init_r as f32 + 1e-5f32;
        scaling / ranknum as f64
    }

    /// Refuses what HF PEFT refuses, with its reasons, and what the allocator here cannot do, each with what
    /// to change.
    pub fn check(&self) -> Result<()> {
        let refuse = |m: String| Err(PeftError::Config(m));
        if self.use_dora {
            return refuse(
                "ADALORA does not support DoRA (as in HF PEFT): set use_dora = false".into(),
            );
        }
        if truthy(&self.loftq_config) {
            return refuse(
                "ADALORA does not support LOFTQ (as in HF PEFT): remove loftq_config".into(),
            );
        }
        self.target_fields().check_layer_selection()?;
        let Some(total_step) = self.total_step.filter(|&t| t > 0) else {
            return refuse(
                "AdaLoRA does not work when `total_step` is None, supply a value > 0 (HF PEFT's rule): set \
                 total_step to the run's number of optimiser steps (max_steps)"
                    .into(),
            );
        };
        if self.orth_reg_weight.is_nan() || self.orth_reg_weight < 0.0 {
            return refuse(format!(
                "`orth_reg_weight` should be greater than or equal to 0, but the value passed is {} (HF PEFT's \
                 rule)",
                self.orth_reg_weight
            ));
        }
        if self.tinit as i64 >= total_step as i64 - self.tfinal as i64 {
            return refuse(format!(
                "The supplied schedule values don't allow for a budgeting phase (tinit = {} >= total_step - \
                 tfinal = {} - {}). Decrease `tfinal`/`tinit` or increase `total_step`.",
                self.tinit, total_step, self.tfinal
            ));
        }
        check_probability("lora_dropout", self.lora_dropout)?;
        // HF PEFT lists the classification head of a SEQ_CLS adapter here; the head travels as WithClassifier.
        peft_core::head::check_modules_to_save(
            self.modules_to_save.as_ref(),
            self.common.task_type.as_deref(),
            "AdaLoRA",
        )?;
        if self.common.inference_mode {
            return Ok(());
        }
        // What only training needs: HF PEFT's RankAllocator asserts the betas, and fails at its first
        // allocation where no rank is left to mask.
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if beta.is_nan() || beta <= 0.0 || beta >= 1.0 {
                return refuse(format!(
                    "{name} = {beta} must be in (0, 1), as HF PEFT's rank allocator asserts"
                ));
            }
        }
        if self.init_r == 0 {
            return refuse(
                "init_r = 0 leaves nothing to train: set init_r to at least 1 (default 12)".into(),
            );
        }
        if self.target_r > self.init_r {
            return refuse(format!(
                "target_r = {} is above init_r = {}: the allocator only removes ranks; set target_r <= init_r",
                self.target_r, self.init_r
            ));
        }
        if self.delta_t == 0 {
            return refuse(
                "deltaT = 0: the steps between allocations must be at least 1 (default 1)".into(),
            );
        }
        if self.rank_pattern.is_some() {
            return refuse(
                "rank_pattern is set on a config to train: it is what training writes into a saved adapter; \
                 remove it to train afresh (a saved adapter loads with inference_mode = true)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Builds the adapter for `init.model` (what [`PeftMethod::build`] does, with the concrete type). A config
    /// read from a saved adapter (`inference_mode`) starts from zeros at its rank pattern's ranks and draws
    /// nothing: its tensors come from the file.
    pub fn build_adalora(&self, init: &mut InitCtx) -> Result<AdaLora> {
        self.check()?;
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
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        let masks = match &self.rank_pattern {
            Some(pattern) => Some(pattern_for(pattern, &names, self.init_r)?),
            None => None,
        };

        let fresh = !self.common.inference_mode;
        let small = Normal::new(0.0f32, 0.02).expect("a valid deviation");
        let mut layers = Vec::with_capacity(targets.len());
        for (i, target) in targets.into_iter().enumerate() {
            let r = match &masks {
                Some(m) => m[i]
                    .as_ref()
                    .map_or(self.init_r, |m| m.iter().filter(|&&k| k).count()),
                None => self.init_r,
            };
            let (in_f, out_f) = (target.in_features, target.out_features);
            let mut draw = |n: usize, standard: bool| -> Vec<f32> {
                (0..n)
                    .map(|_| {
                        if standard {
                            StandardNormal.sample(&mut init.rng)
                        } else {
                            small.sample(&mut init.rng)
                        }
                    })
                    .collect()
            };
            let (a, e, b) = if !fresh {
                (vec![0.0; r * in_f], vec![0.0; r], vec![0.0; out_f * r])
            } else if truthy(&self.init_lora_weights) {
                let a = draw(r * in_f, false);
                let b = draw(out_f * r, false);
                (a, vec![0.0; r], b)
            } else {
                let a = draw(r * in_f, true);
                let e = draw(r, true);
                let b = draw(out_f * r, true);
                (a, e, b)
            };
            let var = |v: Vec<f32>, dims: (usize, usize)| -> Result<Var> {
                Ok(Var::from_tensor(
                    &Tensor::from_vec(v, dims, &device)?.to_dtype(DType::F32)?,
                )?)
            };
            let scale = config.scale_for(r);
            layers.push(AdaLoraLayer::new(
                target,
                r,
                var(a, (r, in_f))?,
                var(e, (r, 1))?,
                var(b, (out_f, r))?,
                scale,
            ));
        }
        let wrapped: Vec<_> = layers.iter().map(AdaLoraLayer::site).collect();
        let biases =
            peft_core::tuner::trainable_biases(model, &wrapped, self.bias.scope(), self.bias)?;
        // Drawn after the factors, so that the same seed gives the same factors whatever the dropout.
        let dropout_seed = if fresh {
            rand::Rng::random(&mut init.rng)
        } else {
            0
        };
        let dropout = Dropout::new(
            self.lora_dropout,
            rand::rngs::StdRng::seed_from_u64(dropout_seed),
        );
        AdaLora::new(config, layers, biases, dropout, spec.sites.len(), masks)
    }
}

#[typetag::serde(name = "ADALORA")]
impl PeftMethod for AdaLoraConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(self.build_adalora(init)?))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonConfig {
        &mut self.common
    }

    fn size_knob(&self) -> Option<&'static str> {
        Some("init_r")
    }

    /// Starting rank `size`, with `target_r` scaled along (at least 1, at most `size`), so that the share of
    /// ranks the allocator keeps stays as configured.
    fn with_size(&self, size: usize, _spec: &ModelSpec) -> Option<Box<dyn PeftMethod>> {
        let init_r = size.max(1);
        let scaled = (self.target_r * init_r + self.init_r.max(1) / 2) / self.init_r.max(1);
        Some(Box::new(AdaLoraConfig {
            init_r,
            target_r: scaled.clamp(1, init_r),
            ..self.clone()
        }))
    }
}
