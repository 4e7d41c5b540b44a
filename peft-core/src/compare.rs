//! Comparing tensors, as parity checks and tests do.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let a = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
//! let b = Tensor::new(&[1f32, 2.5, 3.], &Device::Cpu).unwrap();
//! assert_eq!(peft_core::compare::max_abs_diff(&a, &b).unwrap(), 0.5);
//! ```

use candle_core::{DType, Tensor};

use crate::error::Result;

/// The largest `|a - b|` over all elements, as f32 (shapes must match).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let d = (a - b)?.abs()?.flatten_all()?.max(0)?;
    Ok(d.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

/// [`max_abs_diff`] relative to the largest `|b|` (the reference): how the fused kernels are checked against
/// their composed forms. Shapes must match.
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        return Err(crate::PeftError::ShapeMismatch {
            what: "compared tensors".into(),
            expected_from: "the reference".into(),
            expected: b.dims().to_vec(),
            got_from: "the tensor under test".into(),
            got: a.dims().to_vec(),
        });
    }
    let scale = b
        .abs()?
        .max_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(max_abs_diff(a, b)? / scale.max(1e-30))
}
