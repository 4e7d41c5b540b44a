//! HF PEFT's `VeraConfig`: the same field names, defaults and meaning, so that an `adapter_config.json` written
//! by HF PEFT parses here and one written here loads there. `build` resolves the targets, draws the shared
//! projections as HF PEFT draws them and makes the [`Vera`] adapter.
//!
//! ```
//! use peft_vera::VeraConfig;
//! // Every unset field takes HF PEFT's default, stated once in `VeraConfig::default`.
//! let read: VeraConfig = serde_json::from_str(r#"{"target_modules": ["q_proj", "v_proj"]}"#).unwrap();
//! assert_eq!((read.r, read.d_initial, read.save_projection, read.projection_prng_key), (256, 0.1, true, 0));
//! assert_eq!(read, VeraConfig::new(256, ["q_proj", "v_proj"]));
//! ```

use candle_core::{DType, Tensor, Var};
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::spec::ModelSpec;
use peft_core::{PeftError, Result};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use peft_core::tuner::{check_probability, check_rank, BiasScope, Dropout, TargetFields};

use crate::adapter::{trainable_biases, Vera, VeraLayer};
use crate::projection::Projections;
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
    #[serde(rename = "vera_only")]
    VeraOnly,
}

impl BiasMode {
    /// Which biases this setting trains.
    pub fn scope(self) -> BiasScope {
        match self {
            BiasMode::None => BiasScope::None,
            BiasMode::All => BiasScope::All,
            BiasMode::VeraOnly => BiasScope::WrappedOnly,
        }
    }
}

/// HF PEFT's `VeraConfig` (peft_type `VERA`, Kopiczko et al., 2024): one pair of frozen random projections
/// shared by every adapted module, and per module two trained vectors that scale them. A field missing from
/// the JSON takes its value in [`VeraConfig::default`], HF PEFT's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VeraConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Rank of the shared projections (default 256; VeRA trains only `r` values per module for it, so it
    /// is set far higher than a LoRA rank).
    pub r: usize,
    /// Modules to adapt; `None` picks the query and value projections (or the fused one) by their roles, as
    /// HF PEFT's default table (the LoRA table) does for the zoo's architectures; filled in when built.
    pub target_modules: Option<TargetModules>,
    /// Seed of `torch.Generator` that draws the shared projections (default 0).
    pub projection_prng_key: u64,
    /// Whether the shared projections are saved with the adapter as `base_model.vera_A` / `vera_B`
    /// (default true); otherwise a load draws them again from `projection_prng_key`.
    pub save_projection: bool,
    /// Dropout on the VeRA branch's input during training (default 0).
    pub vera_dropout: f64,
    /// Initial value of every `vera_lambda_d` entry (default 0.1).
    pub d_initial: f64,
    /// True where the frozen weight is stored `[in, out]` (GPT-2's Conv1D); filled in from the model.
    pub fan_in_fan_out: bool,
    /// Which biases are trained: `none` (default), `all`, `vera_only`.
    pub bias: BiasMode,
    /// Extra modules trained in full; only a classification head (carried as HF PEFT carries it).
    pub modules_to_save: Option<Vec<String>>,
    /// `true` (default): `vera_lambda_b` starts at zeros (a no-op adapter) and `vera_lambda_d` at
    /// `d_initial`; `false`: ones and standard-normal draws, as HF PEFT leaves them (for tests).
    pub init_weights: bool,
    /// Only adapt the modules of these layer indices.
    pub layers_to_transform: Option<LayerSelection>,
    /// Name of the layer list (`layers`, `h`) that `layers_to_transform` indexes.
    pub layers_pattern: Option<LayersPattern>,
    /// Version of HF PEFT that wrote the config.
    pub peft_version: Option<String>,
}

/// HF PEFT's defaults, which serde also takes for every field a config leaves out.
impl Default for VeraConfig {
    fn default() -> Self {
        VeraConfig {
            common: CommonConfig::default(),
            r: 256,
            target_modules: None,
            projection_prng_key: 0,
            save_projection: true,
            vera_dropout: 0.0,
            d_initial: 0.1,
            fan_in_fan_out: false,
            bias: BiasMode::None,
            modules_to_save: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            peft_version: None,
        }
    }
}

