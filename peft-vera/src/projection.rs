//! VeRA's shared frozen projections: `vera_A` `[r, max_in]` and `vera_B` `[max_out, r]`, sized for the widest
//! adapted module, each module using the top-left block it needs (`A[:, :in]`, `B[:out, :]`). HF PEFT draws
//! them from `torch.Generator().manual_seed(projection_prng_key)`, `vera_A` first and then `vera_B`, each with
//! its Kaiming-uniform bound `sqrt(6 / fan_in)` (fan_in = the second dimension: `max_in` for A, `r` for B);
//! [`TorchGenerator`] reproduces those draws exactly. Saved (with `save_projection`) as `base_model.vera_A` and
//! `base_model.vera_B`.
//!
//! ```
//! use candle_core::Device;
//! use peft_vera::Projections;
//! let p = Projections::draw(0, 4, 32, 96, &Device::Cpu).unwrap();
//! assert_eq!((p.a().dims(), p.b().dims()), (&[4, 32][..], &[96, 4][..]));
//! // Every value lies within the Kaiming bound of its matrix.
//! let bound_a = (6.0f32 / 32.0).sqrt();
//! let a: Vec<f32> = p.a().flatten_all().unwrap().to_vec1().unwrap();
//! assert!(a.iter().all(|v| v.abs() <= bound_a));
//! ```

use candle_core::{DType, Device, Tensor, Var};
use peft_core::Result;

use crate::torch_rng::TorchGenerator;

/// HF PEFT's key of the saved `vera_A`.
pub const VERA_A_KEY: &str = "base_model.vera_A";
/// HF PEFT's key of the saved `vera_B`.
pub const VERA_B_KEY: &str = "base_model.vera_B";

/// The pair of shared projections (frozen: never listed as trainable).
#[derive(Debug)]
pub struct Projections {
    // Vars only so that a saved adapter's copies can replace the drawn ones in place; read detached.
    a: Var,
    b: Var,
}

/// torch's `kaiming_uniform_` bound for a tensor with `fan_in` columns and gain sqrt(2), computed in f64 with
/// Python's order of operations (`sqrt(3) * (sqrt(2) / sqrt(fan))`), as HF PEFT's `_kaiming_init` does.
fn kaiming_bound(fan_in: usize) -> f64 {
    let std = 2f64.sqrt() / (fan_in as f64).sqrt();
    3f64.sqrt() * std
}

impl Projections {
    /// Draws `vera_A` `[r, max_in]` then `vera_B` `[max_out, r]` from `torch.Generator().manual_seed(key)`.
    pub fn draw(
        key: u64,
        r: usize,
        max_in: usize,
        max_out: usize,
        device: &Device,
    ) -> Result<Self> {
        let mut g = TorchGenerator::new(key);
        let mut uniform = |rows: usize, cols: usize| -> Result<Tensor> {
            // torch casts the f64 bounds to float32 before drawing.
            let bound = kaiming_bound(cols) as f32;
            let values = g.uniform_f32(rows * cols, -bound, bound);
            Ok(Tensor::from_vec(values, (rows, cols), device)?)
        };
        let a = uniform(r, max_in)?;
        let b = uniform(max_out, r)?;
        Ok(Projections {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
        })
    }

    /// `vera_A` `[r, max_in]`.
    pub fn a(&self) -> Tensor {
        self.a.as_tensor().detach()
    }

    /// `vera_B` `[max_out, r]`.
    pub fn b(&self) -> Tensor {
        self.b.as_tensor().detach()
    }

    /// `vera_A[:, :in_features]`, the block a module with `in_features` inputs uses.
    pub fn a_for(&self, in_features: usize) -> Result<Tensor> {
        Ok(self.a().narrow(1, 0, in_features)?)
    }

    /// `vera_B[:out_features, :]`, the block a module with `out_features` outputs uses.
    pub fn b_for(&self, out_features: usize) -> Result<Tensor> {
        Ok(self.b().narrow(0, 0, out_features)?)
    }

    /// Replaces both by saved copies (same shapes, checked by the caller).
    pub(crate) fn set(&self, a: &Tensor, b: &Tensor) -> Result<()> {
        self.a.set(&a.to_dtype(DType::F32)?)?;
        self.b.set(&b.to_dtype(DType::F32)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_is_sqrt_6_over_fan_in() {
        for fan in [1usize, 7, 32, 256] {
            assert!((kaiming_bound(fan) - (6.0 / fan as f64).sqrt()).abs() < 1e-12);
        }
    }

    #[test]
    fn a_is_drawn_before_b_from_one_stream() {
        let dev = Device::Cpu;
        let p = Projections::draw(5, 2, 3, 4, &dev).unwrap();
        let mut g = TorchGenerator::new(5);
        let ba = kaiming_bound(3) as f32;
        let a = g.uniform_f32(6, -ba, ba);
        let bb = kaiming_bound(2) as f32;
        let b = g.uniform_f32(8, -bb, bb);
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(p.a()), a);
        assert_eq!(flat(p.b()), b);
        assert_eq!(flat(p.a_for(2).unwrap()), vec![a[0], a[1], a[3], a[4]]);
        assert_eq!(p.b_for(1).unwrap().dims(), &[1, 2]);
    }
}
