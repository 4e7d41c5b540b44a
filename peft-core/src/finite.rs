//! Finding NaN and infinite values in tensors: what stops a diverged adapter from being saved or loaded as if
//! it were a trained one.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use peft_core::finite::{describe_non_finite, non_finite_count, non_finite_tensors};
//! let good = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
//! let bad = Tensor::new(&[f32::NAN, 2.0, f32::INFINITY], &Device::Cpu).unwrap();
//! assert_eq!(non_finite_count(&good).unwrap(), 0);
//! assert_eq!(non_finite_count(&bad).unwrap(), 2);
//! let found = non_finite_tensors([("good", &good), ("bad", &bad)]).unwrap();
//! assert_eq!(found.len(), 1);
//! assert_eq!(describe_non_finite(&found), "tensor `bad` holds 2 non-finite values (NaN or infinite) of 3");
//! ```

use candle_core::{DType, Tensor};

use crate::error::Result;

/// A tensor holding NaN or infinite values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFiniteTensor {
    /// The tensor's name (its HF PEFT key).
    pub key: String,
    /// How many of its values are NaN or infinite.
    pub count: usize,
    /// How many values it holds.
    pub total: usize,
}

/// How many values of `t` are NaN or infinite; 0 for an integer tensor.
pub fn non_finite_count(t: &Tensor) -> Result<usize> {
    let t = match t.dtype() {
        DType::F64 => t.clone(),
        DType::F32 | DType::F16 | DType::BF16 => t.to_dtype(DType::F32)?,
        _ => return Ok(0),
    };
    // `x - x` is 0 for a finite x and NaN otherwise, so one reduction answers the common case (all finite)
    // without copying the values out.
    let spread = t
        .sub(&t)?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    if spread == 0.0 {
        return Ok(0);
    }
    let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok(values.iter().filter(|v| !v.is_finite()).count())
}

/// The tensors among `tensors` that hold NaN or infinite values, in the order given.
pub fn non_finite_tensors<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<NonFiniteTensor>> {
    let mut found = Vec::new();
    for (key, t) in tensors {
        let count = non_finite_count(t)?;
        if count > 0 {
            found.push(NonFiniteTensor {
                key: key.to_string(),
                count,
                total: t.elem_count(),
            });
        }
    }
    Ok(found)
}

/// `found` in words: the first few tensors with their counts, and how many more there are.
pub fn describe_non_finite(found: &[NonFiniteTensor]) -> String {
    const SHOWN: usize = 3;
    let mut parts: Vec<String> = found
        .iter()
        .take(SHOWN)
        .map(|f| {
            format!(
                "tensor `{}` holds {} non-finite values (NaN or infinite) of {}",
                f.key, f.count, f.total
            )
        })
        .collect();
    if found.len() > SHOWN {
        parts.push(format!(
            "{} more tensors hold some too",
            found.len() - SHOWN
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn every_float_dtype_is_checked_and_integers_are_not() {
        let bad = Tensor::new(&[f32::NAN, 1.0, f32::NEG_INFINITY, 0.0], &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
            assert_eq!(
                non_finite_count(&bad.to_dtype(dtype).unwrap()).unwrap(),
                2,
                "{dtype:?}"
            );
        }
        let ints = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        assert_eq!(non_finite_count(&ints).unwrap(), 0);
    }

    #[test]
    fn a_huge_finite_f64_is_not_mistaken_for_infinity() {
        let big = Tensor::new(&[1e300f64, -1e300], &Device::Cpu).unwrap();
        assert_eq!(non_finite_count(&big).unwrap(), 0);
    }

    #[test]
    fn many_bad_tensors_are_summarised() {
        let found: Vec<NonFiniteTensor> = (0..5)
            .map(|i| NonFiniteTensor {
                key: format!("t{i}"),
                count: 1,
                total: 2,
            })
            .collect();
        let text = describe_non_finite(&found);
        assert!(text.contains("`t2`") && !text.contains("`t3`"), "{text}");
        assert!(text.ends_with("2 more tensors hold some too"), "{text}");
    }
}
