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

use candle_core::{DType, Tensor};

use crate::error::{PeftError, Result};
use crate::quantized::QuantizedWeight;

/// How a frozen layer's product is computed. An implementation returns `x W^T + b` over the last dimension of
/// `x` with gradients for `x` and for a `bias` that is being trained (BitFit), never for `weight`.
pub trait FrozenProduct: Debug + Send + Sync {
    /// `x W^T + b` for `x` `[.., in]`, `weight` `[out, in]` and `bias` `[out]`.
    fn affine(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor>;

    /// `x W^T + b` for a weight kept quantized. The default is the reference: the whole weight dequantized for
    /// the call, then [`FrozenProduct::affine`]. A kernel that walks the weight block of rows by block of
    /// rows (never holding all of it in f32) overrides it.
    fn affine_quantized(
        &self,
        x: &Tensor,
        weight: &QuantizedWeight,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.affine(x, &weight.dequantize()?, bias)
    }

    /// `dy W` for `dy` `[.., out]`: the input gradient of [`FrozenProduct::affine`], for callers that run a
    /// frozen layer's backward themselves (a block recomputed in the backward, [`crate::recompute`]). It must
    /// equal what the product's own backward gives. The default is candle's matmul on an f32 copy of the
    /// weight, which is [`CandleProduct`]'s backward.
    fn input_grad(&self, dy: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let weight = weight.detach().to_dtype(DType::F32)?;
        Ok(dy.broadcast_matmul(&weight)?)
    }

    /// [`FrozenProduct::input_grad`] for a weight kept quantized; the default dequantizes all of it.
    fn input_grad_quantized(&self, dy: &Tensor, weight: &QuantizedWeight) -> Result<Tensor> {
        self.input_grad(dy, &weight.dequantize()?)
    }

    /// `x W^T + b + scale * x A^T B^T` (LoRA's adapted projection, `a` `[r, in]`, `b` `[out, r]`) as one op
    /// whose backward gives `x`, `a` and `b` their gradients, where the product has such an op for these
    /// arguments; `None` where it does not, and the caller composes [`FrozenProduct::affine`] and the update.
    /// The default has none.
    fn affine_low_rank(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        (a, b, scale): (&Tensor, &Tensor, f64),
    ) -> Result<Option<Tensor>> {
        let _ = (x, weight, bias, a, b, scale);
        Ok(None)
    }

    /// A short name for reports (`peft bench` prints it).
    fn name(&self) -> String;
}

/// The reference product: candle's matmul on the detached weight (a detached bias, unless it is trained).
#[derive(Debug, Clone, Copy, Default)]
pub struct CandleProduct;

impl FrozenProduct for CandleProduct {
    fn affine(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        // A bf16 weight (mixed precision) multiplies the input rounded to bf16, accumulating in the input's
        // f32, which is what the bf16 kernels compute.
        let (x, weight) = if weight.dtype() == DType::BF16 && x.dtype() == DType::F32 {
            let rounded = x.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
            (rounded, weight.to_dtype(DType::F32)?)
        } else {
            (x.clone(), weight.detach())
        };
        let y = x.broadcast_matmul(&weight.t()?)?;
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

/// How a frozen layer holds its weight.
#[derive(Debug, Clone)]
enum Stored {
    /// An f32 (or trained) tensor.
    Dense(Tensor),
    /// Blocks of a GGUF format, never dequantized whole while the layer runs.
    Quantized(QuantizedWeight),
}

/// A frozen dense layer, weight stored `[out, in]` (GPT-2's Conv1D weights are transposed at load time), as an
/// f32 tensor or kept quantized ([`FrozenLinear::quantized`]).
#[derive(Debug, Clone)]
pub struct FrozenLinear {
    weight: Stored,
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
            weight: Stored::Dense(keep(weight)),
            bias: bias.map(keep),
            product,
        }
    }

    /// A layer whose weight stays in its block format: the product dequantizes it block of rows by block of
    /// rows on each call. Such a layer is never trained and refuses merges ([`FrozenLinear::add_to_weight`]).
    pub fn quantized(
        weight: QuantizedWeight,
        bias: Option<Tensor>,
        product: &'static dyn FrozenProduct,
    ) -> Self {
        FrozenLinear {
            weight: Stored::Quantized(weight),
            bias: bias.map(|b| b.detach()),
            product,
        }
    }

    /// A layer of other weights computed by the same product (a merged weight, a few rows of a head).
    pub fn with_weights(&self, weight: Tensor, bias: Option<Tensor>) -> Self {
        FrozenLinear::new(weight, bias, self.product)
    }

    /// The layer restricted to the output rows `ids` (the label words of a verbalizer); a quantized layer
    /// gives a dense one of those rows.
    pub fn rows(&self, ids: &[u32]) -> Result<Self> {
        let weight = match &self.weight {
            Stored::Dense(w) => w.index_select(&Tensor::new(ids, w.device())?, 0)?,
            Stored::Quantized(q) => q.select_rows(ids)?,
        };
        let bias = match &self.bias {
            Some(b) => Some(b.index_select(&Tensor::new(ids, b.device())?, 0)?),
            None => None,
        };
        Ok(self.with_weights(weight, bias))
    }

