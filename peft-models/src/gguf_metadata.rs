//! Typed reads of a GGUF file's `<arch>.*` metadata, with errors that name the key: what every architecture's
//! config reader (`gguf.rs` for LLaMA, `gguf_gemma3.rs`) needs.
//!
//! ```
//! use std::collections::HashMap;
//! use candle_core::quantized::gguf_file::Value;
//! use peft_models::gguf_metadata::ArchMetadata;
//! let md = HashMap::from([
//!     ("gemma3.block_count".to_string(), Value::U32(18)),
//!     ("gemma3.rope.freq_base".to_string(), Value::F32(1e6)),
//! ]);
//! let m = ArchMetadata::new(&md, "gemma3");
//! assert_eq!(m.required("block_count").unwrap(), 18);
//! assert_eq!(m.float("rope.freq_base").unwrap(), Some(1e6));
//! assert!(m.required("embedding_length").unwrap_err().to_string().contains("gemma3.embedding_length"));
//! ```

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::error::{ModelError, Result};
use crate::gguf_tokenizer::as_i64;

/// The metadata of one architecture (`arch` is the prefix of its keys).
pub struct ArchMetadata<'a> {
    md: &'a HashMap<String, Value>,
    arch: &'a str,
}

impl<'a> ArchMetadata<'a> {
    /// Reads `md`'s keys under `arch.`.
    pub fn new(md: &'a HashMap<String, Value>, arch: &'a str) -> Self {
        ArchMetadata { md, arch }
    }

    /// The full key of `key`.
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }

    /// A non-negative integer, where the file has it.
    pub fn int(&self, key: &str) -> Result<Option<usize>> {
        let full = self.key(key);
        match self.md.get(&full) {
            None => Ok(None),
            Some(v) => as_i64(v)
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    ModelError::Config(format!(
                        "GGUF metadata `{full}` should be a non-negative integer"
                    ))
                }),
        }
    }

    /// A non-negative integer the file must have.
    pub fn required(&self, key: &str) -> Result<usize> {
        self.int(key)?
            .ok_or_else(|| ModelError::Config(format!("GGUF metadata lacks `{}`", self.key(key))))
    }

    /// A float, where the file has it.
    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        let full = self.key(key);
        match self.md.get(&full) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x as f64)),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(_) => Err(ModelError::Config(format!(
                "GGUF metadata `{full}` should be a float"
            ))),
        }
    }

    /// A token id under its full key (`tokenizer.ggml.bos_token_id`), where the file has a valid one.
    pub fn token_id(&self, full_key: &str) -> Option<u32> {
        self.md
            .get(full_key)
            .and_then(as_i64)
            .and_then(|x| u32::try_from(x).ok())
    }

    /// `<arch>.vocab_size`, else the length of the token list (as transformers reads it).
    pub fn vocab_size(&self) -> Result<usize> {
        match self.int("vocab_size")? {
            Some(v) => Ok(v),
            None => match self.md.get("tokenizer.ggml.tokens") {
                Some(Value::Array(tokens)) => Ok(tokens.len()),
                _ => Err(ModelError::Config(
                    "GGUF metadata gives no vocabulary size and no token list".into(),
                )),
            },
        }
    }
}
