//! Edits of a safetensors file that know its layout: an 8-byte little-endian header length, a JSON header
//! (`name -> {dtype, shape, data_offsets}`), then the data. Shapes, dtypes and offsets are the fields a loader
//! must check before it sizes a buffer from them.

use serde_json::Value as Json;

use super::mutate::{self, Rng, HOSTILE_U64};

/// The dtypes a header may name (and some it may not).
const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I32", "I64", "U8", "I8", "BOOL", "F8_E4M3", "U64", "F4", "XX",
];

/// The header and data of a well-formed file, or `None` for bytes that are not one.
fn split(bytes: &[u8]) -> Option<(Json, &[u8])> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    Some((header, &bytes[8 + n..]))
}

/// A file with `header` (as given) and `data`, its length field right.
fn join(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// One edit of the safetensors file `bytes`, described.
pub fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    let Some((mut header, data)) = split(bytes) else {
        return mutate::mutate_bytes(rng, bytes);
    };
    let data = data.to_vec();
    let names: Vec<String> = header
        .as_object()
        .map(|m| m.keys().filter(|k| *k != "__metadata__").cloned().collect())
        .unwrap_or_default();
    if names.is_empty() {
        return mutate::mutate_bytes(rng, bytes);
    }
    let name = rng.pick(&names).clone();
    let short = name.rsplit("model.").next().unwrap_or(&name).to_string();
    let what = match rng.below(10) {
        // The length field says something else than the header's length.
        0 => {
            let n = header_len(bytes);
            let v = match rng.below(3) {
                0 => *rng.pick(HOSTILE_U64),
                1 => n.wrapping_add(1 + rng.below(8) as u64),
                _ => n.saturating_sub(1 + rng.below(8) as u64),
            };
            bytes[..8].copy_from_slice(&v.to_le_bytes());
            return format!("header length field = {v} (was {n})");
        }
        1 | 2 => {
            let entry = &mut header[&name];
            let shape = entry["shape"].as_array_mut();
            match shape {
                Some(dims) if !dims.is_empty() && rng.chance(0.7) => {
                    let i = rng.below(dims.len());
                    let v = if rng.chance(0.8) {
                        Json::from(*rng.pick(HOSTILE_U64))
                    } else {
                        Json::from(-1)
                    };
                    dims[i] = v.clone();
                    format!("{short}: shape[{i}] = {v}")
                }
                Some(dims) => {
                    if rng.chance(0.5) {
                        dims.push(Json::from(1 + rng.below(3)));
                        format!("{short}: a dimension added to the shape")
                    } else {
                        dims.clear();
                        format!("{short}: shape = []")
                    }
                }
                None => format!("{short}: (no shape)"),
            }
        }
        3 => {
            let dtype = *rng.pick(DTYPES);
            header[&name]["dtype"] = Json::from(dtype);
            format!("{short}: dtype = {dtype}")
        }
        4 | 5 => {
            let offsets = &mut header[&name]["data_offsets"];
            let (a, b) = (
                offsets[0].as_u64().unwrap_or(0),
                offsets[1].as_u64().unwrap_or(0),
            );
            let (a2, b2) = match rng.below(5) {
                0 => (b, a),
                1 => (a, *rng.pick(HOSTILE_U64)),
                2 => (*rng.pick(HOSTILE_U64), b),
                3 => (a, a),
                _ => (a + 4, b + 4),
            };
            *offsets = Json::from(vec![a2, b2]);
            format!("{short}: data_offsets [{a}, {b}] -> [{a2}, {b2}]")
        }
        6 => {
            let m = header.as_object_mut().unwrap();
            let entry = m.remove(&name).unwrap();
            if rng.chance(0.5) {
                format!("tensor {short} removed")
            } else {
                let renamed = rename_tensor(rng, &name);
                m.insert(renamed.clone(), entry);
                format!("tensor {short} renamed to {renamed}")
            }
        }
        7 => {
            let m = header.as_object_mut().unwrap();
            let entry = m[&name].clone();
            let extra = rename_tensor(rng, &name);
            m.insert(extra.clone(), entry);
            format!("an extra tensor {extra} sharing {short}'s bytes")
        }
        8 => {
            // A value in the data made non-finite, or the data cut short.
            let mut data = data;
            if !data.is_empty() && rng.chance(0.6) {
                let at = rng.below(data.len() / 4) * 4;
                let bits: u32 = *rng.pick(&[0x7fc0_0000, 0x7f80_0000, 0xff80_0000, 0x7f7f_ffff]);
                if at + 4 <= data.len() {
                    data[at..at + 4].copy_from_slice(&bits.to_le_bytes());
                }
                *bytes = join(&serde_json::to_string(&header).unwrap(), &data);
                return format!("data word at {at} = {bits:#010x}");
            }
            let cut = rng.below(data.len().max(1));
            data.truncate(cut);
            *bytes = join(&serde_json::to_string(&header).unwrap(), &data);
            return format!("data cut to {cut} bytes");
        }
        _ => mutate::mutate_json(rng, &mut header, true),
    };
    *bytes = join(&serde_json::to_string(&header).unwrap(), &data);
    format!("header: {what}")
}

/// The header length field of `bytes`.
fn header_len(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

/// Another plausible tensor name: another layer, the other LoRA factor, or a stray suffix.
fn rename_tensor(rng: &mut Rng, name: &str) -> String {
    match rng.below(4) {
        0 if name.contains(".0.") => name.replacen(".0.", ".7.", 1),
        1 if name.contains("lora_A") => name.replace("lora_A", "lora_B"),
        2 => format!("{name}.extra"),
        _ => name.replacen("weight", "bias", 1),
    }
}

/// The file with every dimension equal to `old` set to `new` and the data rebuilt to fit (f32 tensors
/// filled with a small constant, others with zeros): a file that agrees with a config whose size was
/// changed to `new`. `None` for bytes that are not a safetensors file.
pub fn resized(bytes: &[u8], old: u64, new: u64) -> Option<Vec<u8>> {
    let (mut header, _) = split(bytes)?;
    let mut data = Vec::new();
    for (name, entry) in header.as_object_mut()? {
        if name == "__metadata__" {
            continue;
        }
        let dims: Vec<u64> = entry["shape"]
            .as_array()?
            .iter()
            .map(|d| d.as_u64().map(|d| if d == old { new } else { d }))
            .collect::<Option<_>>()?;
        let width = match entry["dtype"].as_str()? {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        let count = dims.iter().product::<u64>() as usize;
        let start = data.len();
        if width == 4 && entry["dtype"] == "F32" {
            data.extend((0..count).flat_map(|_| 0.01f32.to_le_bytes()));
        } else {
            data.resize(start + count * width, 0);
        }
        entry["shape"] = Json::from(dims);
        entry["data_offsets"] = Json::from(vec![start, data.len()]);
    }
    Some(join(&serde_json::to_string(&header).ok()?, &data))
}
