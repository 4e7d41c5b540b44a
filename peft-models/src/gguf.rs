//! Loads a LLaMA-architecture GGUF file (llama.cpp's format) as a frozen [`Llama`]: every tensor dequantized
//! to f32, renamed to its Hugging Face name, the Q/K rows put back in Hugging Face's order, the
//! [`LlamaConfig`] read from the metadata and the tokenizer rebuilt from it ([`crate::gguf_tokenizer`]).
//! Hugging Face transformers' GGUF loader is the reference the result must equal.
//!
//! ```no_run
//! use candle_core::Device;
//! let loaded = peft_models::gguf::load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &Device::Cpu)?;
//! let ids = loaded.tokenizer.as_ref().unwrap().encode("Hello", true).unwrap();
//! assert_eq!(loaded.model.spec().architecture, "llama");
//! # let _ = ids;
//! # Ok::<(), peft_models::ModelError>(())
//! ```
//!
//! The pure pieces work without a file:
//!
//! ```
//! use peft_models::gguf::hf_tensor_name;
//! assert_eq!(hf_tensor_name("blk.3.attn_output.weight").as_deref(), Some("model.layers.3.self_attn.o_proj.weight"));
//! assert_eq!(hf_tensor_name("output.weight").as_deref(), Some("lm_head.weight"));
//! assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use peft_core::quantized::QuantizedWeight;

use crate::config::LlamaConfig;
use crate::config_checks::{check_eps, check_sizes, count_layers};
use crate::error::{ModelError, Result};
use crate::gguf_layout::{check_tensor_layout, precheck_alignment};
use crate::gguf_metadata::ArchMetadata;
use crate::gguf_tokenizer::{tokenizer_from_metadata, GgufTokenizer};
use crate::llama::Llama;
use crate::loaded::{LoadOptions, LoadedModel};
use crate::tensor_usage::Allowed;
use crate::weights::WeightMap;

/// Everything a GGUF file holds, converted to this crate's types, before a model is built from it.
#[derive(Debug)]
pub struct GgufCheckpoint {
    /// The configuration, as transformers derives it from the metadata.
    pub config: LlamaConfig,
    /// f32 tensors by Hugging Face name, Q/K rows in Hugging Face order.
    pub weights: WeightMap,
    /// The tokenizer rebuilt from the metadata.
    pub tokenizer: GgufTokenizer,
}

/// Loads a LLaMA GGUF file as a frozen model with its tokenizer; the model is named after the file.
pub fn load_gguf(path: &Path, device: &Device) -> Result<LoadedModel> {
    load_gguf_with(path, device, LoadOptions::default())
}

/// [`load_gguf`] with options (trainable weights for full fine-tuning, weights kept quantized).
pub fn load_gguf_with(path: &Path, device: &Device, options: LoadOptions) -> Result<LoadedModel> {
    if options.trainable_weights && options.keep_quantized {
        return Err(bad_file(
            path,
            "full fine-tuning trains every weight, which a base kept quantized cannot do: load it in f32 \
             (without `quantized = true` / `--keep-quantized`)"
                .into(),
        ));
    }
    let (content, _) = open(path)?;
    if matches!(content.metadata.get("general.architecture"), Some(Value::String(a)) if a == "gemma3")
    {
        return crate::gguf_gemma3::load_gemma3_gguf(path, device, options);
    }
    drop(content);
    let mut ckpt = read_gguf_with(path, device, options.keep_quantized)?;
    ckpt.weights.set_bf16_projections(options.bf16_projections);
    if options.trainable_weights {
        ckpt.weights.make_trainable()?;
    }
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let model = Llama::from_weights(&ckpt.config, &ckpt.weights, &name).map_err(|e| match e {
        ModelError::Config(m) => bad_file(path, m),
        other => other,
    })?;
    Ok(LoadedModel {
        model: Box::new(model),
        eos_token_id: ckpt.tokenizer.eos_token_id.or(ckpt.config.eos_token_id),
        tokenizer: Some(ckpt.tokenizer.tokenizer),
    })
}

