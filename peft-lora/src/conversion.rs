//! PiSSA / OLoRA to plain LoRA: an adapter trained from `(A0, B0)` over the residual base `W - s B0 A0` changes
//! the model by `s (B A - B0 A0) = s [B, -B0] [A; A0]`, a plain LoRA of rank `2 r` against the original W. This
//! is what HF PEFT writes with `save_pretrained(path_initial_model_for_weight_conversion = ...)`: `r` and the
//! rank pattern doubled, `lora_alpha` (and the alpha pattern) doubled so that `alpha / r` stays (times
//! `sqrt 2` with rsLoRA, whose scale is `alpha / sqrt r`), `init_lora_weights = true`. The converted adapter
//! loads on the unchanged base, here or in HF PEFT, and stacks with other adapters.
//!
//! ```
//! use peft_core::method::InitCtx;
//! use peft_lora::{InitLoraWeights, LoraConfig};
//! use rand::SeedableRng;
//! let model = peft_models::tiny::llama(0);
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let mut config = LoraConfig::new(2, ["q_proj"]);
//! config.init_lora_weights = InitLoraWeights::Named("pissa".into());
//! let pissa = config.build_lora(&mut init).unwrap();
//! let plain = pissa.to_plain_lora().unwrap();
//! assert_eq!(plain.lora_config().r, 4);
//! assert_eq!(plain.lora_config().init_lora_weights, InitLoraWeights::Flag(true));
//! assert!(plain.layers()[0].initial().is_none());
//! ```

use candle_core::{Tensor, Var};
use peft_core::{PeftError, Result};
use rand::SeedableRng;

use crate::adapter::{Lora, LoraLayer};
use crate::config::InitLoraWeights;
use crate::dropout::Dropout;
use crate::targets::Target;

impl Lora {
    /// This adapter as a plain LoRA against the original base weights (see the module docs). An adapter with
    /// no PiSSA / OLoRA factors is refused: it is plain LoRA already.
    pub fn to_plain_lora(&self) -> Result<Lora> {
        let config = self.lora_config();
        if self.layers().iter().all(|l| l.initial().is_none()) {
            return Err(PeftError::Config(format!(
                "init_lora_weights = {:?}: this adapter is plain LoRA already, there is nothing to convert",
                config.init_lora_weights
            )));
        }
        if config.use_rslora
            && (!config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty())
        {
            // HF PEFT refuses the same: doubling alpha cannot keep alpha / sqrt(r) for patterned modules.
            return Err(PeftError::Unsupported(
                "converting to plain LoRA with use_rslora and rank_pattern / alpha_pattern is not supported (HF \
                 PEFT refuses it too)"
                    .into(),
            ));
        }
        let alpha_factor = if config.use_rslora { 2f64.sqrt() } else { 2.0 };
        let mut converted = config.clone();
        converted.init_lora_weights = InitLoraWeights::Flag(true);
        converted.r *= 2;
        converted.lora_alpha *= alpha_factor;
        converted.rank_pattern.values_mut().for_each(|r| *r *= 2);
        converted.alpha_pattern.values_mut().for_each(|a| *a *= 2.0);

        let mut layers = Vec::with_capacity(self.layers().len());
        for layer in self.layers() {
            let (a0, b0) = layer.initial().ok_or_else(|| {
                PeftError::Config(format!(
                    "`{}` has no PiSSA / OLoRA starting factors while other modules do",
                    layer.name()
                ))
            })?;
            let a = Tensor::cat(&[layer.a(), a0], 0)?;
            let b = Tensor::cat(&[layer.b(), &b0.neg()?], 1)?;
            let target = Target {
                r: 2 * layer.rank(),
                alpha: layer.target().alpha * alpha_factor,
                ..layer.target().clone()
            };
            layers.push(LoraLayer::new(
                target,
                Var::from_tensor(&a)?,
                Var::from_tensor(&b)?,
                layer.scale(),
            ));
        }
        let dropout = Dropout::new(config.lora_dropout, rand::rngs::StdRng::seed_from_u64(0));
        let num_sites = self.num_sites();
        Ok(Lora::new(
            converted,
            layers,
            self.biases().to_vec(),
            dropout,
            num_sites,
        ))
    }
}
