//! A frozen projection with LoRA's update inside, `x W^T + b + scale * x A^T B^T`, as one op.
//!
//! Composed, an adapted projection is three graph nodes: the frozen product, the low-rank update and their sum.
//! candle's backward gives each node's input a zero-filled gradient of its own and adds into it, so the sum
//! costs two output-sized gradients and `x` receives two contributions, one from each product. As one op the
//! backward writes `dx = dy W + scale * (dy B) A` into one buffer (the low-rank part added onto the frozen
//! product's), and the forward adds the update onto the product's output instead of into a third tensor.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! let x = Tensor::new(&[[1f32, 2.]], &dev).unwrap(); // [rows=1, in=2]
//! let w = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &dev).unwrap(); // [out=3, in=2]
//! let a = Tensor::new(&[[1f32, 1.]], &dev).unwrap(); // [r=1, in=2]
//! let b = Tensor::new(&[[1f32], [-2.], [3.]], &dev).unwrap(); // [out=3, r=1]
//! let y = peft_kernels::frozen_low_rank(&x, &w, None, &a, &b, 0.5).unwrap().expect("f32 on the CPU");
//! // x W^T = [1, 2, 3]; 0.5 * x A^T B^T = [1.5, -3, 4.5]
//! assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![2.5, -1., 7.5]]);
//! ```

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::cpu;
use super::frozen::{affine_shape, kernel_weight, OpWeight};
use super::low_rank::{check, LowRank};
use peft_core::Result;