/// Reads a LLaMA GGUF file: config, dequantized weights with Hugging Face names, tokenizer.
///
/// Before any tensor is read, the file must be whole: every tensor aligned and inside the file
/// ([`crate::gguf_layout`]), `<arch>.block_count` equal to the blocks the tensors hold, and every tensor one
/// the model uses (or `rope_freqs.weight`, see [`ALLOWED_UNUSED`]).
pub fn read_gguf(path: &Path, device: &Device) -> Result<GgufCheckpoint> {
    read_gguf_with(path, device, false)
}

/// [`read_gguf`], keeping every 2-D weight the file stores in a block format (or f16) in that format where
/// `keep_quantized` (the projections, the embedding table and an untied head); 1-D tensors (norms, biases)
/// are always read as f32. Q/K rows are put back in Hugging Face's order by moving whole rows of blocks.
pub fn read_gguf_with(
    path: &Path,
    device: &Device,
    keep_quantized: bool,
) -> Result<GgufCheckpoint> {
    let (content, mut reader) = open(path)?;
    let md = &content.metadata;
    let has_output = content.tensor_infos.contains_key("output.weight");
    let config = llama_config(md, has_output).map_err(|e| bad_file(path, e.to_string()))?;
    let file_size = reader.seek(SeekFrom::End(0)).map_err(|e| ModelError::Io {
        action: "reading",
        path: path.into(),
        cause: e,
    })?;
    check_tensor_layout(&content, file_size).map_err(|e| bad_file(path, e.to_string()))?;
    check_tensors(&content, config.num_hidden_layers).map_err(|e| bad_file(path, e.to_string()))?;
    let tokenizer = tokenizer_from_metadata(md).map_err(|e| bad_file(path, e.to_string()))?;

    let heads = |gguf_name: &str| {
        if gguf_name.contains(".attn_q.") {
            Some(config.num_attention_heads)
        } else if gguf_name.contains(".attn_k.") {
            Some(config.kv_heads())
        } else {
            None
        }
    };
    // Tensors with no Hugging Face counterpart (`rope_freqs`) are skipped, as transformers does.
    let read = TensorNaming {
        hf_name: &hf_tensor_name,
        qk_heads: &heads,
        fix_up: &|_, t| Ok(t),
    };
    let weights = read_tensors(path, &content, &mut reader, device, keep_quantized, &read)?;
    Ok(GgufCheckpoint {
        config,
        weights,
        tokenizer,
    })
}

/// How an architecture's GGUF tensors become Hugging Face's: the name (`None`: skipped), the head count of a
/// Q/K projection whose rows llama.cpp interleaved (`None`: rows as stored), and a fix-up of a dense tensor's
/// values (Gemma's norms are stored as `1 + w`).
pub(crate) struct TensorNaming<'a> {
    pub hf_name: &'a dyn Fn(&str) -> Option<String>,
    pub qk_heads: &'a dyn Fn(&str) -> Option<usize>,
    pub fix_up: &'a dyn Fn(&str, Tensor) -> Result<Tensor>,
}

/// Reads every tensor of an opened GGUF file into a [`WeightMap`] with Hugging Face names: f32, or, where
/// `keep_quantized`, every 2-D tensor stored in a block format (or f16) kept in it (1-D tensors, norms and
/// biases, are always f32, and only they are fixed up). Q/K rows are put back in Hugging Face's order by
/// moving whole rows of blocks.
pub(crate) fn read_tensors(
    path: &Path,
    content: &Content,
    reader: &mut BufReader<File>,
    device: &Device,
    keep_quantized: bool,
    naming: &TensorNaming<'_>,
) -> Result<WeightMap> {
    let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
    let mut quantized = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort(); // read in a fixed order, so that an error is the same on every run
    for gguf_name in names {
        let Some(hf_name) = (naming.hf_name)(gguf_name) else {
            continue;
        };
        let in_tensor = |e: String| bad_file(path, format!("tensor `{gguf_name}`: {e}"));
        let q = content.tensor(reader, gguf_name, device).map_err(|e| {
            in_tensor(format!(
                "cannot be read ({e}): the file is truncated or corrupt; download it again"
            ))
        })?;
        let heads = (naming.qk_heads)(gguf_name);
        if keep_quantized && q.rank() == 2 && q.dtype() != GgmlDType::F32 {
            let weight = QuantizedWeight::new(q).map_err(|e| in_tensor(e.to_string()))?;
            let weight = match heads {
                Some(h) => qk_row_order(weight.dims().0, h)
                    .and_then(|order| Ok(weight.reorder_rows(&order)?))
                    .map_err(|e| in_tensor(e.to_string()))?,
                None => weight,
            };
            quantized.insert(hf_name, weight);
            continue;
        }
        let tensor = q
            .dequantize(device)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| {
                in_tensor(format!(
                    "cannot be read ({e}): the file is truncated or corrupt; download it again"
                ))
            })?;
        let tensor = match heads {
            Some(h) => unpermute_qk(&tensor, h).map_err(|e| in_tensor(e.to_string()))?,
            None => tensor,
        };
        tensors.insert(hf_name, (naming.fix_up)(gguf_name, tensor)?);
    }
    Ok(WeightMap::new(tensors, path.display().to_string()).with_quantized(quantized))
}

