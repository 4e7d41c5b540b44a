//! The non-finite guard: a run stops at the first step whose loss or global gradient norm (before clipping)
//! is NaN or infinite, before its update; at the first update that leaves a trainable parameter non-finite;
//! and at the first evaluation with a non-finite metric, before it can replace `best/`. Nothing is written
//! after the bad step, so the last checkpoint and `best/` stay as they were, and the error names the step,
//! what went non-finite and the likely fix.
//!
//! ```no_run
//! # fn demo(model: &dyn peft_core::model::BaseModel, adapter: &dyn peft_core::method::Adapter,
//! #         task: &dyn peft_train::task::Task) -> peft_core::Result<()> {
//! use peft_train::train::{TrainConfig, Trainer};
//! let config = TrainConfig { learning_rate: 1e8, ..TrainConfig::default() };
//! let err = Trainer::new(model, adapter, task, config).run().unwrap_err();
//! assert!(err.to_string().contains("not finite"));
//! # Ok(()) }
//! ```

use candle_core::Var;

use super::config::TrainConfig;
use peft_core::error::{PeftError, Result};

/// The name of the first of `vars` holding a NaN or an infinity, if any.
pub(super) fn first_non_finite(vars: &[(String, Var)]) -> Result<Option<String>> {
    for (name, var) in vars {
        // One reduction per variable when all is finite (the common case on this per-step path).
        if peft_core::finite::non_finite_count(var.as_tensor())? > 0 {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

/// The error that stops a run at `step` (1-based) because `what` is not finite.
pub(super) fn diverged(step: usize, what: &str, config: &TrainConfig) -> PeftError {
    let fix = if config.max_grad_norm > 0.0 {
        format!(
            "lower it (gradient clipping is on, max_grad_norm = {})",
            config.max_grad_norm
        )
    } else {
        "lower it, or clip the gradients with max_grad_norm (now 0, off), e.g. 1.0".to_string()
    };
    PeftError::Unsupported(format!(
        "training stopped at step {step}: {what} is not finite (NaN or infinite). The run diverged: \
         learning_rate {lr:e} is likely too high: {fix}. Nothing was saved from step {step} on: \
         {checkpoint} and {best} hold the last good state",
        lr = config.learning_rate,
        checkpoint = config.output_dir.join("checkpoint").display(),
        best = config.output_dir.join("best").display(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn the_first_non_finite_parameter_is_named() {
        let var = |v: &[f32]| Var::from_tensor(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap();
        let big = f32::MAX / 2.0;
        let vars = vec![
            ("fine".to_string(), var(&[big, big, big])),
            ("bad".to_string(), var(&[1.0, f32::NAN])),
            ("inf".to_string(), var(&[f32::INFINITY])),
        ];
        assert_eq!(
            first_non_finite(&vars[..1]).unwrap(),
            None,
            "large is not infinite"
        );
        assert_eq!(first_non_finite(&vars).unwrap().as_deref(), Some("bad"));
        assert_eq!(
            first_non_finite(&vars[2..]).unwrap().as_deref(),
            Some("inf")
        );
    }

    #[test]
    fn the_message_names_the_step_the_cause_and_the_fix() {
        let config = TrainConfig {
            learning_rate: 1e8,
            ..TrainConfig::default()
        };
        let msg = diverged(3, "the gradient norm (inf)", &config).to_string();
        for needle in [
            "step 3",
            "gradient norm",
            "not finite",
            "learning_rate 1e8",
            "max_grad_norm",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
    }
}
