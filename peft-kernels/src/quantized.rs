//! The product of a frozen weight kept quantized (QLoRA-style training over a GGUF base): `x W^T + b` and its
//! input gradient `dy W`, each walking `W` in blocks of rows that are dequantized just before the GEMM uses
//! them, so that no f32 copy of the whole weight is ever held (a block is at most [`BLOCK_VALUES`] values).
//!
//! Why not candle's quantized matmul: it rounds the activations to 8 bits (llama.cpp's `vec_dot` with
//! `Q8_K` / `Q8_0` inputs), which moves a projection's output by about 1e-2 relative and has no backward.
//! Here the weight is exactly the dequantized f32 tensor the default loader builds, and the products are the
//! same f32 GEMM, so the quantized path computes what the f32 path computes, up to summation order.
//!
//! ```
//! use candle_core::quantized::{GgmlDType, QTensor};
//! use candle_core::{Device, Tensor, Var};
//! use peft_core::frozen::FrozenLinear;
//! use peft_core::quantized::QuantizedWeight;
//! use peft_kernels::frozen::FrozenGemm;
//! let dev = Device::Cpu;
//! let dense = Tensor::randn(0f32, 1., (6, 64), &dev).unwrap();
//! let q = QuantizedWeight::new(QTensor::quantize(&dense, GgmlDType::Q4_0).unwrap()).unwrap();
//! let reference = FrozenLinear::new(q.dequantize().unwrap(), None, &FrozenGemm);
//! let lin = FrozenLinear::quantized(q, None, &FrozenGemm);
//! let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 64), &dev).unwrap()).unwrap();
//! let (y, y_ref) = (lin.forward(x.as_tensor()).unwrap(), reference.forward(x.as_tensor()).unwrap());
//! assert!(peft_core::compare::max_abs_diff(&y, &y_ref).unwrap() < 1e-4);
//! let g = y.sum_all().unwrap().backward().unwrap();
//! let g_ref = y_ref.sum_all().unwrap().backward().unwrap();
//! let (gx, gx_ref) = (g.get(x.as_tensor()).unwrap(), g_ref.get(x.as_tensor()).unwrap());
//! assert!(peft_core::compare::max_abs_diff(gx, gx_ref).unwrap() < 1e-4);
//! ```

use candle_core::quantized::{GgmlDType, GgmlType};
use candle_core::Tensor;
use peft_core::frozen::{CandleProduct, FrozenProduct};
use peft_core::quantized::QuantizedWeight;
use peft_core::Result;
use rayon::prelude::*;

use crate::cpu::{self, Mat, SharedOut, Threads};
use crate::frozen::OpWeight;

/// The most values of a weight dequantized at once (4 MB of f32): every projection of SmolLM2 fits in one
/// block; a 49,152-row LM head takes 27.
pub const BLOCK_VALUES: usize = 1 << 20;

/// Rows dequantized by one task of the parallel dequantization.
const TASK_ROWS: usize = 64;

/// `x W^T + b` for a quantized `W`: one op whose backward yields the gradient of `x` only, and of a trained
/// bias (BitFit) where `bias` is one. Inputs other than f32 on the CPU run the reference (the whole weight
/// dequantized, candle's ops).
pub fn quantized_affine(
    x: &Tensor,
    weight: &QuantizedWeight,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    if !cpu::covers(x) || !bias.is_none_or(cpu::covers) {
        return CandleProduct.affine(x, &weight.dequantize()?, bias);
    }
    crate::frozen::apply(x, OpWeight::Quantized(weight.clone()), bias)
}

/// The row ranges `W` is walked in.
fn row_blocks(weight: &QuantizedWeight) -> impl Iterator<Item = (usize, usize)> {
    let (n, k) = weight.dims();
    let rows = (BLOCK_VALUES / k.max(1)).max(1);
    (0..n).step_by(rows).map(move |r| (r, (r + rows).min(n)))
}

/// Rows `start..end` of `W` in f32, dequantized by several threads straight into one buffer.
fn dequantized(
    weight: &QuantizedWeight,
    start: usize,
    end: usize,
) -> candle_core::Result<Vec<f32>> {
    let k = weight.dims().1;
    let mut out = vec![0f32; (end - start) * k];
    let data = weight.qtensor().data()?;
    let row_bytes = weight.row_bytes();
    let dtype = weight.ggml_dtype();
    out.par_chunks_mut(TASK_ROWS * k)
        .enumerate()
        .try_for_each(|(i, chunk)| {
            let first = start + i * TASK_ROWS;
            let rows = chunk.len() / k;
            let bytes = &data[first * row_bytes..(first + rows) * row_bytes];
            blocks_to_f32(dtype, bytes, chunk)
        })?;
    Ok(out)
}