impl VeraConfig {
    /// A config of rank `r` on the modules `targets`, other fields at HF PEFT's defaults.
    pub fn new<S: Into<String>>(r: usize, targets: impl IntoIterator<Item = S>) -> Self {
        VeraConfig {
            r,
            target_modules: Some(TargetModules::list(targets)),
            ..VeraConfig::default()
        }
    }

    /// The fields that select the adapted modules (VeRA has no `exclude_modules`).
    pub fn target_fields(&self) -> TargetFields<'_> {
        TargetFields {
            target_modules: self.target_modules.as_ref(),
            exclude_modules: None,
            layers_to_transform: self.layers_to_transform.as_ref(),
            layers_pattern: self.layers_pattern.as_ref(),
        }
    }

    /// Refuses what HF PEFT refuses, each with what to change.
    pub fn check(&self) -> Result<()> {
        check_rank(self.r, "VeRA", 256)?;
        check_probability("vera_dropout", self.vera_dropout)?;
        if !self.d_initial.is_finite() {
            return Err(PeftError::Config(format!(
                "d_initial = {} must be a finite number (HF PEFT's default is 0.1)",
                self.d_initial
            )));
        }
        // HF PEFT lists the classification head of a SEQ_CLS adapter here; the head travels as WithClassifier.
        peft_core::head::check_modules_to_save(
            self.modules_to_save.as_ref(),
            self.common.task_type.as_deref(),
            "VeRA",
        )?;
        // HF PEFT ignores layers_to_transform for a regular expression (it filters names only); refused
        // here rather than silently ignored. "all-linear" becomes a list first, so the filter applies.
        match (&self.target_modules, &self.layers_to_transform) {
            (Some(t @ TargetModules::Pattern(p)), Some(_)) if !t.is_all_linear() => {
                return Err(PeftError::Config(format!(
                    "layers_to_transform cannot be used when target_modules is a regular expression ({p:?}): \
                     list the module names instead, or put the layer numbers in the expression"
                )));
            }
            _ => {}
        }
        self.target_fields().check_layers_pattern()
    }

    /// Builds the adapter for `init.model` (what [`PeftMethod::build`] does, with the concrete type). The
    /// shared projections are drawn from `projection_prng_key` as HF PEFT draws them, also for a config read
    /// from a saved adapter: a file with `save_projection = true` then replaces them by its own copies.
    pub fn build_vera(&self, init: &mut InitCtx) -> Result<Vera> {
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

        let max_in = targets.iter().map(|t| t.in_features).max().unwrap_or(0);
        let max_out = targets.iter().map(|t| t.out_features).max().unwrap_or(0);
        let projections =
            Projections::draw(self.projection_prng_key, self.r, max_in, max_out, &device)?;

        let mut layers = Vec::with_capacity(targets.len());
        for target in targets {
            let (lambda_b, lambda_d) = if self.init_weights || self.common.inference_mode {
                (
                    Tensor::zeros(target.out_features, DType::F32, &device)?,
                    Tensor::full(self.d_initial as f32, self.r, &device)?,
                )
            } else {
                let d: Vec<f32> = (0..self.r)
                    .map(|_| StandardNormal.sample(&mut init.rng))
                    .collect();
                (
                    Tensor::ones(target.out_features, DType::F32, &device)?,
                    Tensor::from_vec(d, self.r, &device)?,
                )
            };
            layers.push(VeraLayer::new(
                target,
                Var::from_tensor(&lambda_b)?,
                Var::from_tensor(&lambda_d)?,
            ));
        }
        let biases = trainable_biases(self.bias, model, &layers)?;
        // Drawn after the vectors, so that the same seed gives the same vectors whatever the dropout.
        let dropout_seed = if self.common.inference_mode {
            0
        } else {
            rand::Rng::random(&mut init.rng)
        };
        let dropout = Dropout::new(
            self.vera_dropout,
            rand::rngs::StdRng::seed_from_u64(dropout_seed),
        );
        Ok(Vera::new(
            config,
            projections,
            layers,
            biases,
            dropout,
            spec.sites.len(),
        ))
    }
}

#[typetag::serde(name = "VERA")]
impl PeftMethod for VeraConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(self.build_vera(init)?))
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

    /// Rank `size` (the trained count per module is `out + r`).
    fn with_size(&self, size: usize, _spec: &ModelSpec) -> Option<Box<dyn PeftMethod>> {
        Some(Box::new(VeraConfig {
            r: size.max(1),
            ..self.clone()
        }))
    }
}
