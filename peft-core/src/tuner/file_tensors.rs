//! The check an adapter makes before loading a weights file's tensors into its variables: the file holds
//! exactly the tensors the config describes, each of the expected shape. Everything is checked before anything
//! is changed, so that a bad file leaves the adapter as it was; errors name the tensor, both shapes and the
//! config fields that decide them.
//!
//! ```
//! use std::collections::HashMap;
//! use candle_core::{DType, Device, Tensor};
//! use peft_core::tuner::{check_file_tensors, ExpectedTensors};
//! let file: HashMap<String, Tensor> =
//!     [("a".to_string(), Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap())].into();
//! let expected = ExpectedTensors { method: "LoRA", fields: "target_modules / r", shapes_from: "the model" };
//! assert!(check_file_tensors(&file, &[("a", &[2, 4])], &expected).is_ok());
//! let err = check_file_tensors(&file, &[("a", &[2, 4]), ("b", &[4])], &expected).unwrap_err();
//! assert!(err.to_string().contains("no tensor `b`"));
//! ```

use std::collections::{BTreeSet, HashMap};

use candle_core::Tensor;

use crate::{PeftError, Result};

/// How [`check_file_tensors`] names what the file should hold.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedTensors<'a> {
    /// The method, as messages name it (`"LoRA"`).
    pub method: &'a str,
    /// The config fields that decide which tensors there are (`"target_modules / layers_to_transform / bias"`).
    pub fields: &'a str,
    /// What the expected shapes come from, for a shape mismatch (`"the model with this LoRA config (r = 8)"`).
    pub shapes_from: &'a str,
}

/// Checks that `tensors` (a weights file's) are exactly the `expected` keys, each of its shape.
pub fn check_file_tensors(
    tensors: &HashMap<String, Tensor>,
    expected: &[(&str, &[usize])],
    what: &ExpectedTensors,
) -> Result<()> {
    let method = what.method;
    let keys: BTreeSet<&str> = expected.iter().map(|(k, _)| *k).collect();
    let mut unexpected: Vec<&String> = tensors
        .keys()
        .filter(|k| !keys.contains(k.as_str()))
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        return Err(PeftError::Config(format!(
            "the adapter file holds {} tensor(s) this {method} config does not describe, e.g. {:?}: the config's \
             {} do not match the file (was it edited, or saved for another model?)",
            unexpected.len(),
            &unexpected[..unexpected.len().min(3)],
            what.fields
        )));
    }
    for (key, dims) in expected {
        let t = tensors.get(*key).ok_or_else(|| {
            PeftError::Config(format!(
                "the adapter file has no tensor `{key}`, which this {method} config needs (it has {} tensors): \
                 the config's {} do not match the file",
                tensors.len(),
                what.fields
            ))
        })?;
        if t.dims() != *dims {
            return Err(PeftError::ShapeMismatch {
                what: key.to_string(),
                expected_from: what.shapes_from.to_string(),
                expected: dims.to_vec(),
                got_from: "the adapter file".into(),
                got: t.dims().to_vec(),
            });
        }
    }
    Ok(())
}