/// Rows `start..end` of `W` in f32, dequantized on the calling thread (for callers already running one task
/// per thread).
pub(crate) fn dequantized_here(
    weight: &QuantizedWeight,
    start: usize,
    end: usize,
) -> candle_core::Result<Vec<f32>> {
    let mut out = vec![0f32; (end - start) * weight.dims().1];
    let data = weight.qtensor().data()?;
    let row_bytes = weight.row_bytes();
    blocks_to_f32(
        weight.ggml_dtype(),
        &data[start * row_bytes..end * row_bytes],
        &mut out,
    )?;
    Ok(out)
}

/// llama.cpp's dequantization of the whole blocks of `dtype` in `bytes` into `out`.
fn blocks_to_f32(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) -> candle_core::Result<()> {
    use candle_core::quantized::k_quants::*;
    match dtype {
        GgmlDType::F32 => typed::<f32>(bytes, out),
        GgmlDType::F16 => typed::<half::f16>(bytes, out),
        GgmlDType::BF16 => typed::<half::bf16>(bytes, out),
        GgmlDType::Q4_0 => typed::<BlockQ4_0>(bytes, out),
        GgmlDType::Q4_1 => typed::<BlockQ4_1>(bytes, out),
        GgmlDType::Q5_0 => typed::<BlockQ5_0>(bytes, out),
        GgmlDType::Q5_1 => typed::<BlockQ5_1>(bytes, out),
        GgmlDType::Q8_0 => typed::<BlockQ8_0>(bytes, out),
        GgmlDType::Q8_1 => typed::<BlockQ8_1>(bytes, out),
        GgmlDType::Q2K => typed::<BlockQ2K>(bytes, out),
        GgmlDType::Q3K => typed::<BlockQ3K>(bytes, out),
        GgmlDType::Q4K => typed::<BlockQ4K>(bytes, out),
        GgmlDType::Q5K => typed::<BlockQ5K>(bytes, out),
        GgmlDType::Q6K => typed::<BlockQ6K>(bytes, out),
        GgmlDType::Q8K => typed::<BlockQ8K>(bytes, out),
    }
}

/// `T::to_float` over the blocks held in `bytes`, read in place.
fn typed<T: GgmlType>(bytes: &[u8], out: &mut [f32]) -> candle_core::Result<()> {
    let size = std::mem::size_of::<T>();
    let count = bytes.len() / size;
    if !bytes.len().is_multiple_of(size)
        || count * T::BLCK_SIZE != out.len()
        || bytes.as_ptr().align_offset(std::mem::align_of::<T>()) != 0
    {
        candle_core::bail!(
            "{} bytes at a misaligned or partial block of {:?} for {} values",
            bytes.len(),
            T::DTYPE,
            out.len()
        );
    }
    // SAFETY: the bytes are whole `T` blocks (checked above), aligned for `T` (checked above: they are a
    // range of whole rows of the `Vec<T>` candle stores the tensor in), and every bit pattern is a valid
    // block (plain integers and f16 scales).
    let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), count) };
    T::to_float(blocks, out);
    Ok(())
}

/// `[m, n]` rows of `x W^T (+ bias)` for `x` `[m, k]`: each row starts as the bias (or zero) and every block
/// of `W`'s rows fills its columns.
pub(crate) fn affine_rows(
    x: &[f32],
    weight: &QuantizedWeight,
    bias: Option<&[f32]>,
    m: usize,
) -> candle_core::Result<Vec<f32>> {
    let (n, k) = weight.dims();
    let mut out = crate::frozen::bias_rows(bias, m, n);
    let shared = SharedOut::new(&mut out);
    for (start, end) in row_blocks(weight) {
        let w = dequantized(weight, start, end)?;
        // SAFETY: this thread is the only one writing `out` (the GEMM's own threads split the block it is
        // given); each block writes its own columns `start..end` of every row.
        unsafe {
            cpu::matmul_to(
                Mat::rows(x, k),
                Mat::transposed(&w, k),
                shared,
                start,
                n,
                (m, end - start, k),
                bias.is_some(),
                Threads::All,
            );
        }
    }
    Ok(out)
}

