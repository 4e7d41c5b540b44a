//! HF PEFT's `LoKrConfig` (peft_type `LOKR`): the shared LyCORIS fields plus `decompose_both`,
//! `decompose_factor`, `rank_dropout_scale` and `init_weights`, with HF's names and defaults.
//!
//! ```
//! use peft_lycoris::{LokrConfig, LokrInitWeights};
//! let read: LokrConfig = serde_json::from_str(r#"{"r": 2, "decompose_both": true, "init_weights": "lycoris"}"#).unwrap();
//! assert_eq!((read.lycoris.r, read.decompose_both, read.decompose_factor), (2, true, -1));
//! assert_eq!(read.init_weights, LokrInitWeights::Named("lycoris".into()));
//! assert_eq!(serde_json::to_value(&LokrConfig::default()).unwrap()["init_weights"], true);
//! ```

use peft_core::method::{Adapter, CommonConfig, InitCtx, PeftMethod};
use peft_core::{PeftError, Result};
use serde::{Deserialize, Serialize};

use crate::lokr::factorization::factorization;
use crate::lokr::factors::{KronFactors, KronInit, Side};
use crate::lokr::Lokr;
use crate::shared::adapter::LycorisLayer;
use crate::shared::build::{dropout, prepare};
use crate::shared::fields::LycorisFields;
use crate::shared::targets::Target;

/// `init_weights`: `true`, `false`, or `"lycoris"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LokrInitWeights {
    /// `true` (default): `lokr_w1` (or `lokr_w1_a`) zero, so the fresh adapter changes nothing; `false`: every
    /// factor random.
    Flag(bool),
    /// `"lycoris"`: `lokr_w2` (or `lokr_w2_b`) zero instead, as the LyCORIS repository initialises.
    Named(String),
}

impl Default for LokrInitWeights {
    fn default() -> Self {
        LokrInitWeights::Flag(true)
    }
}

/// HF PEFT's `LoKrConfig`. A field missing from the JSON takes HF PEFT's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LokrConfig {
    /// Fields every HF PEFT config has.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// The fields LoKr shares with LoHa (`r`, `alpha`, dropouts, targets, patterns).
    #[serde(flatten)]
    pub lycoris: LycorisFields,
    /// Also decompose the left factor `w1` into `lokr_w1_a @ lokr_w1_b` where `r < max(its sides) / 2`
    /// (default false: `w1` is always full).
    pub decompose_both: bool,
    /// The factor `factorization` splits dimensions by (default -1: near the square root).
    pub decompose_factor: i64,
    /// Divide a rank-dropout mask by its mean (default false; LoHa always does).
    pub rank_dropout_scale: bool,
    /// How the factors start: `true` (default), `false` or `"lycoris"`.
    pub init_weights: LokrInitWeights,
}

/// HF PEFT's defaults.
impl Default for LokrConfig {
    fn default() -> Self {
        LokrConfig {
            common: CommonConfig::default(),
            lycoris: LycorisFields::default(),
            decompose_both: false,
            decompose_factor: -1,
            rank_dropout_scale: false,
            init_weights: LokrInitWeights::default(),
        }
    }
}

impl LokrConfig {
    /// The two sides of `target`'s update, by HF PEFT's rules for a linear layer: `in = in_m * in_n` and
    /// `out = out_l * out_k` by [`factorization`]; `w1` is `[out_l, in_m]`, decomposed when `decompose_both`
    /// and `r < max(out_l, in_m) / 2`; `w2` is `[out_k, in_n]`, decomposed when `r < max(out_k, in_n) / 2`.
    pub fn sides(&self, target: &Target) -> ((usize, usize, bool), (usize, usize, bool)) {
        let (in_m, in_n) = factorization(target.in_features, self.decompose_factor);
        let (out_l, out_k) = factorization(target.out_features, self.decompose_factor);
        let below_half = |a: usize, b: usize| (target.r as f64) < a.max(b) as f64 / 2.0;
        (
            (out_l, in_m, self.decompose_both && below_half(out_l, in_m)),
            (out_k, in_n, below_half(out_k, in_n)),
        )
    }

    fn initialisation(&self) -> Result<KronInit> {
        if self.common.inference_mode {
            return Ok(KronInit::Zeros);
        }
        match &self.init_weights {
            LokrInitWeights::Flag(true) => Ok(KronInit::NoOp),
            LokrInitWeights::Flag(false) => Ok(KronInit::Random),
            LokrInitWeights::Named(name) if name == "lycoris" => Ok(KronInit::Lycoris),
            LokrInitWeights::Named(name) => Err(PeftError::Config(format!(
                "init_weights = {name:?}: LoKr takes true (default), false or \"lycoris\""
            ))),
        }
    }

    /// Builds the adapter for `init.model` (what [`PeftMethod::build`] does, with the concrete type). A config
    /// read from a saved adapter (`inference_mode`) starts from zeros and draws nothing.
    pub fn build_lokr(&self, init: &mut InitCtx) -> Result<Lokr> {
        let prepared = prepare(&self.lycoris, &self.common, init, "LoKr")?;
        let how = self.initialisation()?;
        let device = init.model.device().clone();
        let layers = prepared
            .targets
            .into_iter()
            .map(|t| {
                let (w1, w2) = self.sides(&t);
                let side = |(rows, cols, decomposed)| Side {
                    rows,
                    cols,
                    decomposed,
                };
                let factors =
                    KronFactors::new(side(w1), side(w2), t.r, how, &mut init.rng, &device)?;
                Ok(LycorisLayer::new(t, factors))
            })
            .collect::<Result<Vec<_>>>()?;
        let dropout = dropout(
            &self.lycoris,
            self.rank_dropout_scale,
            !self.common.inference_mode,
            init,
        );
        let config = LokrConfig {
            common: prepared.common,
            lycoris: prepared.fields,
            ..self.clone()
        };
        Ok(Lokr::new(
            config,
            "LoKr",
            layers,
            dropout,
            init.model.spec().sites.len(),
        ))
    }
}

/// LoKr has no size knob: its count is not monotone in `r` (a side switches between a full matrix and a
/// rank-`r` pair at `r = max(sides) / 2`), which a parameter-budget search needs.
#[typetag::serde(name = "LOKR")]
impl PeftMethod for LokrConfig {
    fn build(&self, init: &mut InitCtx) -> Result<Box<dyn Adapter>> {
        Ok(Box::new(self.build_lokr(init)?))
    }

    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn common_mut(&mut self) -> &mut CommonConfig {
        &mut self.common
    }
}
