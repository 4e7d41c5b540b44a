//! A frozen weight kept in its GGUF block format (QLoRA's point: the base stays at 4-8 bits while the adapter
//! trains). [`QuantizedWeight`] is the storage and the exact operations every product needs from it: its
//! shape and type, a contiguous range of its rows dequantized into a caller's buffer (what a kernel walks,
//! block of rows by block of rows, so that no f32 copy of the whole weight is ever kept), chosen rows (an
//! embedding lookup, the label words of a verbalizer) and the whole weight (the reference product, merges
//! that are refused, tests).
//!
//! Dequantization is llama.cpp's (through candle's block types), so a row dequantized here equals the same row
//! of the f32 tensor the default loader builds from the same file, bit for bit.
//!
//! ```
//! use candle_core::quantized::{GgmlDType, QTensor};
//! use candle_core::{Device, Tensor};
//! use peft_core::quantized::QuantizedWeight;
//! let dense = Tensor::randn(0f32, 1., (4, 64), &Device::Cpu).unwrap();
//! let w = QuantizedWeight::new(QTensor::quantize(&dense, GgmlDType::Q8_0).unwrap()).unwrap();
//! assert_eq!(w.dims(), (4, 64));
//! assert_eq!(w.type_name(), "q8_0");
//! assert_eq!(w.storage_bytes(), 4 * 2 * 34); // two 34-byte blocks a row
//! let rows = w.dequantize_rows(1, 3).unwrap();
//! let all = w.dequantize().unwrap().to_vec2::<f32>().unwrap();
//! assert_eq!(&rows[..64], &all[1][..]);
//! let max = (w.dequantize().unwrap() - &dense).unwrap().abs().unwrap().max_all().unwrap();
//! assert!(max.to_scalar::<f32>().unwrap() < 0.05); // 8-bit rounding
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{PeftError, Result};

/// A `[out, in]` weight in a GGUF block format, shared cheaply (a tied embedding and LM head hold one).
#[derive(Clone)]
pub struct QuantizedWeight {
    tensor: Arc<QTensor>,
    out_features: usize,
    in_features: usize,
}

impl std::fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantizedWeight({} [{}, {}])",
            self.type_name(),
            self.out_features,
            self.in_features
        )
    }
}

impl QuantizedWeight {
    /// Wraps a 2-D quantized tensor held in the CPU's memory whose rows are whole blocks.
    pub fn new(tensor: QTensor) -> Result<Self> {
        Self::from_arc(Arc::new(tensor))
    }

