//! Rotary position embeddings in Hugging Face's `rotate_half` (non-interleaved) form: the head dimension is
//! split in two halves `(x1, x2)` and position `p` maps it to `x * cos(p f) + (-x2, x1) * sin(p f)`, with the
//! frequencies `f_i = theta^(-2i / head_dim)` repeated over both halves.
//!
//! Built from differentiable primitives (candle's fused rope kernel is avoided so that a gradient flowing to
//! a prompt through the keys and queries is never cut).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use peft_models::rope::Rope;
//! let rope = Rope::new(8, 10000.0).unwrap();
//! let tables = rope.tables(0, 3, &Device::Cpu).unwrap(); // positions 0, 1, 2
//! let q = Tensor::ones((1, 2, 3, 8), candle_core::DType::F32, &Device::Cpu).unwrap(); // [B, H, T, D]
//! let rotated = tables.apply(&q).unwrap();
//! assert_eq!(rotated.dims(), &[1, 2, 3, 8]);
//! // Position 0 is the identity.
//! let first = rotated.narrow(2, 0, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
//! assert!(first.iter().all(|v| (v - 1.0).abs() < 1e-6));
//! ```

use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};

/// The rotary frequencies of one model: `theta^(-2i / head_dim)` for `i < head_dim / 2`.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
    head_dim: usize,
}

/// Cosine and sine tables for a span of positions, computed once per forward pass and shared by the layers.
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// `[seq, head_dim]`: `cos(p f)` with the frequencies repeated over both halves.
    cos: Tensor,
    /// `[seq, head_dim]`.
    sin: Tensor,
}

impl Rope {
    /// Frequencies for an even head dimension and a base `theta` (`rope_theta`).
    pub fn new(head_dim: usize, theta: f64) -> Result<Self> {
        if head_dim == 0 || head_dim % 2 == 1 {
            return Err(ModelError::Config(format!(
                "rotary embeddings need an even head dimension, got {head_dim}"
            )));
        }
        // HF computes these in f32; f64 then one rounding of cos/sin stays within f32 rounding of theirs.
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
            .collect();
        Ok(Rope { inv_freq, head_dim })
    }

    /// The head dimension the frequencies are for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Tables for positions `offset .. offset + seq` (a key/value prefix of `offset` positions comes first).
    pub fn tables(&self, offset: usize, seq: usize, device: &Device) -> Result<RopeTables> {
        let positions: Vec<u32> = (offset..offset + seq).map(|p| p as u32).collect();
        self.tables_at(&[positions], device)
    }

    /// Tables for each row's own positions (`positions[b][t]`, every row the same length): a left-padded
    /// row, or one continuing from a key/value cache, is rotated where it sits.
    pub fn tables_at(&self, positions: &[Vec<u32>], device: &Device) -> Result<RopeTables> {
        let seq = positions.first().map_or(0, |r| r.len());
        if positions.iter().any(|r| r.len() != seq) {
            return Err(ModelError::Config(
                "rotary positions must give every row the same number of positions".into(),
            ));
        }
        // Rows at the same positions (an unpadded batch, a training batch) share one table, broadcast.
        let positions = match positions.split_first() {
            Some((first, rest)) if rest.iter().all(|r| r == first) => &positions[..1],
            _ => positions,
        };
        let rows = positions.len();
        let mut cos = Vec::with_capacity(rows * seq * self.head_dim);
        let mut sin = Vec::with_capacity(rows * seq * self.head_dim);
        for &p in positions.iter().flatten() {
            for _ in 0..2 {
                for f in &self.inv_freq {
                    let angle = p as f64 * f;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let shape = (rows, 1, seq, self.head_dim);
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, shape, device)?,
            sin: Tensor::from_vec(sin, shape, device)?,
        })
    }
}

impl RopeTables {
    /// Refuses `batch` rows of `seq` positions of dimension `dim` that the tables do not cover.
    fn check_fits(&self, batch: usize, seq: usize, dim: usize) -> Result<()> {
        let (rows, _, positions, width) = self.cos.dims4()?;
        if (rows != 1 && rows != batch) || positions != seq || width != dim {
            return Err(ModelError::Config(format!(
                "rotary tables cover {:?} (rows, 1, positions, head_dim), applied to {batch} rows of {seq} \
                 positions of dimension {dim}",
                self.cos.dims()
            )));
        }
        Ok(())
    }

    /// Rotates `x` `[batch, heads, seq, head_dim]`: token `t` gets the table's position `t`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, _, seq, dim) = x.dims4()?;
        self.check_fits(batch, seq, dim)?;
        // One op that keeps only the tables for its backward (see `peft_kernels::rotary`).
        Ok(peft_kernels::rotary(x, &self.cos, &self.sin)?)
    }

    /// A projection's output `[batch, seq, heads * head_dim]` split into heads and rotated, `[batch, heads,
    /// seq, head_dim]`: [`crate::attention::split_heads`] then [`RopeTables::apply`] as one op (one graph node
    /// for the backward instead of four, see `peft_kernels::split_heads_rotary`).
    pub fn split_rotated(&self, x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
        let (batch, seq, _) = x.dims3()?;
        self.check_fits(batch, seq, head_dim)?;
        Ok(peft_kernels::split_heads_rotary(
            x, heads, head_dim, &self.cos, &self.sin,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn rotation_matches_the_formula_and_keeps_shape() {
        let dev = Device::Cpu;
        let rope = Rope::new(4, 100.0).unwrap();
        let x = Tensor::new(&[1f32, 2., 3., 4.], &dev)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        let y = rope.tables(3, 1, &dev).unwrap().apply(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 1, 4]);
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (f0, f1) = (1.0f64, 1.0 / 100f64.powf(0.5));
        let (a0, a1) = (3.0 * f0, 3.0 * f1);
        let expected = [
            1.0 * a0.cos() - 3.0 * a0.sin(),
            2.0 * a1.cos() - 4.0 * a1.sin(),
            3.0 * a0.cos() + a0.sin(),
            4.0 * a1.cos() + 2.0 * a1.sin(),
        ];
        for (got, want) in y.iter().zip(expected) {
            assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn rotation_preserves_norms_and_relative_positions() {
        let dev = Device::Cpu;
        let rope = Rope::new(8, 10000.0).unwrap();
        let q = Tensor::randn(0f32, 1., (2, 3, 4, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, 3, 4, 8), &dev).unwrap();
        let norm = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(
            (norm(&rope.tables(5, 4, &dev).unwrap().apply(&q).unwrap()) - norm(&q)).abs() < 1e-3
        );
        // q.k depends only on the distance between positions: shifting both by 7 keeps the scores.
        let scores = |off: usize| {
            let t = rope.tables(off, 4, &dev).unwrap();
            t.apply(&q)
                .unwrap()
                .matmul(&t.apply(&k).unwrap().t().unwrap())
                .unwrap()
        };
        let diff = (scores(0) - scores(7))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "scores moved by {diff}");
    }

    #[test]
    fn odd_head_dim_and_mismatched_tables_are_errors() {
        assert!(Rope::new(3, 1.0).is_err());
        let tables = Rope::new(4, 10000.0)
            .unwrap()
            .tables(0, 2, &Device::Cpu)
            .unwrap();
        let x = Tensor::zeros((1, 1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(tables.apply(&x).is_err());
    }
}
