//! Learning-rate schedules: linear warm-up, then linear decay to zero, cosine decay to zero, or constant,
//! with the semantics of transformers' `get_linear_schedule_with_warmup` / `get_cosine_schedule_with_warmup`.
//!
//! ```
//! use peft_train::train::schedule::Schedule;
//! let s = Schedule::Linear;
//! assert_eq!(s.factor(0, 10, 100), 0.0);    // warm-up starts at zero
//! assert_eq!(s.factor(10, 10, 100), 1.0);   // peak after warm-up
//! assert_eq!(s.factor(100, 10, 100), 0.0);  // linear decay to zero
//! ```

use serde::{Deserialize, Serialize};

/// Shape of the learning rate over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Warm-up, then linear decay to zero at the last step.
    #[default]
    Linear,
    /// Warm-up, then half a cosine down to zero at the last step.
    Cosine,
    /// Warm-up, then constant.
    Constant,
}

impl Schedule {
    /// Multiplier of the peak learning rate for optimiser step `step` (0-based) out of `total`.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        match self {
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
            Schedule::Constant => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_is_half_at_the_middle_and_constant_stays() {
        assert!((Schedule::Cosine.factor(50, 0, 100) - 0.5).abs() < 1e-12);
        assert!((Schedule::Cosine.factor(0, 0, 100) - 1.0).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(99, 10, 100), 1.0);
        assert_eq!(Schedule::Constant.factor(5, 10, 100), 0.5);
        assert!((Schedule::Linear.factor(55, 10, 100) - 0.5).abs() < 1e-12);
    }
}