/// Tensors a llama GGUF file may hold that the model does not read.
pub const ALLOWED_UNUSED: &[Allowed] = &[Allowed::new(
    "rope_freqs.weight",
    "llama.cpp's rotary frequency factors, which transformers' GGUF loader skips too",
)];

/// Refuses a file whose `llama.block_count` (`blocks`) differs from the blocks its tensors hold, or that
/// holds a tensor the model has no parameter for (outside [`ALLOWED_UNUSED`]).
fn check_tensors(content: &Content, blocks: usize) -> Result<()> {
    let names = content.tensor_infos.keys().map(String::as_str);
    let held = count_layers(names, "blk", "the file")?;
    if held != blocks {
        return Err(ModelError::Config(format!(
            "GGUF metadata `llama.block_count` = {blocks}, but the file holds {held} blocks of tensors (blk.0 .. \
             blk.{}): the header does not describe the weights; download the file again",
            held.saturating_sub(1)
        )));
    }
    let mut unused: Vec<&String> = content
        .tensor_infos
        .keys()
        .filter(|n| hf_tensor_name(n).is_none() && !ALLOWED_UNUSED.iter().any(|a| a.matches(n)))
        .collect();
    unused.sort();
    if let Some(first) = unused.first() {
        return Err(ModelError::Config(format!(
            "the file holds {} tensor(s) a llama model has no parameter for (first: `{first}`): it is not a \
             llama checkpoint this loader understands",
            unused.len()
        )));
    }
    Ok(())
}

/// Reads only the tokenizer of a GGUF file (its metadata; no tensor is read).
pub fn read_gguf_tokenizer(path: &Path) -> Result<GgufTokenizer> {
    let (content, _) = open(path)?;
    tokenizer_from_metadata(&content.metadata).map_err(|e| bad_file(path, e.to_string()))
}

/// Opens a GGUF file and reads its header, with errors that say what is wrong with the file.
pub(crate) fn open(path: &Path) -> Result<(Content, BufReader<File>)> {
    let file = File::open(path).map_err(|e| {
        bad_file(path, format!("cannot open the GGUF file ({e}); check the path, or fetch a zoo model with `peft fetch <name>`"))
    })?;
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 4];
    if reader.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Err(bad_file(
            path,
            "not a GGUF file (it does not start with the `GGUF` magic): give a llama.cpp .gguf file".into(),
        ));
    }
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| ModelError::Io {
            action: "reading",
            path: path.into(),
            cause: e,
        })?;
    // candle divides by `general.alignment` while reading the header: refuse a zero before.
    precheck_alignment(&mut reader).map_err(|e| bad_file(path, e.to_string()))?;
    let content = Content::read(&mut reader).map_err(|e| {
        bad_file(
            path,
            format!("the GGUF header is truncated or corrupt ({e}); download the file again"),
        )
    })?;
    Ok((content, reader))
}

pub(crate) fn bad_file(path: &Path, message: String) -> ModelError {
    ModelError::BadFile {
        path: path.to_path_buf(),
        message,
    }
}

