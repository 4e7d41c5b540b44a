//! Rotary position embeddings (`x cos + rotate_half(x) sin`, LLaMA's and Gemma's RoPE) as one op with a
//! backward of its own.
//!
//! The composed form (two broadcast products, a narrow, a negation, a concatenation and a sum) keeps four
//! tensors the size of `x` alive for the backward and, worse, leaves in candle's gradient store a gradient as
//! large as `x` for each of the two untracked tables it multiplies; per layer that is about as much as all of
//! the layer's other activations. The rotation's backward needs only the tables (it is the inverse rotation of
//! the output gradient), so this op keeps nothing but them.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! // One head, one position, head_dim 4, rotated by 90 degrees (cos 0, sin 1): (x1, x2) -> (-x2, x1).
//! let x = Tensor::new(&[1f32, 2., 3., 4.], &dev).unwrap().reshape((1, 1, 1, 4)).unwrap();
//! let cos = Tensor::zeros((1, 1, 1, 4), candle_core::DType::F32, &dev).unwrap();
//! let sin = Tensor::ones((1, 1, 1, 4), candle_core::DType::F32, &dev).unwrap();
//! let y = peft_kernels::rotary(&x, &cos, &sin).unwrap();
//! assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![-3., -4., 1., 2.]);
//! ```

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu;
use peft_core::Result;

/// `x cos + rotate_half(x) sin` for `x` `[batch, heads, seq, head_dim]` and tables `[rows, 1, seq, head_dim]`
/// (`rows` 1, or one per batch row), `rotate_half((x1, x2)) = (-x2, x1)` over the last dimension. One fused
/// op on f32 CPU tensors; elsewhere [`crate::composed::rotary`] (same function).
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (batch, _, seq, dim) = x.dims4()?;
    check_tables(cos, sin, (batch, seq, dim), x.dims())?;
    if !(cpu::covers(x) && cpu::covers(cos) && cpu::covers(sin)) {
        return crate::composed::rotary(x, cos, sin);
    }
    let op = Rotary {
        cos: cos.detach().contiguous()?,
        sin: sin.detach().contiguous()?,
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// Refuses tables that do not fit `batch` rows of `seq` positions of `dim` values (`dims` is the input's
/// shape, for the message): tables are `[1 or batch, 1, seq, head_dim]`, both the same, `head_dim` even.
pub(crate) fn check_tables(
    cos: &Tensor,
    sin: &Tensor,
    (batch, seq, dim): (usize, usize, usize),
    dims: &[usize],
) -> Result<()> {
    let (rows, one, positions, width) = cos.dims4()?;
    if (rows != 1 && rows != batch)
        || one != 1
        || positions != seq
        || width != dim
        || dim % 2 != 0
        || sin.dims() != cos.dims()
    {
        return Err(peft_core::PeftError::Unsupported(format!(
            "rotary tables {:?} / {:?} do not fit x {dims:?} (tables [1 or batch, 1, seq, head_dim], \
             head_dim even)",
            cos.dims(),
            sin.dims(),
        )));
    }
    Ok(())
}

/// Where the tables' row for batch row `b`, position `t` starts (`rows` is the tables' first dimension: 1
/// when every batch row shares them).
pub(crate) fn table_offset(rows: usize, b: usize, t: usize, seq: usize, dim: usize) -> usize {
    ((if rows == 1 { 0 } else { b }) * seq + t) * dim
}

/// Rotates one `[head_dim]` row `x` into `y` by its position's tables `c`, `s`; `inverse` rotates the other
/// way (the transposed rotation, which is the backward).
pub(crate) fn rotate_row(y: &mut [f32], x: &[f32], c: &[f32], s: &[f32], inverse: bool) {
    let half = x.len() / 2;
    for i in 0..half {
        let j = i + half;
        if inverse {
            // dx_i = dy_i c_i + dy_j s_j, dx_j = dy_j c_j - dy_i s_i.
            y[i] = x[i] * c[i] + x[j] * s[j];
            y[j] = x[j] * c[j] - x[i] * s[i];
        } else {
            // y_i = x_i c_i - x_j s_i, y_j = x_j c_j + x_i s_j.
            y[i] = x[i] * c[i] - x[j] * s[i];
            y[j] = x[j] * c[j] + x[i] * s[j];
        }
    }
}

/// The op: the tables it rotates by.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    /// Rotates every `[head_dim]` row of `src` (`[batch, heads, seq, head_dim]` values) by its position's
    /// tables: forward, or (`inverse`) the transposed rotation, which is the backward.
    fn rotate(&self, src: &[f32], dims: &[usize], inverse: bool) -> candle_core::Result<Vec<f32>> {
        let (heads, seq, dim) = (dims[1], dims[2], dims[3]);
        let rows = self.cos.dim(0)?;
        let mut out = vec![0f32; src.len()];
        cpu::with_values(&self.cos, |cos| {
            cpu::with_values(&self.sin, |sin| {
                out.par_chunks_mut(dim)
                    .zip(src.par_chunks(dim))
                    .enumerate()
                    .for_each(|(row, (y, x))| {
                        let (b, t) = (row / (heads * seq), row % seq);
                        let at = table_offset(rows, b, t, seq, dim);
                        rotate_row(y, x, &cos[at..at + dim], &sin[at..at + dim], inverse);
                    });
                Ok(())
            })
        })?;
        Ok(out)
    }
}

impl CustomOp1 for Rotary {
    fn name(&self) -> &'static str {
        "rotary"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu::slice(storage, layout)?;
        let out = self.rotate(x, layout.shape().dims(), false)?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        let dims = arg.dims().to_vec();
        let out = cpu::with_values(&grad, |dy| self.rotate(dy, &dims, true))?;
        Ok(Some(cpu::tensor(out, &dims)?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::composed::rotary as composed;
    use candle_core::{Device, Var};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `shape` values uniform in [-1, 1) from `seed`.
    pub(crate) fn seeded(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn forward_and_input_gradient_equal_the_composed_form() {
        // Tables shared by every row, and one table per row (left-padded batches).
        for rows in [1, 3] {
            let x = Var::from_tensor(&seeded(&[3, 4, 5, 8], 1)).unwrap();
            let cos = seeded(&[rows, 1, 5, 8], 2);
            let sin = seeded(&[rows, 1, 5, 8], 3);
            // A weighting, so that each output element's gradient differs.
            let w = seeded(&[3, 4, 5, 8], 4);
            let fused = rotary(x.as_tensor(), &cos, &sin).unwrap();
            let reference = composed(x.as_tensor(), &cos, &sin).unwrap();
            assert!(max_diff(&fused, &reference) < 1e-6);
            let g_fused = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (reference * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (a, b) = (
                g_fused.get(x.as_tensor()).unwrap(),
                g_ref.get(x.as_tensor()).unwrap(),
            );
            assert!(max_diff(a, b) < 1e-6, "rows {rows}: {}", max_diff(a, b));
            // No gradient for the tables: they are held inside the op.
            assert!(g_fused.get(&cos).is_none() && g_fused.get(&sin).is_none());
        }
    }

    #[test]
    fn tables_that_do_not_fit_are_refused() {
        let x = seeded(&[2, 1, 4, 6], 1);
        assert!(rotary(&x, &seeded(&[1, 1, 3, 6], 2), &seeded(&[1, 1, 3, 6], 3)).is_err());
        assert!(rotary(&x, &seeded(&[3, 1, 4, 6], 2), &seeded(&[3, 1, 4, 6], 3)).is_err());
    }
}
