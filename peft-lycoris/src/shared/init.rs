//! Starting values, as HF PEFT draws them (the distributions, not torch's random stream): its
//! `kaiming_uniform_(w, a = sqrt(5))` on a `[rows, cols]` matrix is U(-1/sqrt(cols), 1/sqrt(cols)).
//!
//! ```
//! use candle_core::Device;
//! use rand::SeedableRng;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let w = peft_lycoris::kaiming_uniform(8, 4, &mut rng, &Device::Cpu).unwrap();
//! let largest = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
//! assert!(w.dims() == [8, 4] && largest <= 0.5); // 1 / sqrt(4)
//! ```

use candle_core::{DType, Device, Tensor};
use peft_core::Result;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Uniform};

/// `[rows, cols]` values drawn from U(-1/sqrt(cols), 1/sqrt(cols)) (`fan_in = cols`).
pub fn kaiming_uniform(
    rows: usize,
    cols: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Result<Tensor> {
    let bound = 1.0 / (cols as f32).sqrt();
    let dist = Uniform::new(-bound, bound).expect("a finite, non-empty range");
    let values: Vec<f32> = (0..rows * cols).map(|_| dist.sample(rng)).collect();
    Ok(Tensor::from_vec(values, (rows, cols), device)?)
}

/// A `[rows, cols]` factor: kaiming-uniform when `random`, else zeros.
pub(crate) fn factor(
    rows: usize,
    cols: usize,
    random: bool,
    rng: &mut StdRng,
    device: &Device,
) -> Result<Tensor> {
    if random {
        kaiming_uniform(rows, cols, rng, device)
    } else {
        Ok(Tensor::zeros((rows, cols), DType::F32, device)?)
    }
}