/// The [`LlamaConfig`] transformers derives from GGUF metadata (`llama.*` keys, special ids from
/// `tokenizer.ggml.*`); `has_output` says whether the file has its own `output.weight` (else the head is tied).
pub fn llama_config(md: &HashMap<String, Value>, has_output: bool) -> Result<LlamaConfig> {
    let arch = match md.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(ModelError::Config(
                "GGUF metadata has no `general.architecture`".into(),
            ))
        }
    };
    if arch != "llama" {
        return Err(ModelError::Config(format!(
            "GGUF architecture `{arch}` is not supported (only `llama`); \
             load this model from a Hugging Face folder instead if its architecture is in the zoo"
        )));
    }
    let meta = ArchMetadata::new(md, &arch);
    let (int, required, float) = (
        |k: &str| meta.int(k),
        |k: &str| meta.required(k),
        |k: &str| meta.float(k),
    );
    let token_id = |k: &str| meta.token_id(k);
    let vocab_size = meta.vocab_size()?;
    // Defaults are transformers' `LlamaConfig` defaults, which apply where the metadata is silent.
    let config = LlamaConfig {
        vocab_size,
        hidden_size: required("embedding_length")?,
        intermediate_size: required("feed_forward_length")?,
        num_hidden_layers: required("block_count")?,
        num_attention_heads: required("attention.head_count")?,
        num_key_value_heads: int("attention.head_count_kv")?,
        head_dim: int("rope.dimension_count")?,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
        rope_theta: float("rope.freq_base")?.unwrap_or(10000.0),
        max_position_embeddings: int("context_length")?.unwrap_or(2048),
        tie_word_embeddings: !has_output,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id: token_id("tokenizer.ggml.eos_token_id"),
    };
    // The values are checked under the metadata's own key names, before anything is sized by them.
    let key = |k: &str| format!("{arch}.{k}");
    let sizes = [
        (key("vocab_size"), config.vocab_size),
        (key("embedding_length"), config.hidden_size),
        (key("feed_forward_length"), config.intermediate_size),
        (key("attention.head_count"), config.num_attention_heads),
        (key("attention.head_count_kv"), config.kv_heads()),
        (key("context_length"), config.max_position_embeddings),
    ];
    let sizes: Vec<(&str, usize)> = sizes.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    check_sizes(&sizes)?;
    if let Some(d) = config.head_dim {
        check_sizes(&[(key("rope.dimension_count").as_str(), d)])?;
    }
    check_eps(
        &key("attention.layer_norm_rms_epsilon"),
        config.rms_norm_eps,
    )?;
    Ok(config)
}

/// The Hugging Face name of a llama.cpp tensor (`blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`),
/// or `None` for a tensor the Hugging Face model has no parameter for.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    hf_name_with(gguf_name, |part| {
        Some(match part {
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            "attn_norm" => "input_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            _ => return None,
        })
    })
}

/// The Hugging Face name of a llama.cpp tensor whose per-block module `blk.N.<part>` is named by `block_part`
/// (`None`: no parameter): `token_embd`, `output_norm` and `output` are named alike in every architecture.
pub(crate) fn hf_name_with(
    gguf_name: &str,
    block_part: impl Fn(&str) -> Option<&'static str>,
) -> Option<String> {
    let (module, suffix) = gguf_name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf_module = match module {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = module.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            format!("model.layers.{layer}.{}", block_part(part)?)
        }
    };
    Some(format!("{hf_module}.{suffix}"))
}

