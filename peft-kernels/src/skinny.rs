//! The product `x W^T` for a few rows of `x` (a decoding step: one token per row): dot products straight from
//! the row-major weight. A general GEMM packs the whole weight into its panel layout on every call, which for
//! 8 rows costs more than the product (the weight is read and written once more for 8 multiply-adds per
//! value); here each weight row is read once and used by every input row while it is in L1.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use peft_core::frozen::FrozenLinear;
//! let dev = Device::Cpu;
//! let w = Tensor::arange(0f32, 12., &dev).unwrap().reshape((4, 3)).unwrap();
//! let lin = FrozenLinear::new(w, None, &peft_kernels::frozen::FrozenGemm);
//! // Two rows (a decoding step of two sequences) take the dot-product path.
//! let x = Tensor::new(&[[1f32, 0., 0.], [0., 0., 1.]], &dev).unwrap();
//! let y = lin.forward(&x).unwrap().to_vec2::<f32>().unwrap();
//! assert_eq!(y, vec![vec![0., 3., 6., 9.], vec![2., 5., 8., 11.]]);
//! ```

use rayon::prelude::*;

use crate::cpu;

/// Inputs of at most this many rows take the dot-product path (measured on SmolLM2's projections: at 16 rows
/// the packing GEMM is still slower, at 32 it is faster).
pub(crate) const MAX_ROWS: usize = 16;

/// Output columns per parallel task.
const COLUMNS_PER_TASK: usize = 64;

cpu::simd_fn! {
    /// `block[j * m + i] = x[i] . w[j]` for the weight rows `w` (`[cols, k]`) and the `m` input rows `x`.
    fn dot_block(x: &[f32], w: &[f32], block: &mut [f32], m: usize, k: usize) {
        for (j, out) in block.chunks_exact_mut(m).enumerate() {
            let row = &w[j * k..(j + 1) * k];
            for (i, o) in out.iter_mut().enumerate() {
                *o = cpu::dot(&x[i * k..(i + 1) * k], row);
            }
        }
    }
}

/// `out[m, n] (+)= x[m, k] w[n, k]^T`, `out` row-major; adds onto `out` where `accumulate`.
pub(crate) fn product(
    x: &[f32],
    w: &[f32],
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && out.len() >= m * n,
        "skinny product operands too short"
    );
    // Computed column-major (each task owns whole output columns), then added into the row-major output.
    let mut columns = vec![0f32; n * m];
    columns
        .par_chunks_mut(COLUMNS_PER_TASK * m)
        .zip(w.par_chunks(COLUMNS_PER_TASK * k))
        .for_each(|(block, w)| dot_block(x, w, block, m, k));
    for (i, row) in out.chunks_exact_mut(n).take(m).enumerate() {
        for (j, o) in row.iter_mut().enumerate() {
            let v = columns[j * m + i];
            *o = if accumulate { *o + v } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Mat, Threads};
    use rand::{Rng, SeedableRng};

    #[test]
    fn equals_the_gemm_for_every_row_count_and_both_modes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let (n, k) = (197, 75); // not multiples of the lanes or the task width
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1f32..1.)).collect();
        for m in [1, 3, 8, MAX_ROWS] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1f32..1.)).collect();
            let bias: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1f32..1.)).collect();
            for accumulate in [false, true] {
                let mut want = bias.clone();
                cpu::matmul(
                    Mat::rows(&x, k),
                    Mat::transposed(&w, k),
                    &mut want,
                    (m, n, k),
                    accumulate,
                    Threads::One,
                );
                let mut got = bias.clone();
                product(&x, &w, &mut got, (m, n, k), accumulate);
                let diff = want
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff < 1e-4,
                    "m {m}, accumulate {accumulate}: differs by {diff}"
                );
                if !accumulate {
                    assert!(
                        got.iter().zip(&bias).any(|(a, b)| a != b),
                        "the output was not written"
                    );
                }
            }
        }
    }
}
