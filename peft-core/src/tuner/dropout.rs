//! Inverted dropout on the input of an adapter's branch (LoRA's `lora_dropout`, VeRA's `vera_dropout`), active
//! only while gradients are tracked (training); evaluation and generation run under
//! [`no_grad`](crate::grad::no_grad), where it is the identity, as `model.eval()` makes it in PyTorch. Masks
//! come from a generator seeded when the adapter is built, so a run is repeatable; a run resumed from a
//! checkpoint starts that generator afresh (checkpoints hold tensors, not generator states), so with a
//! dropout above 0 it draws other masks than an uninterrupted run would.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use rand::SeedableRng;
//! let d = peft_core::tuner::Dropout::new(0.5, rand::rngs::StdRng::seed_from_u64(0));
//! let x = Tensor::ones(8, DType::F32, &Device::Cpu).unwrap();
//! // Evaluation: the identity.
//! let y = peft_core::grad::no_grad(|| d.apply(&x).unwrap());
//! assert_eq!(y.to_vec1::<f32>().unwrap(), vec![1.0; 8]);
//! ```

use std::sync::Mutex;

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::Rng;

use crate::Result;

/// Inverted dropout with probability `p`: kept values are scaled by `1 / (1 - p)`.
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    rng: Mutex<StdRng>,
}

impl Dropout {
    /// Dropout with probability `p` in `[0, 1)`, drawing masks from `rng`.
    pub fn new(p: f64, rng: StdRng) -> Self {
        Dropout {
            p,
            rng: Mutex::new(rng),
        }
    }

    /// `x` with each element zeroed with probability `p` (and the rest scaled), or `x` itself when not
    /// training or `p = 0`. The mask is drawn element by element in order, so it does not depend on `x`'s
    /// shape.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.p == 0.0 || !crate::grad::enabled() {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (0..x.elem_count())
                .map(|_| {
                    if rng.random::<f64>() < keep {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }

    /// The dropout probability.
    pub fn p(&self) -> f64 {
        self.p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    #[test]
    fn drops_about_p_while_training_and_nothing_under_no_grad() {
        for (p, seed) in [(0.25, 1), (0.3, 2)] {
            let x = Tensor::ones((100, 50), DType::F32, &Device::Cpu).unwrap();
            let d = Dropout::new(p, StdRng::seed_from_u64(seed));
            let y: Vec<f32> = d
                .apply(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
            assert!((zeros - p).abs() < 0.03, "dropped fraction {zeros}");
            let kept = (1.0 / (1.0 - p)) as f32;
            assert!(y.iter().all(|&v| v == 0.0 || (v - kept).abs() < 1e-6));
            let eval = crate::grad::no_grad(|| d.apply(&x).unwrap());
            assert_eq!(eval.sum_all().unwrap().to_scalar::<f32>().unwrap(), 5000.0);
        }
    }
}