/// Puts the rows of a llama.cpp Q or K projection (weight `[heads * head_dim, in]` or bias) back in Hugging
/// Face's order. llama.cpp interleaves each head's two rotary halves (row `2i + p` holds half `p`, index `i`)
/// for its rotary kernel; Hugging Face keeps the halves apart (row `p * head_dim / 2 + i`).
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = *dims
        .first()
        .ok_or_else(|| ModelError::Config("a Q/K projection cannot be a scalar".into()))?;
    if n_head == 0 || rows % (2 * n_head) != 0 {
        return Err(ModelError::Config(format!(
            "Q/K projection has {rows} rows, not a multiple of 2 x {n_head} heads: the metadata's head counts do not fit"
        )));
    }
    let mut split = vec![n_head, rows / n_head / 2, 2];
    split.extend_from_slice(&dims[1..]);
    Ok(w.reshape(split)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

/// The row order of [`unpermute_qk`] for a `[rows, ..]` Q/K weight: row `i` of the result is row `order[i]`
/// of the file's tensor.
pub fn qk_row_order(rows: usize, n_head: usize) -> Result<Vec<usize>> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return Err(ModelError::Config(format!(
            "Q/K projection has {rows} rows, not a multiple of 2 x {n_head} heads: the metadata's head counts do not fit"
        )));
    }
    let (head_dim, half) = (rows / n_head, rows / n_head / 2);
    let mut order = Vec::with_capacity(rows);
    for h in 0..n_head {
        for p in 0..2 {
            for i in 0..half {
                order.push(h * head_dim + 2 * i + p);
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};

    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        let cases = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            (
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "blk.1.attn_k.weight",
                "model.layers.1.self_attn.k_proj.weight",
            ),
            ("blk.2.attn_v.bias", "model.layers.2.self_attn.v_proj.bias"),
            (
                "blk.10.attn_output.weight",
                "model.layers.10.self_attn.o_proj.weight",
            ),
            (
                "blk.0.ffn_gate.weight",
                "model.layers.0.mlp.gate_proj.weight",
            ),
            ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight"),
            (
                "blk.0.ffn_down.weight",
                "model.layers.0.mlp.down_proj.weight",
            ),
            (
                "blk.29.attn_norm.weight",
                "model.layers.29.input_layernorm.weight",
            ),
            (
                "blk.29.ffn_norm.weight",
                "model.layers.29.post_attention_layernorm.weight",
            ),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
        ];
        for (gguf, hf) in cases {
            assert_eq!(hf_tensor_name(gguf).as_deref(), Some(hf), "{gguf}");
        }
        for other in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.0.attn_qkv.weight",
            "token_embd",
            "blk.0.attn_q.scale",
        ] {
            assert_eq!(hf_tensor_name(other), None, "{other}");
        }
    }

    /// llama.cpp's conversion (HF -> GGUF), written from its index formula: GGUF row `h*hd + 2i + p` holds HF
    /// row `h*hd + p*hd/2 + i`.
    fn permute_like_llama_cpp(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let hd = rows / n_head;
        let mut out = vec![0f32; w.len()];
        for h in 0..n_head {
            for p in 0..2 {
                for i in 0..hd / 2 {
                    let (g, r) = (h * hd + 2 * i + p, h * hd + p * hd / 2 + i);
                    out[g * cols..(g + 1) * cols].copy_from_slice(&w[r * cols..(r + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn the_qk_row_order_is_the_rows_unpermute_moves() {
        let (rows, heads) = (24, 3);
        let w = Tensor::arange(0f32, rows as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, 1))
            .unwrap();
        let moved: Vec<usize> = unpermute_qk(&w, heads)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| v as usize)
            .collect();
        assert_eq!(qk_row_order(rows, heads).unwrap(), moved);
        assert!(qk_row_order(10, 3).is_err());
    }

    #[test]
    fn unpermute_undoes_llama_cpp_permutation() {
        let (n_head, hd, cols) = (3, 6, 4);
        let rows = n_head * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let gguf = permute_like_llama_cpp(&hf, rows, cols, n_head);
        assert_ne!(gguf, hf);
        let t = Tensor::from_vec(gguf, (rows, cols), &Device::Cpu).unwrap();
        let back = unpermute_qk(&t, n_head).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), hf);
        // One head of 4: the halves [r0 r1 | r2 r3] are stored interleaved as [r0 r2 r1 r3].
        let t = Tensor::new(&[0f32, 2., 1., 3.], &Device::Cpu).unwrap();
        assert_eq!(
            unpermute_qk(&t, 1).unwrap().to_vec1::<f32>().unwrap(),
            vec![0., 1., 2., 3.]
        );
        assert!(
            unpermute_qk(&Tensor::zeros((6, 2), DType::F32, &Device::Cpu).unwrap(), 4).is_err()
        );
    }

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

    fn metadata(arch: &str) -> Vec<(String, Value)> {
        let strs =
            |v: &[&str]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
        vec![
            ("general.architecture".into(), Value::String(arch.into())),
            (format!("{arch}.block_count"), Value::U32(1)),
            (format!("{arch}.context_length"), Value::U32(64)),
            (
                format!("{arch}.embedding_length"),
                Value::U32(HIDDEN as u32),
            ),
            (
                format!("{arch}.feed_forward_length"),
                Value::U32(INNER as u32),
            ),
            (
                format!("{arch}.attention.head_count"),
                Value::U32(HEADS as u32),
            ),
            (
                format!("{arch}.attention.head_count_kv"),
                Value::U32(KV_HEADS as u32),
            ),
            (
                format!("{arch}.attention.layer_norm_rms_epsilon"),
                Value::F32(1e-5),
            ),
            (format!("{arch}.rope.freq_base"), Value::F32(500.0)),
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

    /// Seeded-looking but deterministic values, distinct per tensor.
    fn values(shape: &[usize], salt: usize) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i * 31 + salt * 17) % 23) as f32 - 11.0) / 20.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A one-layer LLaMA GGUF in f32, Q/K rows permuted as llama.cpp stores them; returns the HF-order Q.
    fn write_tiny(path: &Path, arch: &str, with_output: bool) -> Tensor {
        write_tiny_with(path, arch, with_output, |_, _| {})
    }

    /// [`write_tiny`] with the metadata and the tensors edited by `edit` before writing.
    fn write_tiny_with(
        path: &Path,
        arch: &str,
        with_output: bool,
        edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(&str, Tensor)>),
    ) -> Tensor {
        let v = VOCAB.len();
        let q_hf = values(&[HEADS * 4, HIDDEN], 1);
        let permute = |t: &Tensor, heads: usize| {
            let (r, c) = t.dims2().unwrap();
            let flat =
                permute_like_llama_cpp(&t.flatten_all().unwrap().to_vec1().unwrap(), r, c, heads);
            Tensor::from_vec(flat, (r, c), &Device::Cpu).unwrap()
        };
        let mut tensors: Vec<(&str, Tensor)> = vec![
            ("token_embd.weight", values(&[v, HIDDEN], 2)),
            ("blk.0.attn_norm.weight", values(&[HIDDEN], 3)),
            ("blk.0.attn_q.weight", permute(&q_hf, HEADS)),
            (
                "blk.0.attn_k.weight",
                permute(&values(&[KV_HEADS * 4, HIDDEN], 4), KV_HEADS),
            ),
            ("blk.0.attn_v.weight", values(&[KV_HEADS * 4, HIDDEN], 5)),
            ("blk.0.attn_output.weight", values(&[HIDDEN, HIDDEN], 6)),
            ("blk.0.ffn_norm.weight", values(&[HIDDEN], 7)),
            ("blk.0.ffn_gate.weight", values(&[INNER, HIDDEN], 8)),
            ("blk.0.ffn_up.weight", values(&[INNER, HIDDEN], 9)),
            ("blk.0.ffn_down.weight", values(&[HIDDEN, INNER], 10)),
            ("output_norm.weight", values(&[HIDDEN], 11)),
            ("rope_freqs.weight", values(&[2], 12)),
        ];
        if with_output {
            tensors.push(("output.weight", values(&[v, HIDDEN], 13)));
        }
        let mut md = metadata(arch);
        edit(&mut md, &mut tensors);
        let q: Vec<(&str, QTensor)> = tensors
            .iter()
            .map(|(n, t)| (*n, QTensor::quantize(t, GgmlDType::F32).unwrap()))
            .collect();
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (*n, t)).collect();
        let mut f = File::create(path).unwrap();
        gguf_file::write(&mut f, &md_refs, &q_refs).unwrap();
        q_hf
    }

    #[test]
    fn tiny_file_loads_with_hf_names_config_and_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let q_hf = write_tiny(&path, "llama", false);
        let ckpt = read_gguf(&path, &Device::Cpu).unwrap();
        let c = &ckpt.config;
        assert_eq!(
            (
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers
            ),
            (8, HIDDEN, INNER, 1)
        );
        assert_eq!(
            (c.num_attention_heads, c.kv_heads(), c.head_dim()),
            (HEADS, KV_HEADS, 4)
        );
        assert_eq!(
            (
                c.rope_theta,
                c.rms_norm_eps as f32,
                c.max_position_embeddings
            ),
            (500.0, 1e-5, 64)
        );
        assert!(c.tie_word_embeddings);
        assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1), Some(0)));
        assert!(!ckpt.weights.contains("lm_head.weight"));
        let q = ckpt
            .weights
            .get(
                "model.layers.0.self_attn.q_proj.weight",
                &[HEADS * 4, HIDDEN],
            )
            .unwrap();
        let diff = peft_core::compare::max_abs_diff(&q, &q_hf).unwrap();
        assert_eq!(diff, 0.0);
        assert_eq!(ckpt.weights.names().count(), 11);
        let ids = ckpt
            .tokenizer
            .tokenizer
            .encode("ab ab<|im_start|>", true)
            .unwrap();
        assert_eq!(ids.get_ids(), &[6, 7, 1]);

        let loaded = load_gguf(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded.model.spec().name_or_path, "tiny.gguf");
        assert_eq!(loaded.eos_token_id, Some(0));
    }

    #[test]
    fn untied_head_is_read_from_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("untied.gguf");
        write_tiny(&path, "llama", true);
        let ckpt = read_gguf(&path, &Device::Cpu).unwrap();
        assert!(!ckpt.config.tie_word_embeddings);
        assert!(ckpt.weights.contains("lm_head.weight"));
        let model = load_gguf(&path, &Device::Cpu).unwrap().model;
        let batch = peft_core::model::Batch::single(&[2, 3, 7], &Device::Cpu).unwrap();
        let out = model.forward(&batch, &peft_core::hooks::NoHooks).unwrap();
        assert_eq!(out.hidden.dims(), &[1, 3, HIDDEN]);
    }

    #[test]
    fn other_architectures_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qwen.gguf");
        write_tiny(&path, "qwen2", false);
        let err = load_gguf(&path, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("qwen2") && err.contains("qwen.gguf"), "{err}");
    }

    #[test]
    fn missing_truncated_and_foreign_files_give_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny(&path, "llama", false);
        let bytes = std::fs::read(&path).unwrap();
        let is_bad_file = |p: &Path| match load_gguf(p, &Device::Cpu) {
            Err(ModelError::BadFile { path, message }) => path == p && !message.is_empty(),
            _ => false,
        };
        assert!(is_bad_file(&dir.path().join("absent.gguf")));
        for cut in [0, 3, 4, 10, 100, bytes.len() / 2, bytes.len() - 40] {
            let p = dir.path().join(format!("cut{cut}.gguf"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            assert!(is_bad_file(&p), "cut at {cut}");
        }
        let p = dir.path().join("model.safetensors");
        std::fs::write(&p, b"{\"not\": \"gguf\"}").unwrap();
        assert!(is_bad_file(&p));
        let msg = load_gguf(&p, &Device::Cpu).err().unwrap().to_string();
        assert!(
            msg.contains("not a GGUF file") && msg.contains("model.safetensors"),
            "{msg}"
        );
    }

    /// Sets metadata `key` (replacing it where present).
    fn set(md: &mut Vec<(String, Value)>, key: &str, value: Value) {
        md.retain(|(k, _)| k != key);
        md.push((key.to_string(), value));
    }

    fn load_err(path: &Path) -> String {
        match load_gguf(path, &Device::Cpu) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn block_count_must_equal_the_blocks_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        for blocks in [0u64, 2, 1_000_000_000_000] {
            let path = dir.path().join(format!("blocks{blocks}.gguf"));
            write_tiny_with(&path, "llama", false, |md, _| {
                set(md, "llama.block_count", Value::U64(blocks))
            });
            let err = load_err(&path);
            assert!(
                err.contains(&format!("`llama.block_count` = {blocks}"))
                    && err.contains("holds 1 blocks")
                    && err.contains(&format!("blocks{blocks}.gguf")),
                "{err}"
            );
        }
    }

    #[test]
    fn a_tensor_without_a_llama_parameter_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fused.gguf");
        write_tiny_with(&path, "llama", false, |_, tensors| {
            tensors.push(("blk.0.attn_qkv.weight", values(&[3 * HIDDEN, HIDDEN], 20)))
        });
        let err = load_err(&path);
        assert!(err.contains("`blk.0.attn_qkv.weight`"), "{err}");
        // A mapped name the config does not use (a bias where llama has none) is refused by the model.
        let path = dir.path().join("bias.gguf");
        write_tiny_with(&path, "llama", false, |_, tensors| {
            tensors.push(("blk.0.attn_q.bias", values(&[HEADS * 4], 21)))
        });
        let err = load_err(&path);
        assert!(
            err.contains("model.layers.0.self_attn.q_proj.bias") && err.contains("bias.gguf"),
            "{err}"
        );
    }

    #[test]
    fn metadata_values_are_checked_under_their_gguf_keys() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "llama.attention.layer_norm_rms_epsilon",
                Value::F32(-1e-5),
                "above 0",
            ),
            (
                "llama.attention.layer_norm_rms_epsilon",
                Value::F32(f32::NAN),
                "above 0",
            ),
            (
                "llama.embedding_length",
                Value::U64(1 << 40),
                "out of range",
            ),
            ("llama.attention.head_count", Value::U32(0), "out of range"),
            (
                "llama.context_length",
                Value::U64(u64::MAX >> 1),
                "out of range",
            ),
        ];
        for (i, (key, value, says)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("case{i}.gguf"));
            write_tiny_with(&path, "llama", false, |md, _| set(md, key, value));
            let err = load_err(&path);
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(says),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn misaligned_and_overlong_tensors_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny(&path, "llama", false);
        let size = std::fs::metadata(&path).unwrap().len();
        let read = || Content::read(&mut File::open(&path).unwrap()).unwrap();
        assert!(crate::gguf_layout::check_tensor_layout(&read(), size).is_ok());

        let mut content = read();
        content
            .tensor_infos
            .get_mut("blk.0.ffn_up.weight")
            .unwrap()
            .offset += 8;
        let err = crate::gguf_layout::check_tensor_layout(&content, size)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`blk.0.ffn_up.weight`") && err.contains("alignment 32"),
            "{err}"
        );
        let mut content = read();
        content
            .tensor_infos
            .get_mut("output_norm.weight")
            .unwrap()
            .offset += 1 << 20;
        let err = crate::gguf_layout::check_tensor_layout(&content, size)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`output_norm.weight`") && err.contains("past the end"),
            "{err}"
        );
        // The file cut one byte short of its last tensor's end (f32: 4 bytes an element): refused.
        let content = read();
        let end = content
            .tensor_infos
            .values()
            .map(|t| content.tensor_data_offset + t.offset + 4 * t.shape.elem_count() as u64)
            .max()
            .unwrap();
        assert!(crate::gguf_layout::check_tensor_layout(&content, end).is_ok());
        assert!(crate::gguf_layout::check_tensor_layout(&content, end - 1).is_err());
    }

    #[test]
    fn an_alignment_candle_cannot_divide_by_is_refused_before_the_header_is_read() {
        let dir = tempfile::tempdir().unwrap();
        for (i, alignment) in [0u32, 24].into_iter().enumerate() {
            let path = dir.path().join(format!("align{i}.gguf"));
            write_tiny_with(&path, "llama", false, |md, _| {
                set(md, "general.alignment", Value::U32(alignment))
            });
            let err = load_err(&path);
            assert!(
                err.contains(&format!("`general.alignment` = {alignment}"))
                    && err.contains("power of two"),
                "{err}"
            );
        }
        // An alignment stated as the default reads like no statement at all.
        let path = dir.path().join("align32.gguf");
        write_tiny_with(&path, "llama", false, |md, _| {
            set(md, "general.alignment", Value::U32(32))
        });
        assert!(load_gguf(&path, &Device::Cpu).is_ok());
    }
}
