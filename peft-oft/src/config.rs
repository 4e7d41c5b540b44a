//! HF PEFT's `OFTConfig`: the same field names, defaults and meaning, so that an `adapter_config.json` written
//! by HF PEFT parses here and one written here loads there. `check` refuses what HF PEFT refuses, with its
//! reasons; `build` resolves the targets, cuts each into blocks and makes the [`Oft`] adapter.
//!
//! ```
//! use peft_oft::OftConfig;
//! // Every unset field takes HF PEFT's default, stated once in `OftConfig::default`.
//! let read: OftConfig = serde_json::from_str("{}").unwrap();
//! assert_eq!((read.r, read.oft_block_size, read.use_cayley_neumann, read.num_cayley_neumann_terms), (0, 32, true, 5));
//! assert_eq!((read.coft, read.eps, read.block_share, read.module_dropout), (false, 6e-5, false, 0.0));
//! read.check().unwrap();
//! // r and oft_block_size together are refused, as HF PEFT refuses them.
//! let both: OftConfig = serde_json::from_str(r#"{"r": 4, "oft_block_size": 8}"#).unwrap();
//! assert!(both.check().unwrap_err().to_string().contains("not both"));
//! ```

use candle_core::{DType, Tensor, Var};
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::spec::ModelSpec;
use peft_core::tuner::{check_probability, BiasScope, TargetFields};
use peft_core::{PeftError, Result};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::adapter::{Oft, OftLayer};
use crate::cayley::skew_len;
use crate::dropout::BlockDropout;
use crate::targets::resolve_targets;

pub use peft_core::tuner::{LayerSelection, LayersPattern, TargetModules, ALL_LINEAR};

/// The HF PEFT release whose OFT this crate follows (its Cayley-Neumann series, changed in 0.18.0). A config
/// built here without a `peft_version` is saved with this one: HF PEFT reads a missing version as older than
/// 0.18.0 and warns that the adapter's series differs, and fails on a null one.
pub const HF_PEFT_FORMAT: &str = "0.21.2";

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
    #[serde(rename = "oft_only")]
    OftOnly,
}

impl BiasMode {
    /// Which biases this setting trains.
    pub fn scope(self) -> BiasScope {
        match self {
            BiasMode::None => BiasScope::None,
            BiasMode::All => BiasScope::All,
            BiasMode::OftOnly => BiasScope::WrappedOnly,
        }
    }
}

/// HF PEFT's `OFTConfig` (peft_type `OFT`, Qiu et al., 2023; Liu et al., 2024): each adapted module's input is
/// rotated by a trained block-diagonal orthogonal matrix before the frozen weight sees it. A field missing from
/// the JSON takes its value in [`OftConfig::default`], HF PEFT's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OftConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// The number of blocks per module (default 0: set by `oft_block_size`); exactly one of `r` and
    /// `oft_block_size` is non-zero, the other follows from each module's `in_features`.
    pub r: usize,
    /// The size of each block (default 32); more trainable parameters as it grows (`in (b - 1) / 2` per module).
    pub oft_block_size: usize,
    /// Share of each module's blocks replaced by the identity while training (default 0; see
    /// [`BlockDropout`](crate::BlockDropout): HF PEFT 0.21 does not apply it).
    pub module_dropout: f64,
    /// Modules to adapt; `None` picks the query and value projections (or the fused one) by their roles
    /// ([`DEFAULT_ROLES`](crate::DEFAULT_ROLES)); filled in when built.
    pub target_modules: Option<TargetModules>,
    /// True where the frozen weight is stored `[in, out]` (GPT-2's Conv1D); filled in from the model. OFT's
    /// rotation acts on the input, so the storage does not change it.
    pub fan_in_fan_out: bool,
    /// Which biases are trained: `none` (default), `all`, `oft_only`.
    pub bias: BiasMode,
    /// Modules never to adapt, matched as `target_modules` is.
    pub exclude_modules: Option<TargetModules>,
    /// `true` (default): `oft_R` starts at zeros, the identity rotation (a no-op adapter); `false`: drawn from
    /// N(0, 0.1^2), as HF PEFT draws it (for tests).
    pub init_weights: bool,
    /// Only adapt the modules of these layer indices.
    pub layers_to_transform: Option<LayerSelection>,
    /// Name of the layer list (`layers`, `h`) that `layers_to_transform` indexes.
    pub layers_pattern: Option<LayersPattern>,
    /// Extra modules trained in full; only a classification head (carried as HF PEFT carries it).
    pub modules_to_save: Option<Vec<String>>,
    /// Constrained OFT (default false): before each use, every block's skew-symmetric matrix is scaled down to
    /// a Frobenius norm of at most `eps / sqrt(blocks)`.
    pub coft: bool,
    /// COFT's radius (default 6e-5); used only with `coft`.
    pub eps: f64,
    /// One block shared by all of a module's blocks (default false): `oft_R` has one row.
    pub block_share: bool,
    /// Cayley-Neumann series instead of the exact inverse (default true, HF PEFT's default).
    pub use_cayley_neumann: bool,
    /// Terms of the series (default 5).
    pub num_cayley_neumann_terms: usize,
    /// HF PEFT's `auto_mapping` (the base model's class, written by HF PEFT when no task type is set); kept.
    pub auto_mapping: Option<serde_json::Value>,
    /// Version of HF PEFT that wrote the config ([`HF_PEFT_FORMAT`] for one written here).
    pub peft_version: Option<String>,
}

