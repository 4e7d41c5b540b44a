//! The normalisations and the softmax composed from candle's differentiable primitives: the reference that the
//! fused ops of this crate are tested against, and what they run on a device or dtype they do not cover.
//!
//! candle's fused `ops::softmax_last_dim`, `rms_norm`, `layer_norm` (and `candle_nn::LayerNorm` / `RmsNorm`
//! on contiguous input) have no backward: in a trained path they cut the gradient without an error. These are
//! built from differentiable primitives; the finite-difference tests prove the gradient reaches the inputs.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let x = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
//! let p = peft_kernels::composed::softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
//! assert!((p[0].iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! ```

use candle_core::{Tensor, D};

use peft_core::Result;

/// Softmax over the last dimension, shifted by the row maximum for stability.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// RMS norm: `x / sqrt(mean(x^2) + eps) * weight` (LLaMA).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    Ok(normed.broadcast_mul(weight)?)
}

/// Layer norm: `(x - mean) / sqrt(var + eps) * weight + bias` (GPT-2, BERT).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?;
    Ok(match bias {
        Some(b) => normed.broadcast_add(b)?,
        None => normed,
    })
}

/// `softmax(q k^T * scale + bias) v` as `nn::scaled_dot_product_attention` computes it, from candle's
/// differentiable primitives (key/value heads repeated for their group); returns `[B, T, H * D]`.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (b, heads, t, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let rep = heads / kv_heads.max(1);
    let repeat = |x: &Tensor| -> Result<Tensor> {
        if rep == 1 {
            return Ok(x.clone());
        }
        let (b, kv, s, d) = x.dims4()?;
        Ok(x.unsqueeze(2)?
            .broadcast_as((b, kv, rep, s, d))?
            .reshape((b, kv * rep, s, d))?)
    };
    let (k, v) = (repeat(k)?, repeat(v)?);
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(bias)?;
    let probs = super::composed::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v.contiguous()?)?;
    Ok(out.transpose(1, 2)?.reshape((b, t, heads * d))?)
}

/// Mean cross-entropy `-mean(log_softmax(logits)[i, targets[i]])` of `logits` `[n, classes]`.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let logp = super::composed::log_softmax_last_dim(logits)?;
    let idx = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    let picked = logp.gather(&idx, 1)?;
    Ok((picked.mean_all()? * -1.0)?)
}

/// Rotary position embeddings `x cos + rotate_half(x) sin`, `rotate_half((x1, x2)) = (-x2, x1)` over the last
/// dimension of `x` `[batch, heads, seq, head_dim]`, the tables `[rows, 1, seq, head_dim]` broadcast over the
/// heads (and the batch where `rows` is 1).
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// `n` fixed values of both signs, spread like a standard normal's draws (an unseeded draw made these
    /// tests fail now and then).
    fn fixed(n: usize, phase: f64) -> Vec<f64> {
        (0..n)
            .map(|i| 1.7 * (i as f64 * 1.3 + phase).sin())
            .collect()
    }

    /// Central finite difference of `f` with respect to element `i` of `x`.
    fn numeric_grad(f: &dyn Fn(&Tensor) -> f64, x: &Tensor, i: usize) -> f64 {
        let h = 1e-3f64;
        let v = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let mut plus = v.clone();
        plus[i] += h;
        let mut minus = v;
        minus[i] -= h;
        let p = Tensor::from_vec(plus, x.shape(), x.device()).unwrap();
        let m = Tensor::from_vec(minus, x.shape(), x.device()).unwrap();
        (f(&p) - f(&m)) / (2. * h)
    }

    fn check(op: &dyn Fn(&Tensor) -> Tensor) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::from_vec(fixed(10, 0.4), (2, 5), &dev).unwrap()).unwrap();
        let weights = Tensor::from_vec(fixed(10, 2.1), (2, 5), &dev).unwrap();
        let f = |t: &Tensor| {
            (op(t) * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let loss = (op(x.as_tensor()) * &weights).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads
            .get(x.as_tensor())
            .expect("gradient reaches the input")
            .flatten_all()
            .unwrap();
        let g = g.to_vec1::<f64>().unwrap();
        for (i, analytic) in g.iter().enumerate() {
            let numeric = numeric_grad(&f, x.as_tensor(), i);
            // Central differences err by about h^2 / 6 times the third derivative: relative to the gradient.
            assert!(
                (analytic - numeric).abs() < 1e-5 * (1.0 + analytic.abs()),
                "element {i}: analytic {analytic} vs numeric {numeric}"
            );
        }
    }

    #[test]
    fn softmax_gradient_matches_finite_differences() {
        check(&|t| softmax_last_dim(t).unwrap());
        check(&|t| log_softmax_last_dim(t).unwrap());
    }

    #[test]
    fn norm_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(fixed(5, 0.9), 5, &dev).unwrap();
        let b = Tensor::from_vec(fixed(5, 3.3), 5, &dev).unwrap();
        check(&|t| rms_norm(t, &w, 1e-5).unwrap());
        check(&|t| layer_norm(t, &w, Some(&b), 1e-5).unwrap());
    }

    #[test]
    fn layer_norm_matches_candle_fused_forward() {
        let dev = Device::Cpu;
        let f32s = |n, phase| {
            Tensor::from_vec(fixed(n, phase), n, &dev)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
        };
        let x = f32s(24, 0.2).reshape((3, 8)).unwrap();
        let w = f32s(8, 1.1);
        let b = f32s(8, 2.7);
        let ours = layer_norm(&x, &w, Some(&b), 1e-5).unwrap();
        let fused = candle_nn::ops::layer_norm(&x, &w, &b, 1e-5).unwrap();
        let diff = peft_core::compare::max_abs_diff(&ours, &fused).unwrap();
        assert!(diff < 1e-5, "differs by {diff}");
    }
}
