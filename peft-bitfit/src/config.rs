//! BitFit's configuration. HF PEFT has no BitFit, so this is a config of its own, tagged `peft_type = "BITFIT"`,
//! with the common HF PEFT fields so that the standard adapter folder holds it.

use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::spec::ModelSpec;
use peft_core::Result;
use serde::{Deserialize, Serialize};

use crate::adapter::BitFit;

/// Which biases train.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "TargetsRepr", into = "TargetsRepr")]
pub enum BitFitTargets {
    /// `"all"`: every bias of the frozen model (linear and norm sites that have one); with
    /// `add_missing_biases`, also a zero bias at every linear site that has none (on LLaMA: every projection).
    #[default]
    All,
    /// `"paper"`: Ben Zaken et al.'s query and intermediate-MLP biases (`b_q`, `b_m2`), chosen by role: every
    /// site playing one of [`PAPER_ROLES`](crate::PAPER_ROLES), the query, the fused query-key-value projection
    /// (whose whole `3 x hidden` bias then trains, not only the query third) and the widening MLP projections
    /// (both of a gated MLP). On the zoo: GPT-2 `c_attn`, `mlp.c_fc`; LLaMA `q_proj`, `gate_proj`, `up_proj`
    /// (zero biases added there, as LLaMA has none); OPT `q_proj`, `fc1`; BERT `attention.self.query`,
    /// `intermediate.dense`; T5 the self- and cross-attention `q` and `wi` (or `wi_0`, `wi_1`).
    Paper,
    /// Module short names or dotted suffixes of module names (`["c_attn", "mlp.c_proj"]`), as HF PEFT's
    /// `target_modules` lists name them; every name must match at least one site.
    Modules(Vec<String>),
}

/// How [`BitFitTargets`] reads and writes: a string (`"all"`, `"paper"`) or a list of module names.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TargetsRepr {
    Named(String),
    Modules(Vec<String>),
}

impl TryFrom<TargetsRepr> for BitFitTargets {
    type Error = String;

    fn try_from(repr: TargetsRepr) -> std::result::Result<Self, String> {
        match repr {
            TargetsRepr::Named(name) => match name.as_str() {
                "all" => Ok(BitFitTargets::All),
                "paper" => Ok(BitFitTargets::Paper),
                other => Err(format!(
                    "targets = {other:?} is not known: use \"all\", \"paper\" or a list of module names \
                     such as [{other:?}]"
                )),
            },
            TargetsRepr::Modules(names) => Ok(BitFitTargets::Modules(names)),
        }
    }
}

impl From<BitFitTargets> for TargetsRepr {
    fn from(targets: BitFitTargets) -> Self {
        match targets {
            BitFitTargets::All => TargetsRepr::Named("all".into()),
            BitFitTargets::Paper => TargetsRepr::Named("paper".into()),
            BitFitTargets::Modules(names) => TargetsRepr::Modules(names),
        }
    }
}

/// BitFit (Ben Zaken et al., 2022): only biases train, each starting from the frozen model's value. A field
/// missing from the JSON takes its value in [`BitFitConfig::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BitFitConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Which biases train (default `"all"`).
    pub targets: BitFitTargets,
    /// Whether a chosen site without a frozen bias gets a zero-initialised trainable one (default true);
    /// false makes such a site an error. The adapter's [`BitFit::notes`] lists the sites that got one.
    pub add_missing_biases: bool,
    /// Only the biases of these layer indices train (as LoRA's `layers_to_transform`); sites outside any layer
    /// (final norms) are then left out. Default: every layer.
    pub layers_to_transform: Option<Vec<usize>>,
}

/// Every bias of every layer, missing ones added; serde takes these for every field a config leaves out.
impl Default for BitFitConfig {
    fn default() -> Self {
        BitFitConfig {
            common: CommonConfig::default(),
            targets: BitFitTargets::All,
            add_missing_biases: true,
            layers_to_transform: None,
        }
    }
}

impl BitFitConfig {
    /// A config training `targets`, every other field at its default (missing biases added).
    pub fn new(targets: BitFitTargets) -> Self {
        BitFitConfig {
            targets,
            ..BitFitConfig::default()
        }
    }
}

#[typetag::serde(name = "BITFIT")]
impl PeftMethod for BitFitConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        let mut config = self.clone();
        if config.common.task_type.is_none() {
            config.common.task_type =
                Some(peft_core::prompt_learning::default_task_type(init.model).into());
        }
        Ok(Box::new(BitFit::new(config, init.model)?))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonConfig {
        &mut self.common
    }

    fn size_knob(&self) -> Option<&'static str> {
        Some("layers_to_transform")
    }

    /// The configured targets in the top `size` layers only (the layers nearest the output).
    fn with_size(&self, size: usize, spec: &ModelSpec) -> Option<Box<dyn PeftMethod>> {
        let layers = spec.num_layers;
        let k = size.clamp(1, layers.max(1));
        Some(Box::new(BitFitConfig {
            layers_to_transform: Some((layers.saturating_sub(k)..layers).collect()),
            ..self.clone()
        }))
    }
}