/// HF PEFT's defaults, which serde also takes for every field a config leaves out.
impl Default for OftConfig {
    fn default() -> Self {
        OftConfig {
            common: CommonConfig::default(),
            r: 0,
            oft_block_size: 32,
            module_dropout: 0.0,
            target_modules: None,
            fan_in_fan_out: false,
            bias: BiasMode::None,
            exclude_modules: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            modules_to_save: None,
            coft: false,
            eps: 6e-5,
            block_share: false,
            use_cayley_neumann: true,
            num_cayley_neumann_terms: 5,
            auto_mapping: None,
            peft_version: None,
        }
    }
}

impl OftConfig {
    /// A config on the modules `targets`, other fields at HF PEFT's defaults (`oft_block_size = 32`).
    pub fn new<S: Into<String>>(targets: impl IntoIterator<Item = S>) -> Self {
        OftConfig {
            target_modules: Some(TargetModules::list(targets)),
            ..OftConfig::default()
        }
    }

    /// A config of blocks of `oft_block_size` features on the modules `targets`.
    pub fn with_block_size<S: Into<String>>(
        oft_block_size: usize,
        targets: impl IntoIterator<Item = S>,
    ) -> Self {
        OftConfig {
            oft_block_size,
            ..OftConfig::new(targets)
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

    /// Refuses what HF PEFT refuses, with its words, and what would be meaningless here, each with what to
    /// change.
    pub fn check(&self) -> Result<()> {
        let refuse = |m: String| Err(PeftError::Config(m));
        if self.r == 0 && self.oft_block_size == 0 {
            return refuse(format!(
                "Either `r` or `oft_block_size` must be non-zero. Currently, r = {} and oft_block_size = {} (HF \
                 PEFT's rule): set oft_block_size (HF PEFT's default is 32) or r",
                self.r, self.oft_block_size
            ));
        }
        if self.r != 0 && self.oft_block_size != 0 {
            return refuse(format!(
                "You can only specify either r ({}) or oft_block_size ({}), but not both simultaneously, because \
                 r x oft_block_size == in_features (HF PEFT's rule): set the other to 0. A config without \
                 oft_block_size takes its default, 32, so one that sets r must also say \"oft_block_size\": 0 \
                 (an adapter saved by HF PEFT before 0.14, which had no oft_block_size, no longer loads in HF \
                 PEFT either)",
                self.r, self.oft_block_size
            ));
        }
        self.target_fields().check_layers_pattern()?;
        // HF PEFT ignores layers_to_transform for a regular expression (it filters names only); refused
        // here rather than silently ignored. "all-linear" becomes a list first, so the filter applies.
        match (&self.target_modules, &self.layers_to_transform) {
            (Some(t @ TargetModules::Pattern(p)), Some(_)) if !t.is_all_linear() => {
                return refuse(format!(
                    "layers_to_transform cannot be used when target_modules is a regular expression ({p:?}): \
                     list the module names instead, or put the layer numbers in the expression"
                ));
            }
            _ => {}
        }
        check_probability("module_dropout", self.module_dropout)?;
        if !self.eps.is_finite() || self.eps < 0.0 {
            return refuse(format!(
                "eps = {} must be a finite number >= 0 (COFT's radius; HF PEFT's default is 6e-5)",
                self.eps
            ));
        }
        // HF PEFT lists the classification head of a SEQ_CLS adapter here; the head travels as WithClassifier.
        peft_core::head::check_modules_to_save(
            self.modules_to_save.as_ref(),
            self.common.task_type.as_deref(),
            "OFT",
        )
    }

    /// Builds the adapter for `init.model` (what [`PeftMethod::build`] does, with the concrete type). A config
    /// read from a saved adapter (`inference_mode`) starts from zeros and draws nothing: its tensors come from
    /// the file.
    pub fn build_oft(&self, init: &mut InitCtx) -> Result<Oft> {
        self.check()?;
        let model = init.model;
        let spec = model.spec();
        let device = model.device().clone();
        let (targets, saved_targets) = resolve_targets(self, spec)?;

        let mut config = self.clone();
        config.target_modules = Some(saved_targets);
        config.fan_in_fan_out = targets.iter().any(|t| t.linear.fan_in_fan_out);
        if config.common.task_type.is_none() {
            config.common.task_type =
                Some(peft_core::prompt_learning::default_task_type(init.model).into());
        }
        if config.peft_version.is_none() {
            config.peft_version = Some(HF_PEFT_FORMAT.into());
        }

        let fresh = !self.common.inference_mode;
        let spread = Normal::new(0.0f32, 0.1).expect("a valid deviation");
        let mut layers = Vec::with_capacity(targets.len());
        for target in targets {
            let rows = if self.block_share { 1 } else { target.blocks };
            let n = rows * skew_len(target.block_size);
            let values: Vec<f32> = if fresh && !self.init_weights {
                (0..n).map(|_| spread.sample(&mut init.rng)).collect()
            } else {
                vec![0.0; n]
            };
            let weight = Tensor::from_vec(values, (rows, skew_len(target.block_size)), &device)?
                .to_dtype(DType::F32)?;
            layers.push(OftLayer::new(target, Var::from_tensor(&weight)?, &config)?);
        }
        let wrapped: Vec<_> = layers.iter().map(OftLayer::site).collect();
        let biases =
            peft_core::tuner::trainable_biases(model, &wrapped, self.bias.scope(), self.bias)?;
        // Drawn after the blocks, so that the same seed gives the same blocks whatever the dropout.
        let dropout_seed = if fresh {
            rand::Rng::random(&mut init.rng)
        } else {
            0
        };
        let dropout = BlockDropout::new(
            self.module_dropout,
            rand::rngs::StdRng::seed_from_u64(dropout_seed),
        );
        Ok(Oft::new(config, layers, biases, dropout, spec.sites.len()))
    }
}

#[typetag::serde(name = "OFT")]
impl PeftMethod for OftConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(self.build_oft(init)?))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonConfig {
        &mut self.common
    }

    /// `oft_block_size`, whose growth grows the trainable count (`in (b - 1) / 2` per module); `None` for a
    /// config sized by `r` (more blocks are smaller ones: the count falls as `r` grows), and for shared blocks
    /// of size 2 or less (their one-row `oft_R` has no dimension that large, which the loader's size check
    /// would read as a mismatch).
    fn size_knob(&self) -> Option<&'static str> {
        let shared_tiny = self.block_share && self.oft_block_size <= 2;
        (self.r == 0 && self.oft_block_size != 0 && !shared_tiny).then_some("oft_block_size")
    }

    /// Blocks of `size` features (`r` set to 0), adjusted per module as HF PEFT adjusts them.
    fn with_size(&self, size: usize, _spec: &ModelSpec) -> Option<Box<dyn PeftMethod>> {
        Some(Box::new(OftConfig {
            r: 0,
            oft_block_size: size.max(1),
            ..self.clone()
        }))
    }
}
