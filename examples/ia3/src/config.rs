//! `IA3Config`, with HF PEFT 0.21's field names, defaults and checks. Registered with typetag under
//! `peft_type = "IA3"`, which is all it takes for experiment files and `adapter_config.json` to name it.

use candle_core::{Tensor, Var};
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::Result;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::adapter::{Ia3, Ia3Vector};
use crate::targets::{resolve, ModuleSelection, Target};

/// HF PEFT's `IA3Config`: learned vectors that rescale the activations of chosen projections (Liu et al., 2022).
///
/// Fields HF PEFT writes that play no part here (`peft_version`, `auto_mapping`) are accepted and ignored, so
/// that an HF `adapter_config.json` parses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ia3Config {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Modules to scale: names matched by suffix, or `"all-linear"`. Default: the key, value (or fused
    /// query-key-value) and MLP down projections, by the roles the model declares
    /// ([`TARGET_ROLES`](crate::TARGET_ROLES): GPT-2 `["c_attn", "mlp.c_proj"]`, LLaMA
    /// `["k_proj", "v_proj", "down_proj"]`, as HF PEFT's table); filled in when built.
    pub target_modules: Option<ModuleSelection>,
    /// Modules never scaled, matched like `target_modules`.
    pub exclude_modules: Option<ModuleSelection>,
    /// The targets whose input (rather than output) is scaled; a subset of `target_modules`. Default: the MLP
    /// down projections, by role ([`FEEDFORWARD_ROLES`](crate::FEEDFORWARD_ROLES): GPT-2 `["mlp.c_proj"]`, LLaMA
    /// `["down_proj"]`); filled in when built.
    pub feedforward_modules: Option<ModuleSelection>,
    /// Whether the targets store their weight `[in, out]`; set from the model when built (true for GPT-2's
    /// Conv1D, false for linear layers), as HF PEFT corrects it.
    pub fan_in_fan_out: bool,
    /// Extra modules HF PEFT trains and saves; not supported here (must be empty).
    pub modules_to_save: Option<Vec<String>>,
    /// Start every vector at ones, so that the adapted model starts equal to the frozen one (default true);
    /// false draws them from a standard normal, as HF PEFT does.
    pub init_ia3_weights: bool,
}

/// HF PEFT's defaults, which serde also takes for every field a config leaves out.
impl Default for Ia3Config {
    fn default() -> Self {
        Ia3Config {
            common: CommonConfig::default(),
            target_modules: None,
            exclude_modules: None,
            feedforward_modules: None,
            fan_in_fan_out: false,
            modules_to_save: None,
            init_ia3_weights: true,
        }
    }
}

impl Ia3Config {
    /// Initial values of the vector of `target`, in HF PEFT's shape: `[1, in]` for a feed-forward module
    /// (scaling its input), `[out, 1]` otherwise (scaling its output).
    fn initial_vector(&self, target: &Target, init: &mut InitCtx) -> Result<Tensor> {
        let shape = if target.feedforward {
            (1, target.in_features)
        } else {
            (target.out_features, 1)
        };
        let device = init.model.device();
        if self.init_ia3_weights || self.common.inference_mode {
            // An adapter loaded for inference gets its values from the file.
            return Ok(Tensor::ones(shape, candle_core::DType::F32, device)?);
        }
        let values: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| StandardNormal.sample(&mut init.rng))
            .collect();
        Ok(Tensor::from_vec(values, shape, device)?)
    }
}

#[typetag::serde(name = "IA3")]
impl PeftMethod for Ia3Config {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        // HF PEFT lists the classification head of a SEQ_CLS adapter here; the head travels as WithClassifier.
        peft_core::head::check_modules_to_save(
            self.modules_to_save.as_ref(),
            self.common.task_type.as_deref(),
            "IA3",
        )?;
        let spec = init.model.spec();
        let resolved = resolve(
            spec,
            self.target_modules.as_ref(),
            self.feedforward_modules.as_ref(),
            self.exclude_modules.as_ref(),
        )?;
        let mut config = self.clone();
        config.target_modules = Some(resolved.target_modules);
        config.feedforward_modules = Some(resolved.feedforward_modules);
        config.fan_in_fan_out = resolved.targets.iter().any(|t| t.fan_in_fan_out);
        if config.common.task_type.is_none() {
            config.common.task_type =
                Some(peft_core::prompt_learning::default_task_type(init.model).into());
        }
        let vectors = resolved
            .targets
            .iter()
            .map(|t| {
                Ok(Ia3Vector {
                    var: Var::from_tensor(&config.initial_vector(t, init)?)?,
                    target: t.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(Ia3::new(config, vectors, spec.sites.len())))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonConfig {
        &mut self.common
    }
}
