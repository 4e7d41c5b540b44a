//! AdaLoRA's orthogonality regulariser, as HF PEFT's `AdaLoraModel.forward` adds it to a training loss:
//! `orth_reg_weight * mean over every lora_A and lora_B of ||P - I||_F`, with `P = A A^T` for `lora_A` `[r, in]`
//! and `P = B^T B` for `lora_B` `[out, r]` (both `[r, r]`): it keeps the factors near orthonormal, so that
//! `lora_E` holds the singular values.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let dev = Device::Cpu;
//! // A = [[2, 0]]: A A^T = [[4]], ||4 - 1|| = 3. B = [[1], [0]]: B^T B = [[1]], ||1 - 1|| = 0.
//! let a = Tensor::new(&[[2f32, 0.]], &dev).unwrap();
//! let b = Tensor::new(&[[1f32], [0.]], &dev).unwrap();
//! let term = peft_adalora::orthogonal_regulariser(&[(a, b)], 0.5).unwrap().unwrap();
//! assert_eq!(term.to_scalar::<f32>().unwrap(), 0.5 * (3.0 + 0.0) / 2.0);
//! ```

use candle_core::{DType, Tensor};
use peft_core::Result;

/// `weight * mean ||P - I||_F` over the `(lora_A, lora_B)` pairs given (two matrices each); `None` without
/// pairs.
pub fn orthogonal_regulariser(pairs: &[(Tensor, Tensor)], weight: f64) -> Result<Option<Tensor>> {
    let mut total: Option<Tensor> = None;
    for (a, b) in pairs {
        for cov in [a.matmul(&a.t()?)?, b.t()?.matmul(b)?] {
            let r = cov.dim(0)?;
            if r == 0 {
                // A module a rank pattern emptied: HF PEFT counts it, with a norm of 0.
                let zero = Tensor::zeros((), DType::F32, cov.device())?;
                total = Some(match total {
                    None => zero,
                    Some(t) => (t + zero)?,
                });
                continue;
            }
            let eye = Tensor::eye(r, DType::F32, cov.device())?;
            let norm = (cov - eye)?.sqr()?.sum_all()?.sqrt()?;
            total = Some(match total {
                None => norm,
                Some(t) => (t + norm)?,
            });
        }
    }
    match total {
        None => Ok(None),
        Some(t) => Ok(Some(((t / (2 * pairs.len()) as f64)? * weight)?)),
    }
}
