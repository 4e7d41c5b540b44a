//! Named checkpoint tensors, whatever file they came from (safetensors folder, sharded index, GGUF), with
//! a clear error naming any tensor the architecture needs and the checkpoint lacks.
//!
//! ```
//! use std::collections::HashMap;
//! use candle_core::{Device, Tensor};
//! use peft_models::weights::WeightMap;
//! let t = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
//! let w = WeightMap::new(HashMap::from([("transformer.wte.weight".to_string(), t)]), "test");
//! assert!(w.get("transformer.wte.weight", &[3]).is_ok());
//! assert!(w.get("transformer.wpe.weight", &[3]).unwrap_err().to_string().contains("transformer.wpe.weight"));
//!
//! let ids = Tensor::zeros(3, candle_core::DType::I64, &Device::Cpu).unwrap();
//! let w = WeightMap::new(HashMap::from([("embeddings.position_ids".to_string(), ids)]), "test");
//! assert!(w.get_any("embeddings.position_ids").unwrap_err().to_string().contains("I64"));
//! ```

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use peft_core::quantized::QuantizedWeight;

use crate::error::{ModelError, Result};

/// Checkpoint tensors by Hugging Face name, converted to f32 on access; weights a GGUF loader kept in their
/// block format ([`WeightMap::with_quantized`]) are handed to the layers that can use them as they are.
#[derive(Debug, Clone)]
pub struct WeightMap {
    tensors: HashMap<String, Tensor>,
    quantized: HashMap<String, QuantizedWeight>,
    source: String,
    bf16_projections: bool,
}

impl WeightMap {
    /// Wraps tensors read from `source` (a path or description used in errors).
    pub fn new(tensors: HashMap<String, Tensor>, source: impl Into<String>) -> Self {
        WeightMap {
            tensors,
            quantized: HashMap::new(),
            source: source.into(),
            bf16_projections: false,
        }
    }

    /// Models built from this map store their frozen projections' weights in bf16
    /// ([`LoadOptions::bf16_projections`](crate::LoadOptions::bf16_projections)).
    pub fn set_bf16_projections(&mut self, on: bool) {
        self.bf16_projections = on;
    }

    /// Whether the frozen projections are stored in bf16.
    pub fn bf16_projections(&self) -> bool {
        self.bf16_projections
    }

    /// Adds weights kept quantized (by Hugging Face name).
    pub fn with_quantized(mut self, quantized: HashMap<String, QuantizedWeight>) -> Self {
        self.quantized.extend(quantized);
        self
    }

    /// The weight `name` where it is kept quantized, checked against the expected `[out, in]` shape.
    pub fn quantized(&self, name: &str, shape: [usize; 2]) -> Result<Option<QuantizedWeight>> {
        let Some(q) = self.quantized.get(name) else {
            return Ok(None);
        };
        let (out, inp) = q.dims();
        if [out, inp] != shape {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                source_desc: self.source.clone(),
                expected: shape.to_vec(),
                got: vec![out, inp],
            });
        }
        Ok(Some(q.clone()))
    }

    /// The device of the tensors (the CPU for an empty map; quantized weights live there).
    pub fn device(&self) -> candle_core::Device {
        self.tensors
            .values()
            .next()
            .map_or(candle_core::Device::Cpu, |t| t.device().clone())
    }

    /// The same checkpoint with every 2-D f32 tensor whose rows are whole blocks of `dtype` quantized to it
    /// (1-D tensors, norms and biases, stay f32): a quantized base built in code, for tests and benchmarks.
    pub fn quantize_2d(mut self, dtype: candle_core::quantized::GgmlDType) -> Result<Self> {
        let names: Vec<String> = self
            .tensors
            .iter()
            .filter(|(_, t)| {
                t.rank() == 2
                    && t.dtype() == DType::F32
                    && t.dim(1).is_ok_and(|k| k % dtype.block_size() == 0)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let t = self.tensors.remove(&name).expect("listed above");
            let q = candle_core::quantized::QTensor::quantize(&t, dtype)?;
            self.quantized.insert(name, QuantizedWeight::new(q)?);
        }
        Ok(self)
    }

    /// Whether any weight is kept quantized.
    pub fn has_quantized(&self) -> bool {
        !self.quantized.is_empty()
    }

    /// Where the tensors came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True where the checkpoint has `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.quantized.contains_key(name)
    }

    /// All names.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys().chain(self.quantized.keys())
    }

    /// The tensor `name` as f32 with the expected shape, or an error naming it.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_any(name)?;
        if t.dims() != shape {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                source_desc: self.source.clone(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    /// The tensor `name` as f32, whatever its shape; a tensor stored as integers is refused, naming its dtype.
    /// A weight kept quantized is dequantized for a caller that needs it dense.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        if let Some(q) = self.quantized.get(name) {
            return Ok(q.dequantize()?);
        }
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                source_desc: self.source.clone(),
            })?;
        if is_integer(t.dtype()) {
            return Err(ModelError::TensorDtype {
                name: name.to_string(),
                source_desc: self.source.clone(),
                dtype: format!("{:?}", t.dtype()),
            });
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    /// The dtype `name` is stored as, where the checkpoint has it.
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.tensors.get(name).map(Tensor::dtype)
    }

    /// Turns every tensor into an f32 candle variable, so that a model built from this map trains all its
    /// weights (full fine-tuning); a name used twice (a tied head) is one variable. Returns the variables by
    /// name.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        if self.has_quantized() {
            return Err(ModelError::Config(
                "full fine-tuning trains every weight, which a base kept quantized cannot do: load it in f32 \
                 (without `quantized = true` / `--keep-quantized`)"
                    .into(),
            ));
        }
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort();
        let mut vars = Vec::with_capacity(names.len());
        for name in names {
            let t = &self.tensors[&name];
            // Integer buffers (`position_ids`) are not weights: they stay as stored, and are refused if read.
            if is_integer(t.dtype()) {
                continue;
            }
            let var = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
            self.tensors.insert(name.clone(), var.as_tensor().clone());
            vars.push((name, var));
        }
        Ok(vars)
    }

    /// Renames every key with `f` (e.g. to add the `transformer.` prefix of a bare `GPT2Model` checkpoint).
    pub fn rename(self, f: impl Fn(&str) -> String) -> Self {
        let tensors = self.tensors.into_iter().map(|(k, v)| (f(&k), v)).collect();
        let quantized = self
            .quantized
            .into_iter()
            .map(|(k, v)| (f(&k), v))
            .collect();
        WeightMap {
            tensors,
            quantized,
            source: self.source,
            bf16_projections: self.bf16_projections,
        }
    }
}

/// Integer storage: never a weight (masks, ids and counters are saved this way).
fn is_integer(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64
    )
}
