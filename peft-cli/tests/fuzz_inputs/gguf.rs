//! Family 3: GGUF files. A one-layer LLaMA GGUF (metadata, a byte-level BPE vocabulary, f32 tensors) is
//! written here with candle's writer, then edited: a header field (a count, a string or array length, a
//! value type, a tensor's rank, dimension, type or offset) set to a hostile value; a metadata value replaced,
//! dropped or added (block count, widths, heads, epsilon, alignment, vocabulary); a tensor dropped, added,
//! reshaped or stored in another type; or raw bytes. Each file is opened with `peft_models::gguf::load_gguf`,
//! as `peft` opens a `.gguf`; a model that opens runs forward once.

use std::io::Cursor;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use peft_core::hooks::NoHooks;

use super::mutate::{self, Rng, HOSTILE_U64};
use super::{Case, Job};

const VOCAB: [&str; 8] = [
    "<|endoftext|>",
    "<|im_start|>",
    "a",
    "b",
    "c",
    "Ġ",
    "ab",
    "Ġab",
];
const HIDDEN: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const INNER: usize = 12;

/// A folder the mutated files are written into.
pub struct Ctx {
    dir: tempfile::TempDir,
}

/// A fresh scratch folder.
pub fn setup() -> Ctx {
    Ctx {
        dir: tempfile::tempdir().unwrap(),
    }
}

/// The llama metadata of the tiny file, editable.
fn metadata() -> Vec<(String, Value)> {
    let strs = |v: &[&str]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.block_count".into(), Value::U32(1)),
        ("llama.context_length".into(), Value::U32(64)),
        ("llama.embedding_length".into(), Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length".into(), Value::U32(INNER as u32)),
        (
            "llama.attention.head_count".into(),
            Value::U32(HEADS as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(KV_HEADS as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), strs(&VOCAB)),
        ("tokenizer.ggml.merges".into(), strs(&["a b", "Ġ ab"])),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array([3, 3, 1, 1, 1, 1, 1, 1].map(Value::I32).to_vec()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(0)),
    ]
}

/// The tensors of the tiny file, by GGUF name, with small distinct values.
fn tensors() -> Vec<(String, Vec<usize>)> {
    let v = VOCAB.len();
    let hd = HIDDEN / HEADS;
    [
        ("token_embd.weight", vec![v, HIDDEN]),
        ("blk.0.attn_norm.weight", vec![HIDDEN]),
        ("blk.0.attn_q.weight", vec![HEADS * hd, HIDDEN]),
        ("blk.0.attn_k.weight", vec![KV_HEADS * hd, HIDDEN]),
        ("blk.0.attn_v.weight", vec![KV_HEADS * hd, HIDDEN]),
        ("blk.0.attn_output.weight", vec![HIDDEN, HIDDEN]),
        ("blk.0.ffn_norm.weight", vec![HIDDEN]),
        ("blk.0.ffn_gate.weight", vec![INNER, HIDDEN]),
        ("blk.0.ffn_up.weight", vec![INNER, HIDDEN]),
        ("blk.0.ffn_down.weight", vec![HIDDEN, INNER]),
        ("output_norm.weight", vec![HIDDEN]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect()
}

/// The bytes of a GGUF file with `metadata` and `tensors` (stored as `dtype`).
fn write(
    metadata: &[(String, Value)],
    tensors: &[(String, Vec<usize>)],
    dtype: GgmlDType,
) -> Option<Vec<u8>> {
    let q: Vec<(String, QTensor)> = tensors
        .iter()
        .enumerate()
        .map(|(salt, (n, shape))| {
            let count: usize = shape.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|i| (((i * 31 + salt * 17) % 23) as f32 - 11.0) / 20.0)
                .collect();
            let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).ok()?;
            Some((n.clone(), QTensor::quantize(&t, dtype).ok()?))
        })
        .collect::<Option<_>>()?;
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let qr: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &qr).ok()?;
    Some(out.into_inner())
}

