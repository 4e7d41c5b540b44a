//! f32 tensors rounded to bf16 and bf16 tensors widened back, over the rayon pool and vectorised. candle's
//! `to_dtype` converts one element at a time on one thread (4-8 ms for SmolLM2's 1,024 x 1,536 MLP width on
//! this machine), which would cost a mixed-precision block that keeps its activations in bf16 more than the
//! products it saves.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use peft_kernels::bf16::{round_to_bf16, widen_to_f32};
//! // 1 + 2^-9 lies halfway between 1 and the next bf16: it rounds to the even one, 1.
//! let x = Tensor::new(&[1f32 + 1. / 512., -3.5, 1e-3], &Device::Cpu).unwrap();
//! let kept = round_to_bf16(&x).unwrap();
//! assert_eq!(kept.dtype(), DType::BF16);
//! let back = widen_to_f32(&kept).unwrap().to_vec1::<f32>().unwrap();
//! assert_eq!(&back[..2], &[1., -3.5]);
//! assert!((back[2] - 1e-3).abs() <= 1e-3 / 256.);
//! ```

use std::mem::MaybeUninit;

use candle_core::{DType, Tensor};
use half::bf16;
use peft_core::Result;
use rayon::prelude::*;

use super::{pack, with_bf16_values};
use crate::cpu;

/// Elements per rayon task: 64 KiB of f32 read, enough to pay for the task.
const CHUNK: usize = 1 << 14;

/// `t` rounded to bf16 (to nearest, ties to even, as the products round their inputs). Elsewhere than f32 on
/// the CPU, candle's conversion.
pub fn round_to_bf16(t: &Tensor) -> Result<Tensor> {
    if !cpu::covers(t) {
        return Ok(t.to_dtype(DType::BF16)?);
    }
    let values = cpu::with_values(t, |src| Ok(map(src, |x| bf16::from_bits(pack::round(x)))))?;
    Ok(Tensor::from_vec(values, t.dims(), t.device())?)
}

/// `t` (bf16 on the CPU) widened to f32, exactly. Elsewhere, candle's conversion.
pub fn widen_to_f32(t: &Tensor) -> Result<Tensor> {
    if !super::is_bf16_on_cpu(t) {
        return Ok(t.to_dtype(DType::F32)?);
    }
    let values = with_bf16_values(t, |src| Ok(map(src, |b| pack::widen(b.to_bits()))))?;
    Ok(Tensor::from_vec(values, t.dims(), t.device())?)
}

/// `f(src[i])` for every `i`, in chunks on the rayon pool.
fn map<A: Copy + Sync, B: Send>(src: &[A], f: impl Fn(A) -> B + Sync) -> Vec<B> {
    let n = src.len();
    let mut out = Vec::with_capacity(n);
    let body = |start: usize, o: &mut [MaybeUninit<B>]| {
        let src = &src[start..start + o.len()];
        cpu::vectorised(
            #[inline(always)]
            || {
                for (o, &s) in o.iter_mut().zip(src) {
                    o.write(f(s));
                }
            },
        )
    };
    let o = &mut out.spare_capacity_mut()[..n];
    if n <= CHUNK {
        body(0, o);
    } else {
        o.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, o)| body(i * CHUNK, o));
    }
    // SAFETY: the chunks cover `out[..n]` and each loop writes every element of its chunk (`src` is sliced to
    // the chunk's length).
    unsafe { out.set_len(n) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn conversions_match_candles_on_every_kind_of_value() {
        let mut values: Vec<f32> = (0..40_000)
            .map(|i| ((i as f32) * 0.7131).sin() * 10f32.powi(i % 7 - 3))
            .collect();
        values.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.0e38,
            1.0 + 1.0 / 512.0,
        ]);
        let t = Tensor::from_vec(values.clone(), values.len(), &Device::Cpu).unwrap();
        let ours = round_to_bf16(&t).unwrap();
        let candles = t.to_dtype(DType::BF16).unwrap();
        let (a, b) = (
            ours.to_vec1::<bf16>().unwrap(),
            candles.to_vec1::<bf16>().unwrap(),
        );
        let differ = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{differ} of {} values round differently",
            a.len()
        );
        let widened = widen_to_f32(&ours).unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
        assert_eq!(widened, want);
    }
}
