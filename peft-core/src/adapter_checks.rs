//! What an adapter folder must satisfy before and after its adapter is built: its config's size (the
//! method's [`size_knob`](crate::method::PeftMethod::size_knob)) agrees with the tensors its weights file
//! holds, read from the file's header alone, so that a config saying `num_virtual_tokens = 1000000000` beside
//! a file of 5 rows is refused before a byte is allocated for it; and every tensor of the file is used.
//!
//! ```
//! use peft_core::adapter_checks::{check_size_agrees, TensorHeader};
//! let header = vec![TensorHeader { name: "prompt_embeddings".into(), shape: vec![5, 32] }];
//! assert!(check_size_agrees("num_virtual_tokens", 5, &header).is_ok());
//! let err = check_size_agrees("num_virtual_tokens", 1_000_000_000, &header).unwrap_err();
//! assert!(err.contains("`num_virtual_tokens` = 1000000000") && err.contains("prompt_embeddings [5, 32]"));
//! ```

use std::collections::HashSet;

use safetensors::SafeTensors;

use crate::method::PeftMethod;

/// A tensor's name and shape as a safetensors header lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorHeader {
    /// The tensor's key.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// The tensors a safetensors file's `bytes` hold, by name and shape, sorted by name; nothing is copied. An
/// error says why the bytes are not a safetensors file.
pub fn read_header(bytes: &[u8]) -> Result<Vec<TensorHeader>, String> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut header: Vec<TensorHeader> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| TensorHeader {
            name,
            shape: view.shape().to_vec(),
        })
        .collect();
    header.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(header)
}

/// The value of `method`'s size knob as its serialised config states it, with the knob's name; `None` for a
/// method of fixed size.
pub fn size_setting(method: &dyn PeftMethod) -> Option<(&'static str, u64)> {
    let knob = method.size_knob()?;
    let value = serde_json::to_value(method).ok()?;
    Some((knob, value.get(knob)?.as_u64()?))
}

/// Checks that the size `knob` = `value` can agree with the tensors of `header`: at least 1, and no larger
/// than the largest dimension of any tensor there (virtual tokens are rows, or rows per transformer stack; a
/// rank is a dimension of each factor). This bounds what building the adapter allocates by what the file
/// holds; the exact shapes are checked when the tensors are loaded, where a mismatch names the tensor and
/// both shapes. The error names the knob, its value and what the file holds.
pub fn check_size_agrees(knob: &str, value: u64, header: &[TensorHeader]) -> Result<(), String> {
    if value == 0 {
        return Err(format!("`{knob}` = 0: it must be at least 1"));
    }
    let largest = header
        .iter()
        .flat_map(|t| t.shape.iter())
        .map(|&d| d as u64)
        .max();
    if largest.is_some_and(|largest| value <= largest) {
        return Ok(());
    }
    // The first tensor with the largest dimension (`max_by_key` keeps the last of equals).
    let Some(widest) = header
        .iter()
        .rev()
        .max_by_key(|t| t.shape.iter().max().copied().unwrap_or(0))
    else {
        return Err(format!(
            "`{knob}` = {value} in the config, but the weights file holds no tensors"
        ));
    };
    Err(format!(
        "`{knob}` = {value} in the config does not agree with the weights file: none of its {} tensor(s) \
         has a dimension that large (the largest: {} {:?}); is the config from another adapter?",
        header.len(),
        widest.name,
        widest.shape
    ))
}

/// The keys of the file (`file_keys`) that the built adapter does not hold (`adapter_keys`), sorted.
pub fn unused_keys<'a>(
    file_keys: impl IntoIterator<Item = &'a str>,
    adapter_keys: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let used: HashSet<&str> = adapter_keys.into_iter().collect();
    let mut unused: Vec<String> = file_keys
        .into_iter()
        .filter(|k| !used.contains(k))
        .map(str::to_string)
        .collect();
    unused.sort();
    unused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(shapes: &[(&str, &[usize])]) -> Vec<TensorHeader> {
        shapes
            .iter()
            .map(|(n, s)| TensorHeader {
                name: n.to_string(),
                shape: s.to_vec(),
            })
            .collect()
    }

    #[test]
    fn sizes_that_a_dimension_holds_agree() {
        let lora = header(&[("a", &[4, 32]), ("b", &[96, 4])]);
        assert!(check_size_agrees("r", 4, &lora).is_ok());
        // Two transformer stacks: 2 x 4 rows.
        let t5 = header(&[("prompt_embeddings", &[8, 32])]);
        assert!(check_size_agrees("num_virtual_tokens", 4, &t5).is_ok());
    }

    #[test]
    fn sizes_beyond_the_file_or_zero_are_refused() {
        let lora = header(&[("a", &[4, 32]), ("b", &[96, 4])]);
        let err = check_size_agrees("r", 1_000_000_000, &lora).unwrap_err();
        assert!(
            err.contains("`r` = 1000000000") && err.contains("b [96, 4]"),
            "{err}"
        );
        assert!(check_size_agrees("r", 97, &lora).is_err());
        assert!(check_size_agrees("r", 96, &lora).is_ok());
        assert!(check_size_agrees("r", 0, &lora)
            .unwrap_err()
            .contains("at least 1"));
        assert!(check_size_agrees("r", 4, &[])
            .unwrap_err()
            .contains("no tensors"));
    }

    #[test]
    fn unused_keys_are_those_the_adapter_lacks() {
        assert_eq!(
            unused_keys(["x", "b", "a"], ["a", "b", "c"]),
            vec!["x".to_string()]
        );
    }
}
