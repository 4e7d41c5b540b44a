//! Checks of a GGUF file's layout made before any tensor is read: the alignment the file declares
//! (`general.alignment`, default 32) is a power of two, every tensor's offset is a multiple of it, and every
//! tensor's data lies inside the file. A header that breaks these is refused naming the tensor, rather than
//! read from the wrong bytes or allocated for data the file does not hold.
//!
//! ```
//! use std::collections::HashMap;
//! use peft_models::gguf_layout::declared_alignment;
//! assert_eq!(declared_alignment(&HashMap::new()).unwrap(), 32);
//! ```

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{ModelError, Result};

/// The alignment GGUF files use unless `general.alignment` says otherwise.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The alignment the metadata declares, read as candle reads it (an unsigned or non-negative integer; any
/// other value means the default), refused unless it is a power of two.
pub fn declared_alignment(md: &HashMap<String, Value>) -> Result<u64> {
    let alignment = match md.get("general.alignment") {
        Some(Value::U8(v)) => *v as u64,
        Some(Value::U16(v)) => *v as u64,
        Some(Value::U32(v)) => *v as u64,
        Some(Value::I8(v)) if *v >= 0 => *v as u64,
        Some(Value::I16(v)) if *v >= 0 => *v as u64,
        Some(Value::I32(v)) if *v >= 0 => *v as u64,
        _ => DEFAULT_ALIGNMENT,
    };
    check_alignment(alignment)?;
    Ok(alignment)
}

fn check_alignment(alignment: u64) -> Result<()> {
    if !alignment.is_power_of_two() {
        return Err(ModelError::Config(format!(
            "GGUF metadata `general.alignment` = {alignment} is not a power of two (GGUF files use 32): the header \
             is corrupt; download the file again"
        )));
    }
    Ok(())
}

/// Refuses a file whose tensors are misaligned or reach past its end (`file_size` bytes), checking the
/// tensors in name order so that the error is the same on every run.
pub fn check_tensor_layout(content: &Content, file_size: u64) -> Result<()> {
    let alignment = declared_alignment(&content.metadata)?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let info = &content.tensor_infos[name];
        if !info.offset.is_multiple_of(alignment) {
            return Err(ModelError::Config(format!(
                "tensor `{name}` starts at offset {} of the data section, not a multiple of the file's alignment \
                 {alignment} (`general.alignment`): the header is corrupt; download the file again",
                info.offset
            )));
        }
        let dims = info.shape.dims();
        let elems = dims
            .iter()
            .try_fold(1usize, |n, d| n.checked_mul(*d))
            .ok_or_else(|| {
                ModelError::Config(format!(
                    "tensor `{name}` has shape {dims:?}, whose size overflows: the header is corrupt"
                ))
            })?;
        if elems == 0 {
            // candle reads an empty tensor through a dangling pointer (an abort in a debug build).
            return Err(ModelError::Config(format!(
                "tensor `{name}` has shape {dims:?}, with no elements: no weight of a model is empty, so the \
                 header is corrupt; download the file again"
            )));
        }
        let block = info.ggml_dtype.block_size();
        if !elems.is_multiple_of(block) {
            return Err(ModelError::Config(format!(
                "tensor `{name}` has {elems} elements, not a multiple of the {block}-element blocks of its type \
                 {:?}: the header is corrupt",
                info.ggml_dtype
            )));
        }
        let bytes = (elems / block) as u128 * info.ggml_dtype.type_size() as u128;
        let start = content.tensor_data_offset as u128 + info.offset as u128;
        if start + bytes > file_size as u128 {
            return Err(ModelError::Config(format!(
                "tensor `{name}` needs {bytes} bytes at byte {start}, past the end of the file ({file_size} bytes): \
                 the file is truncated or its header corrupt; download it again"
            )));
        }
    }
    Ok(())
}

/// The `general.alignment` value of a GGUF file, read from its header without candle, where the header can be
/// walked and holds one: candle divides by it while reading the header, so a zero must be refused before.
/// `None` where the file has no such key or the walk fails (candle's reader then reports the problem).
pub fn peek_alignment<R: Read + Seek>(reader: &mut R) -> Option<u64> {
    let start = reader.stream_position().ok()?;
    let found = walk_for_alignment(reader);
    reader.seek(SeekFrom::Start(start)).ok()?;
    found
}

fn walk_for_alignment<R: Read>(r: &mut R) -> Option<u64> {
    let magic = read_u32(r)?;
    if magic != 0x4655_4747 {
        return None;
    }
    let version = read_u32(r)?;
    let wide = version >= 2; // v1 stores counts and lengths as u32, later versions as u64
    let len = |r: &mut R| -> Option<u64> {
        if wide {
            read_u64(r)
        } else {
            read_u32(r).map(u64::from)
        }
    };
    let _tensors = len(r)?;
    let kv_count = len(r)?;
    for _ in 0..kv_count {
        let key_len = len(r)?;
        if key_len > 1 << 16 {
            return None;
        }
        let mut key = vec![0u8; key_len as usize];
        r.read_exact(&mut key).ok()?;
        let value_type = read_u32(r)?;
        if key == b"general.alignment" {
            return match value_type {
                0 | 1 => read_n(r, 1),
                2 | 3 => read_n(r, 2),
                4 | 5 => read_n(r, 4),
                _ => None,
            };
        }
        skip_value(r, value_type, wide, 0)?;
    }
    None
}

fn skip_value<R: Read>(r: &mut R, value_type: u32, wide: bool, depth: u32) -> Option<()> {
    let fixed = |t: u32| match t {
        0 | 1 | 7 => Some(1u64),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    let len = |r: &mut R| -> Option<u64> {
        if wide {
            read_u64(r)
        } else {
            read_u32(r).map(u64::from)
        }
    };
    match value_type {
        8 => {
            let n = len(r)?;
            skip(r, n)?;
        }
        9 if depth < 4 => {
            let item = read_u32(r)?;
            let n = len(r)?;
            match fixed(item) {
                Some(size) => skip(r, n.checked_mul(size)?)?,
                None => {
                    for _ in 0..n {
                        skip_value(r, item, wide, depth + 1)?;
                    }
                }
            }
        }
        t => skip(r, fixed(t)?)?,
    }
    Some(())
}

/// Reads past `n` bytes (through the reader's buffer, where a seek would drop it), failing at the file's end.
fn skip<R: Read>(r: &mut R, n: u64) -> Option<()> {
    let copied = std::io::copy(&mut r.by_ref().take(n), &mut std::io::sink()).ok()?;
    (copied == n).then_some(())
}

fn read_n<R: Read>(r: &mut R, n: usize) -> Option<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b[..n]).ok()?;
    Some(u64::from_le_bytes(b))
}

fn read_u32<R: Read>(r: &mut R) -> Option<u32> {
    read_n(r, 4).map(|v| v as u32)
}

fn read_u64<R: Read>(r: &mut R) -> Option<u64> {
    read_n(r, 8)
}

/// Refuses a header whose `general.alignment` candle cannot divide by (zero) or that is not a power of two,
/// before candle reads the header.
pub fn precheck_alignment<R: Read + Seek>(reader: &mut R) -> Result<()> {
    match peek_alignment(reader) {
        Some(alignment) => check_alignment(alignment),
        None => Ok(()),
    }
}
