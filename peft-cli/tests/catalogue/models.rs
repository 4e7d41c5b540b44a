//! Catalogue cases: models. A model folder or GGUF file whose config and tensors disagree used to load with
//! weights ignored or misread and exit 0 (a config saying fewer layers than the file holds, an integer tensor
//! read as weights, a misaligned GGUF offset, a negative norm epsilon that made NaN logits, which `peft logits`
//! then ranked first), or to abort asking for memory (`n_layer` = 1e12). Each is now refused by `peft logits`
//! before anything is computed, naming the key or tensor; nothing is printed on stdout.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::common::{fixture, ok_json, run_peft};
use crate::refused;

/// A copy of the tiny GPT-2 fixture (2 layers, hidden 32) in a fresh folder, its config edited by `edit`
/// and its tensors by `tensors`.
fn tiny_gpt2_with(
    edit: impl FnOnce(&mut serde_json::Value),
    tensors: impl FnOnce(&mut HashMap<String, Tensor>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = PathBuf::from(fixture("tiny-gpt2"));
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let mut weights =
        candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
    tensors(&mut weights);
    candle_core::safetensors::save(&weights, dir.path().join("model.safetensors")).unwrap();
    dir
}

/// `peft logits --model <model> --ids 1,2`.
fn logits(model: &Path) -> std::process::Output {
    run_peft(&[
        "logits",
        "--model",
        &model.display().to_string(),
        "--ids",
        "1,2",
    ])
}

#[test]
fn the_unedited_tiny_gpt2_copy_loads() {
    // The control for the cases below: the copy itself is a good model.
    let dir = tiny_gpt2_with(|_| {}, |_| {});
    let json = ok_json(&logits(dir.path()));
    assert_eq!(json["top_k"].as_array().unwrap().len(), 20);
}

#[test]
fn config_with_fewer_layers_than_the_checkpoint_is_refused() {
    let dir = tiny_gpt2_with(|c| c["n_layer"] = 1.into(), |_| {});
    refused(
        &logits(dir.path()),
        &["`n_layer` = 1", "holds 2 layers", "config.json"],
        &[],
    );
}

#[test]
fn n_layer_of_a_trillion_is_refused_before_any_allocation() {
    let dir = tiny_gpt2_with(|c| c["n_layer"] = 1_000_000_000_000u64.into(), |_| {});
    refused(
        &logits(dir.path()),
        &["`n_layer` = 1000000000000", "holds 2 layers"],
        &[],
    );
}

#[test]
fn hidden_size_of_a_trillion_is_refused_by_key() {
    let dir = tiny_gpt2_with(|c| c["n_embd"] = 1_000_000_000_000u64.into(), |_| {});
    refused(&logits(dir.path()), &["`n_embd`", "out of range"], &[]);
}

#[test]
fn an_i32_tensor_among_the_weights_is_refused_by_name_and_dtype() {
    let dir = tiny_gpt2_with(
        |_| {},
        |w| {
            let bias = w["transformer.ln_f.bias"].to_dtype(DType::I32).unwrap();
            w.insert("transformer.ln_f.bias".into(), bias);
        },
    );
    refused(
        &logits(dir.path()),
        &["transformer.ln_f.bias", "I32", "floating-point"],
        &[],
    );
}

#[test]
fn an_unused_extra_tensor_is_refused_by_name() {
    let dir = tiny_gpt2_with(
        |_| {},
        |w| {
            let extra = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
            w.insert("transformer.adapter.weight".into(), extra);
        },
    );
    refused(
        &logits(dir.path()),
        &["1 tensor(s)", "transformer.adapter.weight", "does not use"],
        &[],
    );
}

#[test]
fn negative_norm_epsilon_is_refused_by_key() {
    let dir = tiny_gpt2_with(|c| c["layer_norm_epsilon"] = (-1e-5).into(), |_| {});
    refused(
        &logits(dir.path()),
        &["`layer_norm_epsilon`", "above 0", "config.json"],
        &[],
    );
}

#[test]
fn nan_logits_are_an_error_never_ranked() {
    // NaN weights still load (the file is whole); the logits they make are refused, not ranked first.
    let dir = tiny_gpt2_with(
        |_| {},
        |w| {
            let nan = (w["transformer.ln_f.weight"].clone() * f64::NAN).unwrap();
            w.insert("transformer.ln_f.weight".into(), nan);
        },
    );
    refused(
        &logits(dir.path()),
        &["not finite", "position 1", "NaN"],
        &[],
    );
}

const HIDDEN: usize = 8;
const VOCAB: [&str; 4] = ["<|endoftext|>", "a", "b", "ab"];

/// A one-block llama GGUF (f32 tensors, a byte-level BPE tokenizer in the metadata) with `block_count`
/// blocks declared and `extra` metadata entries, written to `dir/name`.
fn tiny_gguf(dir: &Path, name: &str, block_count: Value, extra: Vec<(&str, Value)>) -> PathBuf {
    let strs = |v: &[&str]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
    let mut md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", block_count),
        ("llama.context_length", Value::U32(32)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Value::U32(16)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strs(&VOCAB)),
        ("tokenizer.ggml.merges", strs(&["a b"])),
        (
            "tokenizer.ggml.token_type",
            Value::Array([3, 1, 1, 1].map(Value::I32).to_vec()),
        ),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ];
    md.extend(extra);
    let v = VOCAB.len();
    let shapes: [(&str, Vec<usize>); 11] = [
        ("token_embd.weight", vec![v, HIDDEN]),
        ("blk.0.attn_norm.weight", vec![HIDDEN]),
        ("blk.0.attn_q.weight", vec![HIDDEN, HIDDEN]),
        ("blk.0.attn_k.weight", vec![HIDDEN, HIDDEN]),
        ("blk.0.attn_v.weight", vec![HIDDEN, HIDDEN]),
        ("blk.0.attn_output.weight", vec![HIDDEN, HIDDEN]),
        ("blk.0.ffn_norm.weight", vec![HIDDEN]),
        ("blk.0.ffn_gate.weight", vec![16, HIDDEN]),
        ("blk.0.ffn_up.weight", vec![16, HIDDEN]),
        ("blk.0.ffn_down.weight", vec![HIDDEN, 16]),
        ("output_norm.weight", vec![HIDDEN]),
    ];
    let tensors: Vec<(&str, QTensor)> = shapes
        .iter()
        .enumerate()
        .map(|(i, (n, shape))| {
            let count: usize = shape.iter().product();
            let values: Vec<f32> = (0..count)
                .map(|j| (((j * 7 + i * 3) % 11) as f32 - 5.0) / 10.0)
                .collect();
            let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).unwrap();
            (*n, QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let path = dir.join(name);
    gguf_file::write(&mut File::create(&path).unwrap(), &md_refs, &t_refs).unwrap();
    path
}

/// Moves the data offset recorded for `tensor` in the GGUF header at `path` by `delta` bytes.
fn shift_offset(path: &Path, tensor: &str, delta: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    // A v2 tensor info: name length (u64), name, dimension count (u32), dimensions (u64 each), dtype (u32),
    // offset (u64).
    let mut needle = (tensor.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(tensor.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("the tensor's info is in the header")
        + needle.len();
    let dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let field = at + 4 + 8 * dims + 4;
    let offset = u64::from_le_bytes(bytes[field..field + 8].try_into().unwrap());
    bytes[field..field + 8].copy_from_slice(&(offset + delta).to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn the_tiny_gguf_loads() {
    // The control for the GGUF cases: the file as written is a good model.
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "tiny.gguf", Value::U32(1), vec![]);
    let json = ok_json(&logits(&path));
    assert_eq!(json["top_k"].as_array().unwrap().len(), VOCAB.len());
}

#[test]
fn a_misaligned_gguf_tensor_offset_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "misaligned.gguf", Value::U32(1), vec![]);
    shift_offset(&path, "blk.0.ffn_up.weight", 4);
    refused(
        &logits(&path),
        &["blk.0.ffn_up.weight", "alignment 32", "misaligned.gguf"],
        &[],
    );
}

#[test]
fn a_gguf_tensor_past_the_end_of_the_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "short.gguf", Value::U32(1), vec![]);
    shift_offset(&path, "output_norm.weight", 1 << 20);
    refused(
        &logits(&path),
        &[
            "output_norm.weight",
            "past the end of the file",
            "short.gguf",
        ],
        &[],
    );
}

#[test]
fn a_gguf_block_count_above_its_tensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "blocks.gguf", Value::U32(2), vec![]);
    refused(
        &logits(&path),
        &["`llama.block_count` = 2", "holds 1 blocks", "blocks.gguf"],
        &[],
    );
}

#[test]
fn a_gguf_block_count_of_a_trillion_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(
        dir.path(),
        "huge.gguf",
        Value::U64(1_000_000_000_000),
        vec![],
    );
    refused(
        &logits(&path),
        &["`llama.block_count` = 1000000000000", "holds 1 blocks"],
        &[],
    );
}

#[test]
fn a_gguf_alignment_of_zero_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(
        dir.path(),
        "zero.gguf",
        Value::U32(1),
        vec![("general.alignment", Value::U32(0))],
    );
    refused(
        &logits(&path),
        &["general.alignment", "power of two", "zero.gguf"],
        &[],
    );
}

#[test]
fn a_gguf_negative_rms_epsilon_is_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(
        dir.path(),
        "eps.gguf",
        Value::U32(1),
        vec![("llama.attention.layer_norm_rms_epsilon", Value::F32(-1e-5))],
    );
    refused(
        &logits(&path),
        &[
            "llama.attention.layer_norm_rms_epsilon",
            "above 0",
            "eps.gguf",
        ],
        &[],
    );
}