    /// [`QuantizedWeight::new`] for a tensor already shared.
    pub fn from_arc(tensor: Arc<QTensor>) -> Result<Self> {
        let (out_features, in_features) = tensor.shape().dims2().map_err(|_| {
            PeftError::Unsupported(format!(
                "a quantized frozen weight must be 2-D [out, in]; got shape {:?}",
                tensor.shape().dims()
            ))
        })?;
        if !matches!(tensor.device(), Device::Cpu) {
            return Err(PeftError::Unsupported(
                "quantized frozen weights are supported on the CPU only".into(),
            ));
        }
        let block = tensor.dtype().block_size();
        if !in_features.is_multiple_of(block) {
            return Err(PeftError::Unsupported(format!(
                "a {:?} weight's rows must be whole blocks of {block} values; rows have {in_features}",
                tensor.dtype()
            )));
        }
        Ok(QuantizedWeight {
            tensor,
            out_features,
            in_features,
        })
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out_features, self.in_features)
    }

    /// The block format.
    pub fn ggml_dtype(&self) -> GgmlDType {
        self.tensor.dtype()
    }

    /// The format's name as llama.cpp writes it (`q4_k`, `q8_0`, `f16`).
    pub fn type_name(&self) -> String {
        ggml_type_name(self.tensor.dtype())
    }

    /// Bytes the weight occupies.
    pub fn storage_bytes(&self) -> usize {
        self.tensor.storage_size_in_bytes()
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        let dtype = self.tensor.dtype();
        self.in_features / dtype.block_size() * dtype.type_size()
    }

    /// The underlying tensor.
    pub fn qtensor(&self) -> &Arc<QTensor> {
        &self.tensor
    }

    /// Rows `start..end` dequantized (`(end - start) * in` values, row-major).
    pub fn dequantize_rows(&self, start: usize, end: usize) -> Result<Vec<f32>> {
        if start > end || end > self.out_features {
            return Err(PeftError::Unsupported(format!(
                "rows {start}..{end} of a quantized weight with {} rows",
                self.out_features
            )));
        }
        let data = self.tensor.data()?;
        let row_bytes = self.row_bytes();
        let bytes = &data[start * row_bytes..end * row_bytes];
        dequantize_bytes(self.tensor.dtype(), bytes, (end - start) * self.in_features)
    }

    /// The whole weight as an f32 tensor (allocates `out * in` values).
    pub fn dequantize(&self) -> Result<Tensor> {
        Ok(self.tensor.dequantize(&Device::Cpu)?)
    }

    /// Rows `ids` as an f32 `[ids.len(), in]` tensor; only those rows are dequantized.
    pub fn select_rows(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.out_features) {
            return Err(PeftError::Unsupported(format!(
                "row {bad} of a quantized weight with {} rows",
                self.out_features
            )));
        }
        let ids = Tensor::new(ids, &Device::Cpu)?;
        Ok(self.tensor.embedding(&ids)?)
    }

    /// The same weight with its rows reordered: row `i` of the result is row `order[i]` of this one. Blocks
    /// are copied whole (rows are whole blocks), so nothing is requantized.
    pub fn reorder_rows(&self, order: &[usize]) -> Result<Self> {
        if order.len() != self.out_features || order.iter().any(|&r| r >= self.out_features) {
            return Err(PeftError::Unsupported(format!(
                "a row order of {} entries for a weight of {} rows",
                order.len(),
                self.out_features
            )));
        }
        let data = self.tensor.data()?;
        let row_bytes = self.row_bytes();
        let mut bytes = Vec::with_capacity(data.len());
        for &r in order {
            bytes.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
        }
        let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, self.tensor.dtype())?;
        QuantizedWeight::new(QTensor::new(
            storage,
            (self.out_features, self.in_features),
        )?)
    }
}

/// llama.cpp's name for a block format.
pub fn ggml_type_name(dtype: GgmlDType) -> String {
    match dtype {
        GgmlDType::F32 => "f32".into(),
        GgmlDType::F16 => "f16".into(),
        GgmlDType::BF16 => "bf16".into(),
        GgmlDType::Q4_0 => "q4_0".into(),
        GgmlDType::Q4_1 => "q4_1".into(),
        GgmlDType::Q5_0 => "q5_0".into(),
        GgmlDType::Q5_1 => "q5_1".into(),
        GgmlDType::Q8_0 => "q8_0".into(),
        GgmlDType::Q8_1 => "q8_1".into(),
        GgmlDType::Q2K => "q2_k".into(),
        GgmlDType::Q3K => "q3_k".into(),
        GgmlDType::Q4K => "q4_k".into(),
        GgmlDType::Q5K => "q5_k".into(),
        GgmlDType::Q6K => "q6_k".into(),
        GgmlDType::Q8K => "q8_k".into(),
    }
}

/// Dequantizes the whole blocks of `dtype` held in `bytes` (`count` values).
fn dequantize_bytes(dtype: GgmlDType, bytes: &[u8], count: usize) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(dtype.type_size())
        || bytes.len() / dtype.type_size() * dtype.block_size() != count
    {
        return Err(PeftError::Unsupported(format!(
            "{} bytes of {dtype:?} blocks do not make {count} values",
            bytes.len()
        )));
    }
    // `from_data` copies the blocks into a typed vector (a tenth of the output for the 4-bit formats): that
    // keeps this free of pointer casts.
    match dtype.from_data(Cow::Borrowed(bytes)).dequantize(count)? {
        candle_core::CpuStorage::F32(values) => Ok(values),
        _ => Err(PeftError::Unsupported(format!(
            "{dtype:?} dequantized to another type than f32"
        ))),
    }
}
