//! Inverted dropout on the input of an adapter's branch (LoRA's `lora_dropout`, VeRA's `vera_dropout`), active
//! only while gradients are tracked (training); evaluation and generation run under
//! [`no_grad`](crate::grad::no_grad), where it is the identity, as `model.eval()` makes it in PyTorch. Masks
//! come from a generator seeded when the adapter is built, so a run is repeatable; a run resumed from a
//! checkpoint starts that generator afresh (checkpoints hold tensors, not generator states), so with a
//! dropout above 0 it draws other masks than an uninterrupted run would.
//!
//! Under gradient checkpointing a layer runs twice (forward, then again in the backward), and both runs must
//! drop the same values: inside [`replayable`] the masks come from a stream seeded per layer instead of the
//! adapter's generator, so a replay draws what the first run drew.
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

use std::cell::Cell;
use std::sync::Mutex;

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Result;

thread_local! {
    /// The replayable stream's seed and the masks drawn from it so far, inside [`replayable`].
    static STREAM: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// Runs `f` with every dropout mask on this thread drawn from a stream of `seed` (the `n`-th mask from a
/// generator seeded by `seed` and `n`), restoring the previous state afterwards: running the same `f` twice
/// under the same seed draws the same masks, which is what a recomputed layer needs.
pub fn replayable<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<(u64, u64)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STREAM.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(STREAM.with(|s| s.replace(Some((seed, 0)))));
    f()
}

/// The next mask's generator of the replayable stream, when one is active.
fn stream_generator() -> Option<StdRng> {
    STREAM.with(|s| {
        let (seed, n) = s.get()?;
        s.set(Some((seed, n + 1)));
        // Distinct, well-mixed seeds for consecutive masks (splitmix64's increment and finaliser).
        let mut z = seed ^ n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Some(StdRng::seed_from_u64(z ^ (z >> 31)))
    })
}

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
        if self.is_identity() {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let draw = |rng: &mut StdRng| -> Vec<f32> {
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
        let mask = match stream_generator() {
            Some(mut rng) => draw(&mut rng),
            None => draw(&mut self.rng.lock().unwrap_or_else(|e| e.into_inner())),
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }

    /// Whether [`Dropout::apply`] returns its input as it is: `p = 0`, or not training.
    pub fn is_identity(&self) -> bool {
        self.p == 0.0 || !crate::grad::enabled()
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

    #[test]
    fn a_replayable_stream_draws_the_same_masks_again_and_leaves_the_generator_alone() {
        let x = Tensor::ones((40, 25), DType::F32, &Device::Cpu).unwrap();
        let d = Dropout::new(0.5, StdRng::seed_from_u64(3));
        let twice = |seed| {
            replayable(seed, || {
                let a = d.apply(&x).unwrap().flatten_all().unwrap();
                let b = d.apply(&x).unwrap().flatten_all().unwrap();
                (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap())
            })
        };
        let (first, second) = twice(7);
        assert_eq!(twice(7), (first.clone(), second.clone()));
        // Consecutive masks of one stream differ, and another seed draws others.
        assert_ne!(first, second);
        assert_ne!(twice(8).0, first);
        // Outside the stream the adapter's own generator runs as if the stream had never been used.
        let fresh = Dropout::new(0.5, StdRng::seed_from_u64(3));
        let own = |d: &Dropout| {
            d.apply(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(own(&d), own(&fresh));
    }
}
