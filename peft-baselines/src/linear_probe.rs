//! The linear probe: the model is untouched and only a classification head on its pooled state trains (the
//! CLI adds the head for `classification-head` tasks). It measures what the frozen features already hold.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use peft_core::hooks::Hooks;
use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::spec::SiteId;
use peft_core::Result;
use serde::{Deserialize, Serialize};

/// `peft_type = "LINEAR_PROBE"`: nothing of the model trains; used with a trained head.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinearProbeConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
}

#[typetag::serde(name = "LINEAR_PROBE")]
impl PeftMethod for LinearProbeConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        let mut config = self.clone();
        if config.common.task_type.is_none() {
            config.common.task_type = Some("SEQ_CLS".into());
        }
        let _ = init;
        Ok(Box::new(LinearProbe { config }))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonConfig {
        &mut self.common
    }
}

/// The built probe: no state of its own; a head wrapped around it holds the trained parameters.
pub struct LinearProbe {
    config: LinearProbeConfig,
}

impl Hooks for LinearProbe {
    /// The base runs as it is; only the head around it trains.
    fn touches(&self, _site: SiteId) -> bool {
        false
    }
}

impl Adapter for LinearProbe {
    fn config(&self) -> &dyn PeftMethod {
        &self.config
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    fn load_tensors(&self, _tensors: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }

    fn notes(&self) -> Vec<String> {
        vec!["linear probe: the model is frozen and adds nothing; only the classification head trains".into()]
    }
}
