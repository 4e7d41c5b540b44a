//! Dropout on the input of the VeRA branch (`vera_dropout`), applied only while gradients are tracked
//! (training); under `peft_core::grad::no_grad` (evaluation, generation) it passes the input through, as
//! `model.eval()` does in PyTorch. Masks come from a generator seeded when the adapter is built.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use rand::SeedableRng;
//! let d = peft_vera::Dropout::new(0.5, rand::rngs::StdRng::seed_from_u64(0));
//! let x = Tensor::ones(8, DType::F32, &Device::Cpu).unwrap();
//! // Evaluation: the identity.
//! let y = peft_core::grad::no_grad(|| d.apply(&x).unwrap());
//! assert_eq!(y.to_vec1::<f32>().unwrap(), vec![1.0; 8]);
//! ```

use std::sync::Mutex;

use candle_core::Tensor;
use peft_core::Result;
use rand::rngs::StdRng;
use rand::Rng;

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

    /// `x` with each element zeroed with probability `p` and the rest scaled, or `x` itself when not
    /// training or when `p = 0`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.p == 0.0 || !peft_core::grad::enabled() {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    #[test]
    fn drops_about_p_while_training() {
        let x = Tensor::ones((100, 40), DType::F32, &Device::Cpu).unwrap();
        let d = Dropout::new(0.3, StdRng::seed_from_u64(2));
        let y: Vec<f32> = d
            .apply(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        assert!((zeros - 0.3).abs() < 0.03, "dropped fraction {zeros}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
    }
}