/// The file unchanged (it must open), then `n` seeded mutations.
pub fn cases(seed: u64, n: usize) -> impl Iterator<Item = Case<Ctx>> {
    let original =
        write(&metadata(), &tensors(), GgmlDType::F32).expect("the tiny GGUF is written");
    let fields = header_fields(&original);
    let unchanged = {
        let bytes = original.clone();
        Case {
            name: "gguf: unchanged".to_string(),
            run: Box::new(move |ctx: &Ctx| {
                let r = try_open(ctx, &bytes);
                assert!(r.is_ok(), "the unmutated GGUF must open: {r:?}");
                r
            }) as Job<Ctx>,
        }
    };
    let mut rng = Rng::new(seed);
    let mutated = (0..n).map(move |i| {
        let (bytes, what) = match rng.below(10) {
            0..=3 => mutate_field(&mut rng, &original, &fields),
            4..=6 => mutate_metadata(&mut rng),
            7 => mutate_tensors(&mut rng),
            _ => {
                let mut b = original.clone();
                // Mostly inside the header, where the structure is.
                let what = if rng.chance(0.8) {
                    let cut = header_end(&fields).min(b.len());
                    let mut head = b[..cut].to_vec();
                    let w = mutate::mutate_bytes(&mut rng, &mut head);
                    head.extend_from_slice(&b[cut..]);
                    b = head;
                    format!("header bytes: {w}")
                } else {
                    mutate::mutate_bytes(&mut rng, &mut b)
                };
                (b, what)
            }
        };
        Case {
            name: format!("gguf #{i}: {what}"),
            run: Box::new(move |ctx: &Ctx| try_open(ctx, &bytes)) as Job<Ctx>,
        }
    });
    std::iter::once(unchanged).chain(mutated)
}

/// Writes the file and opens it; a model that opens runs forward on a short prompt.
fn try_open(ctx: &Ctx, bytes: &[u8]) -> Result<(), String> {
    let path = ctx.dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    let loaded = peft_models::gguf::load_gguf(&path, &Device::Cpu).map_err(|e| e.to_string())?;
    let batch = super::configs::probe_batch();
    loaded
        .model
        .forward(&batch, &NoHooks)
        .map_err(|e| format!("forward after opening: {e}"))?;
    Ok(())
}

/// What a header field holds, for choosing hostile values of the right kind.
#[derive(Clone, Copy, Debug)]
enum Field {
    TensorCount,
    KvCount,
    StringLength,
    ValueType,
    ArrayType,
    ArrayLength,
    Scalar(u32),
    Rank,
    Dim,
    GgmlType,
    Offset,
}

/// A header field: where it is, how wide, what it holds, and a label (`kv llama.block_count value`).
struct Located {
    at: usize,
    width: usize,
    kind: Field,
    label: String,
}

