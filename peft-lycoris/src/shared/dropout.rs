//! LyCORIS's two training-time dropouts, as HF PEFT applies them; both are off while gradients are not tracked
//! (evaluation and generation run under `peft_core::grad::no_grad`, as `model.eval()` turns them off in
//! PyTorch):
//!
//! - `module_dropout`: in each forward call, each adapted module adds its update only with probability
//!   `1 - module_dropout` (HF draws once per module and call, not once per forward pass of the model);
//! - `rank_dropout`: each output row of the update is kept with probability `1 - rank_dropout`; the kept rows
//!   are divided by the kept fraction (LoHa always, LoKr when `rank_dropout_scale`).
//!
//! Draws come from a generator seeded when the adapter is built, so a run is repeatable; a resumed run starts
//! it afresh, and data-parallel ranks draw independently, so with either dropout on, those runs differ from an
//! uninterrupted single-process one (as LoRA's dropout does).
//!
//! ```
//! use rand::SeedableRng;
//! use peft_lycoris::LycorisDropout;
//! let d = LycorisDropout::new(0.0, 0.5, true, rand::rngs::StdRng::seed_from_u64(0));
//! let mask = d.rank_mask(1000, &candle_core::Device::Cpu).unwrap().unwrap(); // [1000, 1]
//! let mean = mask.mean_all().unwrap().to_scalar::<f32>().unwrap();
//! assert!((mean - 1.0).abs() < 1e-5); // rescaled by the kept fraction
//! assert!(peft_core::grad::no_grad(|| d.rank_mask(1000, &candle_core::Device::Cpu).unwrap()).is_none());
//! ```

use std::sync::Mutex;

use candle_core::{Device, Tensor};
use peft_core::Result;
use rand::rngs::StdRng;
use rand::Rng;

/// The module and rank dropouts of one adapter, with their generator.
#[derive(Debug)]
pub struct LycorisDropout {
    module_dropout: f64,
    rank_dropout: f64,
    rank_dropout_scale: bool,
    rng: Mutex<StdRng>,
}

impl LycorisDropout {
    /// Dropouts with these probabilities (each in `[0, 1)`), drawing from `rng`; `rank_dropout_scale` divides
    /// a rank mask by its mean.
    pub fn new(
        module_dropout: f64,
        rank_dropout: f64,
        rank_dropout_scale: bool,
        rng: StdRng,
    ) -> Self {
        LycorisDropout {
            module_dropout,
            rank_dropout,
            rank_dropout_scale,
            rng: Mutex::new(rng),
        }
    }

    /// Whether this forward call of one module skips its update (training with `module_dropout > 0` only).
    pub fn skips_module(&self) -> bool {
        if self.module_dropout == 0.0 || !peft_core::grad::enabled() {
            return false;
        }
        // HF keeps the update when a uniform draw exceeds the probability.
        let draw: f64 = self.rng.lock().unwrap_or_else(|e| e.into_inner()).random();
        draw <= self.module_dropout
    }

    /// The `[rows, 1]` mask of kept update rows for one forward call, or `None` when nothing is dropped
    /// (not training, or `rank_dropout = 0`).
    pub fn rank_mask(&self, rows: usize, device: &Device) -> Result<Option<Tensor>> {
        if self.rank_dropout == 0.0 || !peft_core::grad::enabled() {
            return Ok(None);
        }
        let mut mask: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (0..rows)
                .map(|_| f32::from(rng.random::<f64>() > self.rank_dropout))
                .collect()
        };
        if self.rank_dropout_scale {
            // As HF: divided by the kept fraction (all rows dropped gives NaN there; here the update is zero).
            let kept = mask.iter().sum::<f32>() / rows as f32;
            if kept > 0.0 {
                mask.iter_mut().for_each(|m| *m /= kept);
            }
        }
        Ok(Some(Tensor::from_vec(mask, (rows, 1), device)?))
    }
}
