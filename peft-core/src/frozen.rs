//! Frozen projections: `y = x W^T + b` where `W` never receives a gradient.
//!
//! candle's matmul backward computes the weight gradient even when the weight is a plain tensor, and the
//! gradient store then holds one such tensor per frozen weight. [`FrozenLinear`] runs the product through a
//! custom op of ours whose backward returns only the input gradient `dy W`. It is also the single place where a
//! faster GEMM can plug in.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use peft_core::frozen::FrozenLinear;
//! let dev = Device::Cpu;
//! let w = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap(); // [out=3, in=2]
//! let lin = FrozenLinear::new(w.clone(), None);
//! let x = Var::new(&[[1f32, 1.]], &dev).unwrap();
//! let y = lin.forward(x.as_tensor()).unwrap();
//! assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![3., 7., 11.]]);
//! let grads = y.sum_all().unwrap().backward().unwrap();
//! assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), vec![vec![9., 12.]]);
//! assert!(grads.get(&w).is_none()); // no gradient for the frozen weight
//! ```

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

use crate::error::Result;

/// A frozen dense layer, weight stored `[out, in]` (GPT-2's Conv1D weights are transposed at load time).
#[derive(Debug, Clone)]
pub struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl FrozenLinear {
    /// A layer from a `[out, in]` weight and an optional `[out]` bias. Plain tensors are detached so that they
    /// can never join a gradient graph. A weight that is a candle variable (or computed from one) is kept as it
    /// is and then receives its gradient: that is how full fine-tuning, the baseline every PEFT method is
    /// compared with, trains a model loaded with trainable weights.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        let keep = |t: Tensor| if t.track_op() { t } else { t.detach() };
        FrozenLinear {
            weight: keep(weight),
            bias: bias.map(keep),
        }
    }

    /// Whether the weight or bias is trained (full fine-tuning): then the product runs through candle's
    /// differentiable matmul instead of the input-gradient-only op.
    pub fn is_trained(&self) -> bool {
        self.weight.track_op() || self.bias.as_ref().is_some_and(Tensor::track_op)
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `[out]` bias, where the checkpoint has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Adds `delta` (`[out, in]`) to the weight: how a merged adapter's update enters the frozen layer.
    pub fn add_to_weight(&mut self, delta: &Tensor) -> Result<()> {
        if delta.dims() != self.weight.dims() {
            return Err(crate::PeftError::ShapeMismatch {
                what: "weight delta".into(),
                expected_from: "the frozen layer".into(),
                expected: self.weight.dims().to_vec(),
                got_from: "the adapter".into(),
                got: delta.dims().to_vec(),
            });
        }
        self.weight = (&self.weight + delta.to_dtype(self.weight.dtype())?.detach())?;
        Ok(())
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims2().map(|d| d.1).unwrap_or(0)
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims2().map(|d| d.0).unwrap_or(0)
    }

    /// `x W^T + b` over the last dimension of `x`; the frozen bias is added inside the op, so that no
    /// gradient is kept for it.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.is_trained() {
            return self.forward_with_bias(x, self.bias.as_ref());
        }
        frozen_affine(x, &self.weight, self.bias.as_ref())
    }

    /// `x W^T` plus a replacement bias instead of the frozen one (BitFit passes its trainable bias here).
    pub fn forward_with_bias(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let y = if self.weight.track_op() {
            x.broadcast_matmul(&self.weight.t()?)?
        } else {
            frozen_affine(x, &self.weight, None)?
        };
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// `x W^T` over the last dimension of `x`, with a backward that yields the gradient of `x` only.
pub fn frozen_matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    frozen_affine(x, weight, None)
}

/// `x W^T + b` with frozen `W` and `b`: one op whose backward yields the gradient of `x` only.
fn frozen_affine(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let op = FrozenMatmul {
        weight: weight.detach(),
        bias: bias.map(|b| b.detach()),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// The custom op behind [`frozen_matmul`]; holds the `[out, in]` weight and an optional `[out]` bias.
struct FrozenMatmul {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let k = *dims
            .last()
            .ok_or_else(|| candle_core::Error::Msg("frozen matmul of a scalar".into()))?;
        let (n, wk) = self.weight.dims2()?;
        if wk != k {
            candle_core::bail!("frozen matmul: input has {k} features, weight expects {wk} (weight is [{n}, {wk}])");
        }
        if !layout.is_contiguous() {
            candle_core::bail!("frozen matmul: input must be contiguous");
        }
        let m = layout.shape().elem_count() / k.max(1);
        let lhs_layout = Layout::contiguous_with_offset((m, k), layout.start_offset());
        let w_t = self.weight.t()?;
        let (w_storage, w_layout) = w_t.storage_and_layout();
        let w_cpu = match &*w_storage {
            Storage::Cpu(s) => s,
            _ => candle_core::bail!("frozen matmul: the weight is not on the CPU"),
        };
        let mut out = storage.matmul(w_cpu, (1, m, n, k), &lhs_layout, w_layout)?;
        if let Some(bias) = &self.bias {
            let bias = bias.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            match &mut out {
                CpuStorage::F32(values) => {
                    for row in values.chunks_mut(n) {
                        row.iter_mut().zip(&bias).for_each(|(v, b)| *v += b);
                    }
                }
                _ => candle_core::bail!("frozen matmul: a frozen bias needs f32 tensors"),
            }
        }
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = n;
        Ok((out, Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dims = grad_res.dims();
        let n = dims[dims.len() - 1];
        let (_, k) = self.weight.dims2()?;
        let m = grad_res.elem_count() / n.max(1);
        let grad = grad_res
            .contiguous()?
            .reshape((m, n))?
            .matmul(&self.weight)?;
        let mut in_dims = dims.to_vec();
        *in_dims.last_mut().expect("rank >= 1") = k;
        Ok(Some(grad.reshape(in_dims)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_plain_matmul_and_gives_input_gradient_only() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (5, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., 5, &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 4, 3), &dev).unwrap()).unwrap();
        let lin = FrozenLinear::new(w.clone(), Some(b.clone()));
        let y = lin.forward(x.as_tensor()).unwrap();
        let reference = x
            .as_tensor()
            .broadcast_matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let diff = crate::compare::max_abs_diff(&y.clone(), &reference).unwrap();
        assert!(diff < 1e-5, "forward differs by {diff}");

        let gy = Tensor::randn(0f32, 1., (2, 4, 5), &dev).unwrap();
        let grads = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        let expected = gy.broadcast_matmul(&w).unwrap();
        let diff = crate::compare::max_abs_diff(gx, &expected).unwrap();
        assert!(diff < 1e-5, "input gradient differs by {diff}");
        assert!(grads.get(&w).is_none(), "frozen weight received a gradient");
        assert!(grads.get(&b).is_none(), "frozen bias received a gradient");
    }
}
