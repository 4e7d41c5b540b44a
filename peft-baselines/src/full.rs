//! Full fine-tuning: every weight of the model is a trainable variable. The model must be built from
//! trainable weights (`WeightMap::make_trainable` in peft-models; `peft` does it when the method is `FULL`),
//! since a frozen model's projections never pass a gradient to their weights.

use std::collections::{HashMap, HashSet};

use candle_core::{Tensor, Var};
use peft_core::hooks::Hooks;
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::{PeftError, Result};
use serde::{Deserialize, Serialize};

/// `peft_type = "FULL"`: all of the model's weights train (no HF PEFT counterpart; HF trains a model without
/// PEFT for this baseline).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FullFineTuningConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
}

#[typetag::serde(name = "FULL")]
impl PeftMethod for FullFineTuningConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        let model = init.model;
        let mut seen = HashSet::new();
        let mut vars = Vec::new();
        for (name, t) in model.parameters() {
            if !t.is_variable() {
                return Err(PeftError::Config(format!(
                    "full fine-tuning needs the model loaded with trainable weights, but `{name}` of {} is frozen: \
                     `peft train` / `peft compare` load it so for peft_type = \"FULL\"; in code, call \
                     WeightMap::make_trainable before building the model",
                    model.spec().name_or_path
                )));
            }
            // A tied weight (embeddings and LM head) is one variable listed once.
            if seen.insert(t.id()) {
                vars.push((name, Var::from_tensor(&t)?));
            }
        }
        let mut config = self.clone();
        if config.common.task_type.is_none() {
            config.common.task_type =
                Some(peft_core::prompt_learning::default_task_type(model).into());
        }
        Ok(Box::new(FullFineTuning { config, vars }))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonConfig {
        &mut self.common
    }

    fn trains_base_weights(&self) -> bool {
        true
    }
}

/// The built baseline: the model's own weights as trainable variables, under their HF names.
pub struct FullFineTuning {
    config: FullFineTuningConfig,
    vars: Vec<(String, Var)>,
}

/// No hooks: the model's weights themselves train.
impl Hooks for FullFineTuning {}

impl Adapter for FullFineTuning {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }

    /// Every weight, under its HF name (the saved folder is the whole model).
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect())
    }

    fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.vars {
            let t = tensors
                .get(name)
                .ok_or_else(|| PeftError::Config(format!("the saved weights have no `{name}`")))?;
            if t.dims() != var.dims() {
                return Err(PeftError::ShapeMismatch {
                    what: name.clone(),
                    expected_from: "the model".into(),
                    expected: var.dims().to_vec(),
                    got_from: "the saved weights".into(),
                    got: t.dims().to_vec(),
                });
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    fn notes(&self) -> Vec<String> {
        vec![format!(
            "full fine-tuning: all {} weights of the model train; the saved folder holds the whole model",
            self.num_trainable()
        )]
    }
}
