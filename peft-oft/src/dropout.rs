//! OFT's `module_dropout`, the multiplicative dropout of the OFT paper and of HF PEFT's
//! `MultiplicativeDropoutLayer`: while training, in each forward call of an adapted module, `int(p * blocks)`
//! of its rotation blocks, chosen at random, are replaced by the identity (a module whose blocks are shared,
//! `block_share`, has one block and is never dropped). It is the identity while gradients are not tracked
//! (evaluation and generation run under `peft_core::grad::no_grad`, as `model.eval()` turns it off).
//!
//! HF PEFT 0.21 builds this layer but its forward pass never calls it, so there `module_dropout` changes
//! nothing; here it does what the field documents. Draws come from a generator seeded when the adapter is built,
//! so a run is repeatable; a resumed run starts it afresh, and data-parallel ranks draw independently.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use rand::SeedableRng;
//! let d = peft_oft::BlockDropout::new(0.5, rand::rngs::StdRng::seed_from_u64(0));
//! let blocks = Tensor::zeros((4, 2, 2), DType::F32, &Device::Cpu).unwrap();
//! let dropped = d.apply(&blocks).unwrap();
//! // Two of the four blocks became the identity (trace 2), the other two kept (trace 0).
//! let traces: Vec<f32> = (0..4)
//!     .map(|i| dropped.get(i).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
//!     .collect();
//! assert_eq!(traces.iter().filter(|&&t| t == 2.0).count(), 2);
//! let eval = peft_core::grad::no_grad(|| d.apply(&blocks).unwrap());
//! assert_eq!(eval.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
//! ```

use std::sync::Mutex;

use candle_core::Tensor;
use peft_core::Result;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// The block dropout of one adapter, with its generator.
#[derive(Debug)]
pub struct BlockDropout {
    p: f64,
    rng: Mutex<StdRng>,
}

impl BlockDropout {
    /// Dropout of a share `p` (in `[0, 1)`) of the blocks, drawing from `rng`.
    pub fn new(p: f64, rng: StdRng) -> Self {
        BlockDropout {
            p,
            rng: Mutex::new(rng),
        }
    }

    /// The probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// The rotation blocks `[blocks, b, b]` with `int(p * blocks)` of them replaced by the identity (training
    /// only; a single block is kept, as HF does for shared blocks).
    pub fn apply(&self, rotations: &Tensor) -> Result<Tensor> {
        let (blocks, b, _) = rotations.dims3()?;
        if self.p == 0.0 || blocks == 1 || !peft_core::grad::enabled() {
            return Ok(rotations.clone());
        }
        let replaced = (self.p * blocks as f64) as usize;
        let mut mask: Vec<f32> = (0..blocks)
            .map(|i| f32::from(u8::from(i < replaced)))
            .collect();
        mask.shuffle(&mut *self.rng.lock().unwrap_or_else(|e| e.into_inner()));
        let dev = rotations.device();
        let dtype = rotations.dtype();
        let mask = Tensor::from_vec(mask, (blocks, 1, 1), dev)?.to_dtype(dtype)?;
        let eye = Tensor::eye(b, dtype, dev)?.unsqueeze(0)?;
        let kept = rotations.broadcast_mul(&(1.0 - &mask)?)?;
        Ok(kept.broadcast_add(&mask.broadcast_mul(&eye)?)?)
    }
}