    /// The product this layer runs on.
    pub fn product(&self) -> &'static dyn FrozenProduct {
        self.product
    }

    /// Whether the weight or bias is trained (full fine-tuning): then the product runs through candle's
    /// differentiable matmul instead of the input-gradient-only op.
    pub fn is_trained(&self) -> bool {
        matches!(&self.weight, Stored::Dense(w) if w.track_op())
            || self.bias.as_ref().is_some_and(Tensor::track_op)
    }

    /// The `[out, in]` weight: the tensor itself for a dense layer (same id, so a gradient store can be asked
    /// about it), a fresh f32 copy of a bf16 one (mixed precision), a fresh dequantized f32 copy of all of it
    /// for a quantized one.
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            Stored::Dense(w) if w.dtype() == DType::BF16 => Ok(w.to_dtype(DType::F32)?),
            Stored::Dense(w) => Ok(w.clone()),
            Stored::Quantized(q) => q.dequantize(),
        }
    }

    /// The weight where it is dense.
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Stored::Dense(w) => Some(w),
            Stored::Quantized(_) => None,
        }
    }

    /// The weight where it is kept quantized.
    pub fn quantized_weight(&self) -> Option<&QuantizedWeight> {
        match &self.weight {
            Stored::Dense(_) => None,
            Stored::Quantized(q) => Some(q),
        }
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match &self.weight {
            Stored::Dense(w) => w.dims2().unwrap_or((0, 0)),
            Stored::Quantized(q) => q.dims(),
        }
    }

    /// The `[out]` bias, where the checkpoint has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Adds `delta` (`[out, in]`) to the weight: how a merged adapter's update enters the frozen layer.
    /// A quantized layer refuses: adding the update and requantizing would round most of it away (QLoRA's
    /// users meet this as HF PEFT issue 2501), so merging needs the f32 base.
    pub fn add_to_weight(&mut self, delta: &Tensor) -> Result<()> {
        let weight = match &self.weight {
            Stored::Dense(w) => w,
            Stored::Quantized(q) => return Err(quantized_merge_refused(q)),
        };
        if delta.dims() != weight.dims() {
            return Err(crate::PeftError::ShapeMismatch {
                what: "weight delta".into(),
                expected_from: "the frozen layer".into(),
                expected: weight.dims().to_vec(),
                got_from: "the adapter".into(),
                got: delta.dims().to_vec(),
            });
        }
        self.weight = Stored::Dense((weight + delta.to_dtype(weight.dtype())?.detach())?);
        Ok(())
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.dims().1
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.dims().0
    }

    /// `x W^T + b` over the last dimension of `x`; the frozen bias is added inside the product, so that no
    /// gradient is kept for it.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with_bias(x, self.bias.as_ref())
    }

    /// `x W^T + b + scale * x A^T B^T`, LoRA's update inside the frozen product as one op, where the product
    /// has one ([`FrozenProduct::affine_low_rank`]) and the weight is dense and frozen; `None` otherwise (the
    /// caller composes the product and the update).
    pub fn forward_low_rank(
        &self,
        x: &Tensor,
        (a, b, scale): (&Tensor, &Tensor, f64),
    ) -> Result<Option<Tensor>> {
        match &self.weight {
            Stored::Dense(w) if !w.track_op() => {
                self.product
                    .affine_low_rank(x, w, self.bias.as_ref(), (a, b, scale))
            }
            _ => Ok(None),
        }
    }

    /// `dy W` for `dy` `[.., out]`: the gradient of this layer's input, as its product's backward computes it
    /// (never a gradient of the weight or bias).
    pub fn input_grad(&self, dy: &Tensor) -> Result<Tensor> {
        match &self.weight {
            Stored::Quantized(q) => self.product.input_grad_quantized(dy, q),
            Stored::Dense(w) => self.product.input_grad(dy, w),
        }
    }

    /// `x W^T` plus a replacement bias instead of the frozen one (BitFit passes its trainable bias here).
    pub fn forward_with_bias(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let weight = match &self.weight {
            Stored::Quantized(q) => return self.product.affine_quantized(x, q, bias),
            Stored::Dense(w) if !w.track_op() => return self.product.affine(x, w, bias),
            Stored::Dense(w) => w,
        };
        let y = x.broadcast_matmul(&weight.t()?)?;
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// The error of a merge into a quantized layer: what was refused, why, and what to do.
pub fn quantized_merge_refused(weight: &QuantizedWeight) -> PeftError {
    PeftError::Unsupported(format!(
        "cannot merge an adapter into a base kept quantized ({} weights): adding the update and requantizing \
         would round most of it away. Load the base in f32 (drop `quantized = true` / `--keep-quantized`) to \
         merge, or keep the adapter unmerged",
        weight.type_name()
    ))
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
            grads.get(&lin.weight().unwrap()).is_none(),
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
