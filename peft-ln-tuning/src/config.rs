//! HF PEFT's `LNTuningConfig`: the same field names, defaults and meaning, so that an `adapter_config.json`
//! written by HF PEFT parses here and one written here loads there. `build` resolves the norms
//! ([`select_norms`]) and copies their frozen weights and biases into the [`LnTuning`] adapter.
//!
//! ```
//! use peft_ln_tuning::{LnTuningConfig, TargetModules};
//! let read: LnTuningConfig = serde_json::from_str(r#"{"target_modules": ["ln_f"]}"#).unwrap();
//! assert_eq!(read, LnTuningConfig::new(["ln_f"]));
//! assert_eq!(read.exclude_modules, None);
//! let regex: LnTuningConfig = serde_json::from_str(r#"{"target_modules": ".*\\.ln_[12]"}"#).unwrap();
//! assert_eq!(regex.target_modules, Some(TargetModules::Pattern(r".*\.ln_[12]".into())));
//! ```

use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::spec::ModelSpec;
use peft_core::Result;
use serde::{Deserialize, Serialize};

pub use peft_core::tuner::TargetModules;

use crate::adapter::LnTuning;
use crate::targets::{default_is_by_role, select_norms};

/// HF PEFT's `LNTuningConfig` (peft_type `LN_TUNING`, Zhao et al., 2023, "Tuning LayerNorm in Attention"):
/// every selected norm gets a trainable copy of its weight, and of its bias where it has one (RMS norms, as
/// LLaMA's and T5's, have none: only their weight trains). A field missing from the JSON takes HF PEFT's
/// default, [`LnTuningConfig::default`] (all unset).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LnTuningConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Norms to tune: a list of names (each matching a module named so or ending with `"." + name`) or a
    /// regular expression over whole names. `None` takes HF PEFT's table for the architecture, or every norm
    /// site by role where HF PEFT has no entry (BERT, OPT); filled in when built.
    pub target_modules: Option<TargetModules>,
    /// Norms left out, matched as `target_modules` is.
    pub exclude_modules: Option<TargetModules>,
    /// Extra modules trained in full; only a classification head (carried as HF PEFT carries it).
    pub modules_to_save: Option<Vec<String>>,
    /// Version of HF PEFT that wrote the config.
    pub peft_version: Option<String>,
}

impl LnTuningConfig {
    /// A config tuning the norms `targets`, other fields at HF PEFT's defaults.
    pub fn new<S: Into<String>>(targets: impl IntoIterator<Item = S>) -> Self {
        LnTuningConfig {
            target_modules: Some(TargetModules::list(targets)),
            ..LnTuningConfig::default()
        }
    }

    /// Builds the adapter for `init.model` (what [`PeftMethod::build`] does, with the concrete type).
    pub fn build_ln_tuning(&self, init: &mut InitCtx) -> Result<LnTuning> {
        // HF PEFT lists the classification head of a SEQ_CLS adapter here; the head travels as WithClassifier.
        peft_core::head::check_modules_to_save(
            self.modules_to_save.as_ref(),
            self.common.task_type.as_deref(),
            "LN tuning",
        )?;
        let spec = init.model.spec();
        let (sites, saved_targets) = select_norms(self, spec)?;
        let mut notes = Vec::new();
        if self.target_modules.is_none() && default_is_by_role(spec) {
            notes.push(format!(
                "HF PEFT has no LN tuning default for {} (it raises there): every norm the model declares was                  chosen, target_modules = {}",
                spec.architecture,
                saved_targets.describe()
            ));
        }
        let mut config = self.clone();
        config.target_modules = Some(saved_targets);
        if config.common.task_type.is_none() {
            config.common.task_type =
                Some(peft_core::prompt_learning::default_task_type(init.model).into());
        }
        LnTuning::new(config, init.model, &sites, notes)
    }
}

#[typetag::serde(name = "LN_TUNING")]
impl PeftMethod for LnTuningConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(self.build_ln_tuning(init)?))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonConfig {
        &mut self.common
    }

    fn size_knob(&self) -> Option<&'static str> {
        Some("target_modules")
    }

    /// The configured norms of the top `size` layers (those nearest the output) and the norms outside any
    /// layer (final norms), named in full in `target_modules`, so that HF PEFT selects the same ones.
    fn with_size(&self, size: usize, spec: &ModelSpec) -> Option<Box<dyn PeftMethod>> {
        let (sites, _) = select_norms(self, spec).ok()?;
        let first = spec
            .num_layers
            .saturating_sub(size.clamp(1, spec.num_layers.max(1)));
        let names: Vec<String> = sites
            .iter()
            .map(|&id| spec.site(id))
            .filter(|s| s.layer.is_none_or(|l| l >= first))
            .map(|s| s.name.clone())
            .collect();
        Some(Box::new(LnTuningConfig {
            target_modules: Some(TargetModules::List(names)),
            ..self.clone()
        }))
    }
}
