//! A projection's output split into attention heads, `[batch, seq, heads * head_dim]` -> `[batch, heads, seq,
//! head_dim]`, and optionally rotated (RoPE) in the same pass: one op with a backward of its own.
//!
//! Composed, the split is a reshape, a transpose and a copy, and RoPE one more op: four graph nodes, and
//! candle's backward gives each node's input a gradient of its own, a zero-filled tensor of the activation's
//! size with the incoming gradient added into it (strided, for the transpose). On SmolLM2's shape that was 8 of
//! each layer's 27 tracked nodes. Here the split reads its input where it lies (a narrowed view, as GPT-2's
//! fused `c_attn` output gives, is not copied first) and its backward writes the input's gradient in one pass.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! // One row, two positions, two heads of dimension 2: [t0: h0 h1, t1: h0 h1] -> [h0: t0 t1, h1: t0 t1].
//! let x = Tensor::new(&[[[1f32, 2., 3., 4.], [5., 6., 7., 8.]]], &dev).unwrap();
//! let heads = peft_kernels::split_heads(&x, 2, 2).unwrap();
//! assert_eq!(heads.dims(), &[1, 2, 2, 2]);
//! assert_eq!(heads.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1., 2., 5., 6., 3., 4., 7., 8.]);
//! ```

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu;
use super::rotary::{check_tables, rotate_row, table_offset};
use peft_core::Result;

/// `x` `[batch, seq, heads * head_dim]` -> `[batch, heads, seq, head_dim]`, contiguous. One fused op on f32 CPU
/// tensors whose last dimension is contiguous; elsewhere reshape, transpose and copy.
pub fn split_heads(x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    split(x, heads, head_dim, None)
}

/// [`split_heads`], then [`crate::rotary`] by the tables `cos`, `sin` `[1 or batch, 1, seq, head_dim]`, in one
/// pass: the queries and keys of LLaMA-family decoders.
pub fn split_heads_rotary(
    x: &Tensor,
    heads: usize,
    head_dim: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    split(x, heads, head_dim, Some((cos, sin)))
}