/// `dx = dy W` for `dy` `[.., n]`: the blocks' products `dy[:, block] W[block, :]` summed in order.
pub(crate) fn input_grad(
    grad_res: &Tensor,
    weight: &QuantizedWeight,
) -> candle_core::Result<Tensor> {
    let dims = grad_res.dims();
    let (n, k) = weight.dims();
    let m = grad_res.elem_count() / n.max(1);
    let mut grad = vec![0f32; m * k];
    cpu::with_values(grad_res, |dy| {
        for (i, (start, end)) in row_blocks(weight).enumerate() {
            let w = dequantized(weight, start, end)?;
            cpu::matmul(
                Mat::strided(&dy[start..], n, 1),
                Mat::rows(&w, k),
                &mut grad,
                (m, k, end - start),
                i > 0,
                Threads::All,
            );
        }
        Ok(())
    })?;
    let mut in_dims = dims.to_vec();
    *in_dims.last_mut().expect("rank >= 1") = k;
    cpu::tensor(grad, &in_dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Var};
    use peft_core::compare::max_abs_diff;
    use peft_core::frozen::FrozenLinear;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use crate::frozen::FrozenGemm;

    fn seeded(dims: &[usize], seed: u64) -> Tensor {
        let mut rng = StdRng::seed_from_u64(seed);
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1f32..1.)).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// Every block type the zoo's files use: forward, input gradient and trained-bias gradient equal the
    /// dequantized f32 layer's. The tolerance covers summation order only (values of order 10).
    #[test]
    fn every_block_type_matches_its_dequantized_f32_layer() {
        let types = [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::F16,
        ];
        for (i, dtype) in types.into_iter().enumerate() {
            let dense = seeded(&[40, 256], i as u64);
            let q = QuantizedWeight::new(QTensor::quantize(&dense, dtype).unwrap()).unwrap();
            let w = q.dequantize().unwrap();
            let rounding = max_abs_diff(&w, &dense).unwrap();
            assert!(
                rounding > 0.0 || dtype == GgmlDType::F16,
                "{dtype:?} rounds"
            );
            let b = Var::from_tensor(&seeded(&[40], 100 + i as u64)).unwrap();
            let x = Var::from_tensor(&seeded(&[2, 5, 256], 200 + i as u64)).unwrap();
            let gy = seeded(&[2, 5, 40], 300 + i as u64);

            let quantized = FrozenLinear::quantized(q, None, &FrozenGemm);
            let reference = FrozenLinear::new(w.clone(), None, &CandleProduct);
            let y = quantized
                .forward_with_bias(x.as_tensor(), Some(b.as_tensor()))
                .unwrap();
            let y_ref = reference
                .forward_with_bias(x.as_tensor(), Some(b.as_tensor()))
                .unwrap();
            let d = max_abs_diff(&y, &y_ref).unwrap();
            assert!(d < 1e-4, "{dtype:?}: forward differs by {d}");
            let g = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (y_ref * &gy)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (what, t) in [("input", x.as_tensor()), ("bias", b.as_tensor())] {
                let d = max_abs_diff(g.get(t).unwrap(), g_ref.get(t).unwrap()).unwrap();
                assert!(d < 1e-4, "{dtype:?}: {what} gradient differs by {d}");
            }
        }
    }

    /// A weight larger than one block: the blocks' columns and the summed gradient blocks line up.
    #[test]
    fn weights_walked_in_several_blocks_match() {
        let k = 256;
        let rows = BLOCK_VALUES / k * 2 + 37; // two full blocks and a partial one
        let dense = seeded(&[rows, k], 7);
        let q = QuantizedWeight::new(QTensor::quantize(&dense, GgmlDType::Q8_0).unwrap()).unwrap();
        assert_eq!(row_blocks(&q).count(), 3);
        let w = q.dequantize().unwrap();
        let frozen_bias = seeded(&[rows], 8);
        let x = Var::from_tensor(&seeded(&[3, k], 9)).unwrap();
        let y = FrozenLinear::quantized(q, Some(frozen_bias.clone()), &FrozenGemm)
            .forward(x.as_tensor())
            .unwrap();
        let y_ref = FrozenLinear::new(w, Some(frozen_bias), &CandleProduct)
            .forward(x.as_tensor())
            .unwrap();
        assert!(max_abs_diff(&y, &y_ref).unwrap() < 1e-4);
        let gy = seeded(&[3, rows], 10);
        let g = (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (y_ref * &gy)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d = max_abs_diff(
            g.get(x.as_tensor()).unwrap(),
            g_ref.get(x.as_tensor()).unwrap(),
        )
        .unwrap();
        assert!(d < 1e-3, "input gradient differs by {d}");
    }

    #[test]
    fn reordered_rows_and_selected_rows_are_the_dequantized_rows() {
        let dense = seeded(&[6, 64], 11);
        let q = QuantizedWeight::new(QTensor::quantize(&dense, GgmlDType::Q4_1).unwrap()).unwrap();
        let all = q.dequantize().unwrap().to_vec2::<f32>().unwrap();
        let order = [5, 0, 3, 1, 2, 4];
        let r = q.reorder_rows(&order).unwrap();
        let reordered = r.dequantize().unwrap().to_vec2::<f32>().unwrap();
        for (i, &o) in order.iter().enumerate() {
            assert_eq!(reordered[i], all[o]);
        }
        let picked = q.select_rows(&[4, 4, 1]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(picked, vec![all[4].clone(), all[4].clone(), all[1].clone()]);
        assert!(q.select_rows(&[6]).is_err());
        assert!(q.reorder_rows(&[0, 1]).is_err());
    }

    #[test]
    fn merging_into_a_quantized_layer_is_refused_with_what_to_do() {
        let dense = seeded(&[4, 32], 12);
        let q = QuantizedWeight::new(QTensor::quantize(&dense, GgmlDType::Q8_0).unwrap()).unwrap();
        let mut lin = FrozenLinear::quantized(q, None, &FrozenGemm);
        let err = lin
            .add_to_weight(&Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("q8_0") && err.contains("f32"), "{err}");
    }
}
