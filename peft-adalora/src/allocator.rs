//! AdaLoRA's rank allocator, as HF PEFT's `RankAllocator` and `update_and_allocate` run it after each
//! optimiser step (`step` counts the steps taken, from 1):
//!
//! - the budget ([`Schedule::budget`]): `init_r` per module until `tinit`, then falling cubically to
//!   `target_r` per module at `total_step - tfinal`, kept there after;
//! - before `total_step - tfinal`, each parameter's sensitivity `|p * grad|` updates two moving averages: the
//!   sensitivity (`beta1`) and its uncertainty, `|sensitivity - average|` (`beta2`);
//! - every `deltaT` steps of the budgeting phase, and once at `total_step - tfinal`, each singular triplet
//!   `i` scores `s(E_i) + mean s(A_i,:) + mean s(B_:,i)` (with `s` = average * uncertainty), and every triplet
//!   scoring at or below the `k`-th smallest score, `k` = starting ranks - budget, has its `lora_E` entry
//!   zeroed: the flags that survive are the rank pattern;
//! - at `total_step - tfinal` the averages are dropped; after it, each step zeroes the pattern's masked
//!   entries again (the optimiser moves them).
//!
//! ```
//! use peft_adalora::Schedule;
//! // 2 modules of init_r 4 (8 ranks), target_r 2 (4 ranks), tinit 1, tfinal 1, total_step 5.
//! let s = Schedule { init_budget: 8, target_budget: 4, tinit: 1, tfinal: 1, total_step: 5, delta_t: 1 };
//! assert_eq!(s.budget(1), (8, false)); // warm-up
//! assert_eq!(s.budget(2), (5, true)); // 4 * (2/3)^3 + 4 = 5.19
//! assert_eq!(s.budget(3), (4, true)); // 4 * (1/3)^3 + 4 = 4.15
//! assert_eq!(s.budget(5), (4, true)); // final phase
//! assert_eq!(peft_adalora::kth_smallest(&[0.3, 0.1, 0.2], 2), Some(0.2));
//! ```

use candle_core::Tensor;
use peft_core::Result;

/// The budget schedule: HF PEFT's `budget_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Ranks at the start: the sum of every module's rank.
    pub init_budget: usize,
    /// Ranks at the end: `target_r` times the number of modules.
    pub target_budget: usize,
    /// Warm-up steps.
    pub tinit: usize,
    /// Final fine-tuning steps.
    pub tfinal: usize,
    /// The run's steps.
    pub total_step: usize,
    /// Steps between allocations.
    pub delta_t: usize,
}

impl Schedule {
    /// The budget at `step` and whether the step masks (HF PEFT's `(budget, mask_ind)`).
    pub fn budget(&self, step: usize) -> (usize, bool) {
        if step <= self.tinit {
            return (self.init_budget, false);
        }
        if step > self.total_step - self.tfinal {
            return (self.target_budget, true);
        }
        // Python's float arithmetic, `**` as C's pow and `int()` truncating.
        let span = (self.total_step - self.tfinal - self.tinit) as f64;
        let mul_coeff = 1.0 - (step - self.tinit) as f64 / span;
        let fall = (self.init_budget as f64 - self.target_budget as f64) * mul_coeff.powf(3.0);
        let budget = (fall + self.target_budget as f64) as usize;
        (budget, step.is_multiple_of(self.delta_t))
    }

    /// The step from which ranks are final (`total_step - tfinal`).
    pub fn final_step(&self) -> usize {
        self.total_step - self.tfinal
    }
}

/// The `k`-th smallest (1-based) of `scores`, as `torch.kthvalue`; `None` for `k = 0` (nothing to mask) or
/// beyond the scores.
pub fn kth_smallest(scores: &[f32], k: usize) -> Option<f32> {
    if k == 0 || k > scores.len() {
        return None;
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    Some(sorted[k - 1])
}

/// The moving averages of one parameter's sensitivity.
#[derive(Debug, Clone)]
pub struct Averages {
    /// `exp_avg_ipt`: the smoothed sensitivity.
    pub sensitivity: Tensor,
    /// `exp_avg_unc`: the smoothed uncertainty.
    pub uncertainty: Tensor,
}

impl Averages {
    /// Zeros shaped as `like` (HF PEFT's first sight of a parameter).
    pub fn zeros(like: &Tensor) -> Result<Self> {
        Ok(Averages {
            sensitivity: like.zeros_like()?,
            uncertainty: like.zeros_like()?,
        })
    }

    /// One update with the parameter `p` after the step and the gradient `grad` the step applied.
    ///
    /// `p` is read detached: a trainable variable's products are tracked, and the averages would then hold a
    /// graph that every step extends (each step's intermediate tensors kept alive to the end of the run).
    pub fn update(&mut self, p: &Tensor, grad: &Tensor, beta1: f64, beta2: f64) -> Result<()> {
        let ipt = (p.detach() * grad.detach())?.abs()?;
        // HF PEFT's arithmetic: float32 tensors times the Python floats beta and 1 - beta.
        self.sensitivity = ((&self.sensitivity * beta1)? + (&ipt * (1.0 - beta1))?)?;
        let deviation = (&ipt - &self.sensitivity)?.abs()?;
        self.uncertainty = ((&self.uncertainty * beta2)? + (deviation * (1.0 - beta2))?)?;
        Ok(())
    }

    /// The element scores, sensitivity times uncertainty.
    pub fn score(&self) -> Result<Tensor> {
        Ok((&self.sensitivity * &self.uncertainty)?)
    }
}

/// The score of each singular triplet of one module, from the averages of its `lora_A` `[r, in]`, `lora_B`
/// `[out, r]` and `lora_E` `[r, 1]`: `s(E_i) + (mean_j s(A_ij) + mean_j s(B_ji))`, in HF PEFT's order.
pub fn triplet_scores(a: &Averages, b: &Averages, e: &Averages) -> Result<Vec<f32>> {
    let a = a.score()?.mean(1)?.to_vec1::<f32>()?;
    let b = b.score()?.mean(0)?.to_vec1::<f32>()?;
    let e = e.score()?.flatten_all()?.to_vec1::<f32>()?;
    Ok(e.iter()
        .zip(a.iter().zip(&b))
        .map(|(e, (a, b))| e + (a + b))
        .collect())
}

/// The flags of the triplets that survive `threshold` (`None`: all do): those scoring above it.
pub fn surviving(scores: &[f32], threshold: Option<f32>) -> Vec<bool> {
    match threshold {
        None => vec![true; scores.len()],
        Some(t) => scores.iter().map(|&s| s > t || s.is_nan()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn averages_of_a_trainable_variable_keep_no_graph() {
        let p = Var::from_slice(&[1.0f32, -2.0, 3.0], 3, &Device::Cpu).unwrap();
        // The premise: a product with the variable is tracked.
        assert!((p.as_tensor() * 2.0).unwrap().track_op());
        let grad = Tensor::new(&[0.5f32, 0.5, -1.0], &Device::Cpu).unwrap();
        let mut averages = Averages::zeros(p.as_tensor()).unwrap();
        for _ in 0..3 {
            averages.update(p.as_tensor(), &grad, 0.85, 0.85).unwrap();
        }
        assert!(!averages.sensitivity.track_op());
        assert!(!averages.uncertainty.track_op());
        // |p g| smoothed three times from zero: (1 - 0.85^3) |p g|.
        let expected = [0.5f32, 1.0, 3.0].map(|v| v * (1.0 - 0.85f32.powi(3)));
        let got = averages.sensitivity.to_vec1::<f32>().unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
    }
}