fn split(
    x: &Tensor,
    heads: usize,
    head_dim: usize,
    rotation: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let (batch, seq, width) = x.dims3()?;
    if heads * head_dim != width {
        return Err(peft_core::PeftError::Unsupported(format!(
            "cannot split {width} values per position into {heads} heads of {head_dim}"
        )));
    }
    if let Some((cos, sin)) = rotation {
        check_tables(cos, sin, (batch, seq, head_dim), x.dims())?;
    }
    let covered = cpu::covers(x) && rotation.is_none_or(|(c, s)| cpu::covers(c) && cpu::covers(s));
    if !covered {
        let split = x
            .reshape((batch, seq, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        return match rotation {
            Some((cos, sin)) => crate::composed::rotary(&split, cos, sin),
            None => Ok(split),
        };
    }
    // The op reads rows of `head_dim` where they lie; only a last dimension with gaps is copied first.
    let x = if x.stride()[2] == 1 {
        x.clone()
    } else {
        x.contiguous()?
    };
    let rotation = match rotation {
        Some((cos, sin)) => Some((cos.detach().contiguous()?, sin.detach().contiguous()?)),
        None => None,
    };
    Ok(x.apply_op1(SplitHeads {
        heads,
        head_dim,
        rotation,
    })?)
}

/// The op: the head count and size, and the rotary tables when it rotates.
struct SplitHeads {
    heads: usize,
    head_dim: usize,
    rotation: Option<(Tensor, Tensor)>,
}

impl SplitHeads {
    /// Runs `f(row, tables)` with the tables' values (`None` without rotation) and the tables' row count.
    fn with_tables<R>(
        &self,
        f: impl FnOnce(Option<(&[f32], &[f32], usize)>) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        match &self.rotation {
            None => f(None),
            Some((cos, sin)) => {
                let rows = cos.dim(0)?;
                cpu::with_values(cos, |c| cpu::with_values(sin, |s| f(Some((c, s, rows)))))
            }
        }
    }
}

impl CustomOp1 for SplitHeads {
    fn name(&self) -> &'static str {
        "split-heads"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("split-heads: expected f32 values");
        };
        let (batch, seq, _) = layout.shape().dims3()?;
        let (heads, dim) = (self.heads, self.head_dim);
        let (stride, start) = (layout.stride(), layout.start_offset());
        if stride[2] != 1 {
            candle_core::bail!("split-heads: the last dimension must be contiguous");
        }
        let mut out = vec![0f32; batch * heads * seq * dim];
        self.with_tables(|tables| {
            // One task per (row, head): `seq` output rows of `head_dim`, each read from its position.
            out.par_chunks_mut(seq * dim)
                .enumerate()
                .for_each(|(task, block)| {
                    let (b, h) = (task / heads, task % heads);
                    for (t, y) in block.chunks_exact_mut(dim).enumerate() {
                        let at = start + b * stride[0] + t * stride[1] + h * dim;
                        let x = &values[at..at + dim];
                        match tables {
                            None => y.copy_from_slice(x),
                            Some((c, s, rows)) => {
                                let o = table_offset(rows, b, t, seq, dim);
                                rotate_row(y, x, &c[o..o + dim], &s[o..o + dim], false);
                            }
                        }
                    }
                });
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((batch, heads, seq, dim))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (batch, seq, width) = arg.dims3()?;
        let (heads, dim) = (self.heads, self.head_dim);
        let mut dx = vec![0f32; batch * seq * width];
        cpu::with_values(grad_res, |dy| {
            self.with_tables(|tables| {
                // One task per position: its `heads` slices of the gradient, each from its head's row.
                dx.par_chunks_mut(width).enumerate().for_each(|(row, out)| {
                    let (b, t) = (row / seq, row % seq);
                    for (h, y) in out.chunks_exact_mut(dim).enumerate() {
                        let at = ((b * heads + h) * seq + t) * dim;
                        let g = &dy[at..at + dim];
                        match tables {
                            None => y.copy_from_slice(g),
                            Some((c, s, rows)) => {
                                let o = table_offset(rows, b, t, seq, dim);
                                rotate_row(y, g, &c[o..o + dim], &s[o..o + dim], true);
                            }
                        }
                    }
                });
                Ok(())
            })
        })?;
        Ok(Some(cpu::tensor(dx, &[batch, seq, width])?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotary::tests::seeded;
    use candle_core::{DType, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        peft_core::compare::max_abs_diff(a, b).unwrap()
    }

    /// The composed split (and rotation) the op replaces.
    fn reference(
        x: &Tensor,
        heads: usize,
        dim: usize,
        tables: Option<(&Tensor, &Tensor)>,
    ) -> Tensor {
        let (b, t, _) = x.dims3().unwrap();
        let split = x
            .reshape((b, t, heads, dim))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        match tables {
            Some((c, s)) => crate::composed::rotary(&split, c, s).unwrap(),
            None => split,
        }
    }

    /// Forward and input gradient of the op against the composed form, for `x` built from the variable by
    /// `view` (identity, or a narrowed slice of a wider tensor).
    fn check(
        input: &Tensor,
        view: impl Fn(&Tensor) -> Tensor,
        heads: usize,
        dim: usize,
        tables: Option<(&Tensor, &Tensor)>,
    ) {
        let var = Var::from_tensor(input).unwrap();
        let x = view(var.as_tensor());
        let fused = split(&x, heads, dim, tables).unwrap();
        let composed = reference(&x, heads, dim, tables);
        assert_eq!(fused.dims(), composed.dims());
        assert!(fused.is_contiguous());
        assert!(max_diff(&fused, &composed) < 1e-6);
        // A weighting, so that each output element's gradient differs.
        let w = seeded(fused.dims(), 9);
        let grad = |y: Tensor| {
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(var.as_tensor()).unwrap().clone()
        };
        let (a, b) = (grad(fused), grad(composed));
        assert!(
            max_diff(&a, &b) < 1e-6,
            "gradient differs by {}",
            max_diff(&a, &b)
        );
    }

    #[test]
    fn split_and_its_gradient_equal_reshape_transpose_copy() {
        check(&seeded(&[3, 5, 12], 1), |x| x.clone(), 4, 3, None);
        // One head (the whole row), and one position.
        check(&seeded(&[2, 1, 8], 2), |x| x.clone(), 1, 8, None);
    }

    #[test]
    fn narrowed_and_transposed_inputs_split_alike() {
        // GPT-2's keys: the middle third of the fused q/k/v projection's output.
        check(
            &seeded(&[2, 5, 36], 3),
            |x| x.narrow(2, 12, 12).unwrap(),
            3,
            4,
            None,
        );
        // A view whose last dimension has gaps is copied first, with the same result.
        check(
            &seeded(&[2, 12, 5], 4),
            |x| x.transpose(1, 2).unwrap(),
            3,
            4,
            None,
        );
    }

    #[test]
    fn rotated_split_and_its_gradient_equal_split_then_rotary() {
        // Tables shared by every row, and one table per row (left-padded batches).
        for rows in [1, 3] {
            let (cos, sin) = (seeded(&[rows, 1, 5, 8], 5), seeded(&[rows, 1, 5, 8], 6));
            check(
                &seeded(&[3, 5, 16], 7),
                |x| x.clone(),
                2,
                8,
                Some((&cos, &sin)),
            );
            check(
                &seeded(&[3, 5, 48], 8),
                |x| x.narrow(2, 16, 16).unwrap(),
                2,
                8,
                Some((&cos, &sin)),
            );
        }
    }

    #[test]
    fn off_f32_the_composed_form_runs() {
        let x = seeded(&[2, 3, 8], 1).to_dtype(DType::F64).unwrap();
        let y = split_heads(&x, 2, 4).unwrap();
        let r = reference(&x.to_dtype(DType::F32).unwrap(), 2, 4, None);
        assert_eq!(y.dtype(), DType::F64);
        assert!(max_diff(&y.to_dtype(DType::F32).unwrap(), &r) < 1e-6);
    }

    #[test]
    fn shapes_that_do_not_split_are_refused() {
        let x = seeded(&[2, 4, 12], 1);
        let err = split_heads(&x, 5, 2).unwrap_err().to_string();
        assert!(
            err.contains("12 values per position into 5 heads of 2"),
            "{err}"
        );
        let bad = seeded(&[1, 1, 3, 6], 2);
        assert!(split_heads_rotary(&x, 2, 6, &bad, &bad).is_err());
    }
}
