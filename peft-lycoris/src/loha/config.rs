//! HF PEFT's `LoHaConfig` (peft_type `LOHA`): the shared LyCORIS fields plus `init_weights`, with HF's names and
//! defaults, registered with typetag so that experiment files and `adapter_config.json` name it.
//!
//! ```
//! use peft_lycoris::LohaConfig;
//! let read: LohaConfig = serde_json::from_str(r#"{"r": 4, "alpha": 8, "target_modules": ["q_proj"]}"#).unwrap();
//! assert_eq!((read.lycoris.r, read.lycoris.alpha, read.init_weights), (4, 8.0, true));
//! let written = serde_json::to_value(&read).unwrap(); // flat, as HF PEFT writes it
//! assert_eq!((&written["r"], &written["rank_dropout"]), (&serde_json::json!(4), &serde_json::json!(0.0)));
//! ```

use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::spec::ModelSpec;
use peft_core::Result;
use serde::{Deserialize, Serialize};

use crate::loha::factors::{HadaFactors, HadaInit};
use crate::loha::Loha;
use crate::shared::adapter::LycorisLayer;
use crate::shared::build::{dropout, prepare};
use crate::shared::fields::LycorisFields;

/// HF PEFT's `LoHaConfig`. A field missing from the JSON takes HF PEFT's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LohaConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// The fields LoHa shares with LoKr (`r`, `alpha`, dropouts, targets, patterns).
    #[serde(flatten)]
    pub lycoris: LycorisFields,
    /// `true` (default): `hada_w2_b` starts at zero, so the fresh adapter changes nothing; `false`: all four
    /// factors random (HF PEFT discourages it; for tests).
    pub init_weights: bool,
}

/// HF PEFT's defaults.
impl Default for LohaConfig {
    fn default() -> Self {
        LohaConfig {
            common: CommonConfig::default(),
            lycoris: LycorisFields::default(),
            init_weights: true,
        }
    }
}

impl LohaConfig {
    /// Builds the adapter for `init.model` (what [`PeftMethod::build`] does, with the concrete type). A config
    /// read from a saved adapter (`inference_mode`) starts from zeros and draws nothing.
    pub fn build_loha(&self, init: &mut InitCtx) -> Result<Loha> {
        let prepared = prepare(&self.lycoris, &self.common, init, "LoHa")?;
        let fresh = !self.common.inference_mode;
        let how = match (fresh, self.init_weights) {
            (false, _) => HadaInit::Zeros,
            (true, true) => HadaInit::NoOp,
            (true, false) => HadaInit::Random,
        };
        let device = init.model.device().clone();
        let layers = prepared
            .targets
            .into_iter()
            .map(|t| {
                let factors = HadaFactors::new(
                    t.out_features,
                    t.in_features,
                    t.r,
                    how,
                    &mut init.rng,
                    &device,
                )?;
                Ok(LycorisLayer::new(t, factors))
            })
            .collect::<Result<Vec<_>>>()?;
        // LoHa always rescales a rank-dropout mask by its mean (HF PEFT has no switch for it).
        let dropout = dropout(&self.lycoris, true, fresh, init);
        let config = LohaConfig {
            common: prepared.common,
            lycoris: prepared.fields,
            init_weights: self.init_weights,
        };
        Ok(Loha::new(
            config,
            "LoHa",
            layers,
            dropout,
            init.model.spec().sites.len(),
        ))
    }
}

#[typetag::serde(name = "LOHA")]
impl PeftMethod for LohaConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(self.build_loha(init)?))
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

    /// Rank `size`, with `alpha` scaled along so that `alpha / r` stays; the count, `2 r (out + in)` per
    /// module, grows with it.
    fn with_size(&self, size: usize, _spec: &ModelSpec) -> Option<Box<dyn PeftMethod>> {
        Some(Box::new(LohaConfig {
            lycoris: self.lycoris.with_rank(size),
            ..self.clone()
        }))
    }
}