/// Walks the header of a well-formed GGUF v2/v3 file, listing its fields.
fn header_fields(b: &[u8]) -> Vec<Located> {
    let mut out = Vec::new();
    let mut p = 8; // magic and version
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let push = |out: &mut Vec<Located>, at, width, kind, label: String| {
        out.push(Located {
            at,
            width,
            kind,
            label,
        })
    };
    let tensor_count = u64_at(p);
    push(&mut out, p, 8, Field::TensorCount, "tensor count".into());
    let kv_count = u64_at(p + 8);
    push(&mut out, p + 8, 8, Field::KvCount, "metadata count".into());
    p += 16;
    let string = |p: &mut usize, out: &mut Vec<Located>, label: &str| -> String {
        let n = u64_at(*p);
        out.push(Located {
            at: *p,
            width: 8,
            kind: Field::StringLength,
            label: format!("{label} length"),
        });
        let s = String::from_utf8_lossy(&b[*p + 8..*p + 8 + n]).into_owned();
        *p += 8 + n;
        s
    };
    fn value(b: &[u8], p: &mut usize, ty: u32, out: &mut Vec<Located>, label: &str, depth: usize) {
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
        let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
        let width = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                let n = u64_at(*p);
                if depth == 0 {
                    out.push(Located {
                        at: *p,
                        width: 8,
                        kind: Field::StringLength,
                        label: format!("{label} string length"),
                    });
                }
                *p += 8 + n;
                return;
            }
            9 => {
                let inner = u32_at(*p);
                out.push(Located {
                    at: *p,
                    width: 4,
                    kind: Field::ArrayType,
                    label: format!("{label} array type"),
                });
                let n = u64_at(*p + 4);
                out.push(Located {
                    at: *p + 4,
                    width: 8,
                    kind: Field::ArrayLength,
                    label: format!("{label} array length"),
                });
                *p += 12;
                for i in 0..n {
                    // Only the first element of an array is a target of its own: the rest are alike.
                    let mut sink = Vec::new();
                    let target = if i == 0 { &mut *out } else { &mut sink };
                    value(b, p, inner, target, &format!("{label}[0]"), depth + 1);
                }
                return;
            }
            _ => return,
        };
        out.push(Located {
            at: *p,
            width,
            kind: Field::Scalar(ty),
            label: format!("{label} value"),
        });
        *p += width;
    }
    for _ in 0..kv_count {
        let key = string(&mut p, &mut out, "key");
        let ty = u32_at(p);
        push(&mut out, p, 4, Field::ValueType, format!("kv {key} type"));
        p += 4;
        value(b, &mut p, ty, &mut out, &format!("kv {key}"), 0);
    }
    for _ in 0..tensor_count {
        let name = string(&mut p, &mut out, "tensor name");
        let rank = u32_at(p) as usize;
        push(&mut out, p, 4, Field::Rank, format!("tensor {name} rank"));
        p += 4;
        for d in 0..rank {
            push(&mut out, p, 8, Field::Dim, format!("tensor {name} dim {d}"));
            p += 8;
        }
        push(
            &mut out,
            p,
            4,
            Field::GgmlType,
            format!("tensor {name} type"),
        );
        push(
            &mut out,
            p + 4,
            8,
            Field::Offset,
            format!("tensor {name} offset"),
        );
        p += 12;
    }
    out
}

/// Where the header's last field ends.
fn header_end(fields: &[Located]) -> usize {
    fields.iter().map(|f| f.at + f.width).max().unwrap_or(0)
}

/// One header field of `original` set to a hostile value of its width.
fn mutate_field(rng: &mut Rng, original: &[u8], fields: &[Located]) -> (Vec<u8>, String) {
    let f = &fields[rng.below(fields.len())];
    let old = match f.width {
        1 => original[f.at] as u64,
        2 => u16::from_le_bytes(original[f.at..f.at + 2].try_into().unwrap()) as u64,
        4 => u32::from_le_bytes(original[f.at..f.at + 4].try_into().unwrap()) as u64,
        _ => u64::from_le_bytes(original[f.at..f.at + 8].try_into().unwrap()),
    };
    let new: u64 = match f.kind {
        Field::ValueType | Field::ArrayType => {
            *rng.pick(&[0, 4, 5, 6, 7, 8, 9, 10, 12, 13, 99, u32::MAX as u64])
        }
        Field::GgmlType => *rng.pick(&[0, 1, 2, 3, 8, 12, 16, 24, 28, 30, 31, 40, u32::MAX as u64]),
        Field::Rank => *rng.pick(&[0, 1, 2, 3, 4, 5, 64, u32::MAX as u64]),
        Field::Scalar(6) => {
            let v: f32 = *rng.pick(&[f32::NAN, f32::INFINITY, -1.0, 0.0, -1e-5, 1e30, 3.0]);
            v.to_bits() as u64
        }
        _ => match rng.below(4) {
            0 => old.wrapping_add(1),
            1 => old.wrapping_sub(1),
            2 => old.wrapping_add(32),
            _ => *rng.pick(HOSTILE_U64),
        },
    };
    let mut b = original.to_vec();
    let le = new.to_le_bytes();
    b[f.at..f.at + f.width].copy_from_slice(&le[..f.width]);
    let shown = match f.kind {
        Field::Scalar(6) => format!("{}", f32::from_bits(new as u32)),
        _ => format!(
            "{}",
            new & if f.width == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * f.width)) - 1
            }
        ),
    };
    (b, format!("{} {old} -> {shown} (byte {})", f.label, f.at))
}