/// `x W^T + b + scale * x A^T B^T` over the last dimension of `x`, with `weight` `[out, in]` frozen (f32 or
/// bf16), `bias` `[out]` frozen, `a` `[r, in]` and `b` `[out, r]`; the backward yields the gradients of `x`,
/// `a` and `b` where each is trained. `None` where the kernels do not cover the arguments (anything but f32
/// activations and adapter factors on the CPU, a weight that is neither f32 nor bf16, a trained weight or
/// bias): the caller composes [`crate::frozen::frozen_affine`] and [`crate::low_rank`] instead.
pub fn frozen_low_rank(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Option<Tensor>> {
    let covered = cpu::covers(a)
        && cpu::covers(b)
        && !weight.track_op()
        && bias.is_none_or(|b| cpu::covers(b) && !b.track_op());
    let Some(op_weight) = kernel_weight(x, weight).filter(|_| covered) else {
        return Ok(None);
    };
    let low = LowRank::new(check(x, a, b)?, scale, b);
    if op_weight.dims()?.0 != b.dim(0)? {
        return Err(peft_core::PeftError::Unsupported(format!(
            "frozen_low_rank: the weight {:?} and b {:?} give different output widths",
            weight.dims(),
            b.dims()
        )));
    }
    let op = FrozenLowRank {
        weight: op_weight,
        bias: bias.map(Tensor::detach),
        low,
    };
    Ok(Some(x.contiguous()?.apply_op3(
        &a.contiguous()?,
        &b.contiguous()?,
        op,
    )?))
}

/// The op: the frozen weight and bias it holds, and the update's geometry and kept intermediate.
struct FrozenLowRank {
    weight: OpWeight,
    bias: Option<Tensor>,
    low: LowRank,
}

impl CustomOp3 for FrozenLowRank {
    fn name(&self) -> &'static str {
        "frozen-low-rank"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, out_dims) = affine_shape(l1, &self.weight)?;
        let (x, a, b) = (
            cpu::slice(s1, l1)?,
            cpu::slice(s2, l2)?,
            cpu::slice(s3, l3)?,
        );
        let mut y = match &self.bias {
            Some(bias) => cpu::with_values(bias, |v| self.weight.affine_rows(x, Some(v), m))?,
            None => self.weight.affine_rows(x, None, m)?,
        };
        self.low.add_forward(x, a, b, &mut y)?;
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x_arg: &Tensor,
        a_arg: &Tensor,
        b_arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The frozen product's part of dx first; the low-rank part is added onto it.
        let frozen_dx = if x_arg.track_op() {
            let k = self.weight.dims()?.1;
            let m = x_arg.elem_count() / k.max(1);
            let mut dx = vec![0f32; m * k];
            cpu::with_values(grad_res, |dy| {
                self.weight.input_grad_into(dy, &mut dx, m, false)
            })?;
            Some(dx)
        } else {
            None
        };
        self.low.gradients(x_arg, a_arg, b_arg, grad_res, frozen_dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotary::tests::seeded;
    use candle_core::{DType, Var};

    /// Forward and the gradients of x, A and B of the fused op against the frozen product plus the low-rank
    /// op, composed by candle, for a weight in `dtype`.
    fn check_against_composed(dtype: DType, with_bias: bool) {
        let x = Var::from_tensor(&seeded(&[2, 5, 12], 1)).unwrap();
        let w = seeded(&[7, 12], 2).to_dtype(dtype).unwrap();
        let bias = with_bias.then(|| seeded(&[7], 3));
        let a = Var::from_tensor(&seeded(&[3, 12], 4)).unwrap();
        let b = Var::from_tensor(&seeded(&[7, 3], 5)).unwrap();
        let weighting = seeded(&[2, 5, 7], 6);
        let run = |fused: bool| {
            let (xt, at, bt) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
            let y = if fused {
                frozen_low_rank(xt, &w, bias.as_ref(), at, bt, 0.75)
                    .unwrap()
                    .expect("covered")
            } else {
                let base = crate::frozen::frozen_affine(xt, &w, bias.as_ref()).unwrap();
                (base + crate::low_rank(xt, at, bt, 0.75).unwrap()).unwrap()
            };
            let g = (&y * &weighting)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grads = [&x, &a, &b].map(|v| g.get(v.as_tensor()).unwrap().clone());
            (y, grads)
        };
        let ((y1, g1), (y2, g2)) = (run(true), run(false));
        let diff = |p: &Tensor, q: &Tensor| peft_core::compare::max_abs_diff(p, q).unwrap();
        assert!(
            diff(&y1, &y2) < 1e-5,
            "{dtype:?}: forward differs by {}",
            diff(&y1, &y2)
        );
        for (name, (p, q)) in ["x", "a", "b"].iter().zip(g1.iter().zip(g2.iter())) {
            assert!(
                diff(p, q) < 1e-4,
                "{dtype:?}: gradient of {name} differs by {}",
                diff(p, q)
            );
        }
    }

    #[test]
    fn fused_projection_and_gradients_equal_product_plus_update() {
        check_against_composed(DType::F32, false);
        check_against_composed(DType::F32, true);
        check_against_composed(DType::BF16, false);
    }

    #[test]
    fn an_untracked_input_gets_no_gradient_but_the_factors_do() {
        let x = seeded(&[4, 6], 1);
        let w = seeded(&[5, 6], 2);
        let (a, b) = (
            Var::from_tensor(&seeded(&[2, 6], 3)).unwrap(),
            Var::from_tensor(&seeded(&[5, 2], 4)).unwrap(),
        );
        let y = frozen_low_rank(&x, &w, None, a.as_tensor(), b.as_tensor(), 2.0)
            .unwrap()
            .unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none());
        assert!(g.get(a.as_tensor()).is_some() && g.get(b.as_tensor()).is_some());
    }

    #[test]
    fn uncovered_arguments_are_left_to_the_caller() {
        let x = seeded(&[4, 6], 1);
        let (a, b) = (seeded(&[2, 6], 3), seeded(&[5, 2], 4));
        // A trained weight (full fine-tuning) and an f64 input.
        let trained = Var::from_tensor(&seeded(&[5, 6], 2)).unwrap();
        assert!(frozen_low_rank(&x, trained.as_tensor(), None, &a, &b, 1.0)
            .unwrap()
            .is_none());
        let x64 = x.to_dtype(DType::F64).unwrap();
        let w64 = seeded(&[5, 6], 2).to_dtype(DType::F64).unwrap();
        assert!(frozen_low_rank(&x64, &w64, None, &a, &b, 1.0)
            .unwrap()
            .is_none());
        // Mismatched widths are an error, not a silent fallback.
        let wide = seeded(&[6, 6], 2);
        assert!(frozen_low_rank(&x, &wide, None, &a, &b, 1.0).is_err());
    }
}
