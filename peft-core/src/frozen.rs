//! The frozen-projection contract: `y = x W^T + b` where `W` never receives a gradient.
//!
//! candle's matmul backward computes the weight gradient even when the weight is a plain tensor, and the
//! gradient store then holds one such tensor per frozen weight. A [`FrozenLinear`] therefore runs its product
//! through a [`FrozenProduct`]: the single place where a kernel plugs in. `peft-kernels` provides the fast
//! one (one op whose backward returns only the input gradient); [`CandleProduct`] is the reference made of
//! candle's ops on the detached weight, which computes the same values and gradients more slowly. The models
//! choose the product when they load, so that this crate carries no kernel.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use peft_core::frozen::{CandleProduct, FrozenLinear};
//! let dev = Device::Cpu;
//! let w = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap(); // [out=3, in=2]
//! let lin = FrozenLinear::new(w.clone(), None, &CandleProduct);
//! let x = Var::new(&[[1f32, 1.]], &dev).unwrap();
//! let y = lin.forward(x.as_tensor()).unwrap();
//! assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![3., 7., 11.]]);
//! let grads = y.sum_all().unwrap().backward().unwrap();
//! assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), vec![vec![9., 12.]]);
//! assert!(grads.get(&w).is_none()); // no gradient for the frozen weight
//! ```

use std::fmt::Debug;

use candle_core::Tensor;

use crate::error::Result;

/// How a frozen layer's product is computed. An implementation returns `x W^T + b` over the last dimension of
/// `x` with gradients for `x` and for a `bias` that is being trained (BitFit), never for `weight`.
pub trait FrozenProduct: Debug + Send + Sync {
    /// `x W^T + b` for `x` `[.., in]`, `weight` `[out, in]` and `bias` `[out]`.
    fn affine(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor>;

    /// A short name for reports (`peft bench` prints it).
    fn name(&self) -> String;
}

/// The reference product: candle's matmul on the detached weight (a detached bias, unless it is trained).
#[derive(Debug, Clone, Copy, Default)]
pub struct CandleProduct;

impl FrozenProduct for CandleProduct {
    fn affine(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let y = x.broadcast_matmul(&weight.detach().t()?)?;
        Ok(match bias {
            Some(b) if b.track_op() => y.broadcast_add(b)?,
            Some(b) => y.broadcast_add(&b.detach())?,
            None => y,
        })
    }

    fn name(&self) -> String {
        "candle".into()
    }
}

/// A frozen dense layer, weight stored `[out, in]` (GPT-2's Conv1D weights are transposed at load time).
#[derive(Debug, Clone)]
pub struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    product: &'static dyn FrozenProduct,
}

impl FrozenLinear {
    /// A layer from a `[out, in]` weight and an optional `[out]` bias, computed by `product`. Plain tensors are
    /// detached so that they can never join a gradient graph. A weight that is a candle variable (or computed
    /// from one) is kept as it is and then receives its gradient: that is how full fine-tuning, the baseline
    /// every PEFT method is compared with, trains a model loaded with trainable weights.
    pub fn new(weight: Tensor, bias: Option<Tensor>, product: &'static dyn FrozenProduct) -> Self {
        let keep = |t: Tensor| if t.track_op() { t } else { t.detach() };
        FrozenLinear {
            weight: keep(weight),
            bias: bias.map(keep),
            product,
        }
    }

    /// A layer of other weights computed by the same product (a merged weight, a few rows of a head).
    pub fn with_weights(&self, weight: Tensor, bias: Option<Tensor>) -> Self {
        FrozenLinear::new(weight, bias, self.product)
    }

    /// The layer restricted to the output rows `ids` (the label words of a verbalizer).
    pub fn rows(&self, ids: &[u32]) -> Result<Self> {
        let ids = Tensor::new(ids, self.weight.device())?;
        Ok(self.with_weights(
            self.weight.index_select(&ids, 0)?,
            self.bias
                .as_ref()
                .map(|b| b.index_select(&ids, 0))
                .transpose()?,
        ))
    }

    /// The product this layer runs on.
    pub fn product(&self) -> &'static dyn FrozenProduct {
        self.product
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

    /// `x W^T + b` over the last dimension of `x`; the frozen bias is added inside the product, so that no
    /// gradient is kept for it.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.is_trained() {
            return self.forward_with_bias(x, self.bias.as_ref());
        }
        self.product.affine(x, &self.weight, self.bias.as_ref())
    }

    /// `x W^T` plus a replacement bias instead of the frozen one (BitFit passes its trainable bias here).
    pub fn forward_with_bias(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if !self.weight.track_op() {
            return self.product.affine(x, &self.weight, bias);
        }
        let y = x.broadcast_matmul(&self.weight.t()?)?;
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn the_reference_product_gives_input_and_trained_bias_gradients_only() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (5, 3), &dev).unwrap();
        let frozen_b = Tensor::randn(0f32, 1., 5, &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 4, 3), &dev).unwrap()).unwrap();
        let lin = FrozenLinear::new(w.clone(), Some(frozen_b.clone()), &CandleProduct);
        let y = lin.forward(x.as_tensor()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_some());
        assert!(
            grads.get(lin.weight()).is_none(),
            "frozen weight received a gradient"
        );
        assert!(
            grads.get(lin.bias().unwrap()).is_none(),
            "frozen bias received a gradient"
        );

        let b =
            Var::from_tensor(&Tensor::zeros(5, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let y = lin
            .forward_with_bias(x.as_tensor(), Some(b.as_tensor()))
            .unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let db = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(db, vec![8f32; 5], "each bias entry sums over the 8 rows");
    }

    #[test]
    fn rows_keep_the_product_and_select_output_rows() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &dev).unwrap();
        let lin = FrozenLinear::new(w, None, &CandleProduct);
        let two = lin.rows(&[2, 0]).unwrap();
        let y = two
            .forward(&Tensor::new(&[[2f32, 3.]], &dev).unwrap())
            .unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![5., 2.]]);
        assert_eq!(two.product().name(), "candle");
    }
}