/// A hostile metadata value of any GGUF type.
fn hostile_value(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::U32(*rng.pick(&[0, 1, 2, 3, 7, 1000, 1 << 20, u32::MAX])),
        1 => Value::U64(*rng.pick(HOSTILE_U64)),
        2 => Value::I32(*rng.pick(&[-1, 0, i32::MIN, i32::MAX])),
        3 => Value::I64(*rng.pick(&[-1, i64::MIN, i64::MAX])),
        4 => Value::F32(*rng.pick(&[f32::NAN, f32::INFINITY, -1.0, 0.0, -1e-5, 1e30])),
        5 => Value::F64(*rng.pick(&[f64::NAN, -1.0, 1e300])),
        6 => Value::String(rng.pick(&["", "llama", "gpt2", "qwen2", "x"]).to_string()),
        7 => Value::Bool(rng.chance(0.5)),
        _ => Value::Array(match rng.below(3) {
            0 => vec![],
            1 => vec![Value::String("a".into()); 3],
            _ => vec![Value::U32(1), Value::String("a".into())],
        }),
    }
}

/// The tiny file with one metadata entry replaced, dropped, or added.
fn mutate_metadata(rng: &mut Rng) -> (Vec<u8>, String) {
    let mut md = metadata();
    let what = match rng.below(6) {
        0 => {
            let i = rng.below(md.len());
            let (k, _) = md.remove(i);
            format!("metadata {k} dropped")
        }
        1 => {
            let v = Value::U32(*rng.pick(&[0, 1, 3, 7, 1 << 16, u32::MAX]));
            let shown = format!("{v:?}");
            md.push(("general.alignment".into(), v));
            format!("general.alignment = {shown}")
        }
        2 => {
            // The vocabulary and its companions disagree.
            let i = md
                .iter()
                .position(|(k, _)| k.starts_with("tokenizer.ggml.t"))
                .unwrap()
                + rng.below(3);
            let (k, v) = &mut md[i];
            if let Value::Array(items) = v {
                if rng.chance(0.5) && !items.is_empty() {
                    items.pop();
                    format!("{k}: last entry dropped")
                } else {
                    items.clear();
                    format!("{k} = []")
                }
            } else {
                *v = hostile_value(rng);
                format!("{k} = {v:?}")
            }
        }
        _ => {
            let i = rng.below(md.len());
            let v = hostile_value(rng);
            let shown = mutate::truncate(&format!("{v:?}"), 40);
            md[i].1 = v;
            format!("{} = {shown}", md[i].0)
        }
    };
    match write(&md, &tensors(), GgmlDType::F32) {
        Some(b) => (b, format!("metadata: {what}")),
        None => (
            Vec::new(),
            format!("metadata: {what} (not writable: an empty file)"),
        ),
    }
}

/// The tiny file with one tensor dropped, added, reshaped, or stored in another type.
fn mutate_tensors(rng: &mut Rng) -> (Vec<u8>, String) {
    let mut ts = tensors();
    let mut dtype = GgmlDType::F32;
    let i = rng.below(ts.len());
    let what = match rng.below(5) {
        0 => format!("tensor {} dropped", ts.remove(i).0),
        1 => {
            let extra = ts[i].0.replacen("blk.0", "blk.1", 1);
            ts.push((extra.clone(), ts[i].1.clone()));
            format!("tensor {extra} added")
        }
        2 => {
            ts[i].1.reverse();
            format!("tensor {} transposed", ts[i].0)
        }
        3 => {
            ts[i].1[0] += 1;
            format!("tensor {} one row longer", ts[i].0)
        }
        _ => {
            dtype = *rng.pick(&[GgmlDType::F16, GgmlDType::BF16, GgmlDType::Q8_0]);
            format!("tensors stored as {dtype:?}")
        }
    };
    match write(&metadata(), &ts, dtype) {
        Some(b) => (b, format!("tensors: {what}")),
        None => (
            Vec::new(),
            format!("tensors: {what} (not writable: an empty file)"),
        ),
    }
}
