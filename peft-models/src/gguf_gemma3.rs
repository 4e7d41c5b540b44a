//! The Gemma-3 side of GGUF loading (`general.architecture = "gemma3"`): the [`Gemma3Config`] transformers
//! derives from the metadata, the llama.cpp -> Hugging Face tensor names, and the one value fix-up
//! transformers' loader applies to this architecture (its `Gemma2TensorProcessor`): llama.cpp stores every
//! norm weight as Gemma's effective scale `1 + w`, so `1` is subtracted from each `*norm.weight` to get back
//! Hugging Face's raw `w`. Q/K rows are *not* permuted for Gemma-3 (llama.cpp permutes them for `llama`
//! only), and the file holds the text model alone (no vision tower).
//!
//! ```
//! use peft_models::gguf_gemma3::{hf_tensor_name, is_norm_weight};
//! assert_eq!(
//!     hf_tensor_name("blk.2.post_ffw_norm.weight").as_deref(),
//!     Some("model.layers.2.post_feedforward_layernorm.weight")
//! );
//! assert_eq!(hf_tensor_name("blk.0.attn_q_norm.weight").as_deref(), Some("model.layers.0.self_attn.q_norm.weight"));
//! assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
//! assert!(is_norm_weight("output_norm.weight") && !is_norm_weight("token_embd.weight"));
//! ```

use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::config::Gemma3Config;
use crate::config_checks::{check_eps, check_sizes, count_layers};
use crate::error::{ModelError, Result};
use crate::gemma3::Gemma3;
use crate::gguf::{bad_file, hf_name_with, open, read_tensors, TensorNaming};
use crate::gguf_layout::check_tensor_layout;
use crate::gguf_metadata::ArchMetadata;
use crate::gguf_tokenizer::tokenizer_from_metadata;
use crate::loaded::{LoadOptions, LoadedModel};
use crate::weights::WeightMap;

/// A Gemma-3 GGUF file read into this crate's types.
#[derive(Debug)]
pub struct Gemma3Checkpoint {
    /// The configuration, as transformers derives it from the metadata.
    pub config: Gemma3Config,
    /// f32 tensors by Hugging Face name, norm weights back to the raw `w`.
    pub weights: WeightMap,
}

/// Loads a Gemma-3 GGUF file as a frozen [`Gemma3`], named after the file, with the SentencePiece tokenizer
/// [`tokenizer_from_metadata`] rebuilds from its metadata (a file whose tokenizer cannot be rebuilt is refused,
/// naming why). `options.keep_quantized` keeps its block-format weights as they are.
pub fn load_gemma3_gguf(path: &Path, device: &Device, options: LoadOptions) -> Result<LoadedModel> {
    let mut ckpt = read_gemma3_gguf(path, device, options.keep_quantized)?;
    ckpt.weights.set_bf16_projections(options.bf16_projections);
    if options.trainable_weights {
        ckpt.weights.make_trainable()?;
    }
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let model = Gemma3::from_weights(&ckpt.config, &ckpt.weights, &name).map_err(|e| match e {
        ModelError::Config(m) => bad_file(path, m),
        other => other,
    })?;
    let (content, _) = open(path)?;
    let tokenizer =
        tokenizer_from_metadata(&content.metadata).map_err(|e| bad_file(path, e.to_string()))?;
    Ok(LoadedModel {
        model: Box::new(model),
        eos_token_id: tokenizer.eos_token_id.or(ckpt.config.eos_token_id),
        tokenizer: Some(tokenizer.tokenizer),
    })
}

/// Reads a Gemma-3 GGUF file: the config from its metadata and every tensor dequantized to f32 under its
/// Hugging Face name, norm weights fixed up ([`fix_up`]). Before any tensor is read the file must be whole
/// (layout, `gemma3.block_count` against the blocks held, no tensor without a Hugging Face name).
pub fn read_gemma3_gguf(
    path: &Path,
    device: &Device,
    keep_quantized: bool,
) -> Result<Gemma3Checkpoint> {
    let (content, mut reader) = open(path)?;
    let has_output = content.tensor_infos.contains_key("output.weight");
    let config =
        gemma3_config(&content.metadata, has_output).map_err(|e| bad_file(path, e.to_string()))?;
    let file_size = reader.seek(SeekFrom::End(0)).map_err(|e| ModelError::Io {
        action: "reading",
        path: path.into(),
        cause: e,
    })?;
    check_tensor_layout(&content, file_size).map_err(|e| bad_file(path, e.to_string()))?;
    check_tensors(&content, config.num_hidden_layers).map_err(|e| bad_file(path, e.to_string()))?;
    // Gemma's Q/K rows are stored in Hugging Face's order (llama.cpp runs its NeoX rotary on them).
    let naming = TensorNaming {
        hf_name: &hf_tensor_name,
        qk_heads: &|_| None,
        fix_up: &fix_up,
    };
    let weights = read_tensors(path, &content, &mut reader, device, keep_quantized, &naming)?;
    Ok(Gemma3Checkpoint { config, weights })
}

/// Whether a llama.cpp tensor is a norm weight (transformers' test: the name contains `norm.weight`).
pub fn is_norm_weight(gguf_name: &str) -> bool {
    gguf_name.contains("norm.weight")
}

/// Hugging Face's value of a dequantized llama.cpp tensor: norm weights are stored as `1 + w`, so `w` is the
/// stored value minus 1; every other tensor is as stored.
pub fn fix_up(gguf_name: &str, tensor: Tensor) -> Result<Tensor> {
    if is_norm_weight(gguf_name) {
        Ok((tensor - 1.0)?)
    } else {
        Ok(tensor)
    }
}

/// The Hugging Face name of a llama.cpp Gemma-3 tensor (`blk.N.post_ffw_norm.weight` ->
/// `model.layers.N.post_feedforward_layernorm.weight`), or `None` for one the model has no parameter for.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    hf_name_with(gguf_name, |part| {
        Some(match part {
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "attn_q_norm" => "self_attn.q_norm",
            "attn_k_norm" => "self_attn.k_norm",
            "attn_norm" => "input_layernorm",
            "post_attention_norm" => "post_attention_layernorm",
            "ffn_norm" => "pre_feedforward_layernorm",
            "post_ffw_norm" => "post_feedforward_layernorm",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return None,
        })
    })
}

/// The [`Gemma3Config`] transformers derives from Gemma-3 GGUF metadata: the `gemma3.*` keys its table maps
/// (context_length, embedding_length, feed_forward_length, block_count, attention.head_count(_kv),
/// attention.key_length as head_dim, attention.layer_norm_rms_epsilon, attention.sliding_window,
/// rope.freq_base as rope_theta, vocab_size or else the token list's length), the special ids from
/// `tokenizer.ggml.*`, a head tied unless the file has `output.weight`, and `Gemma3TextConfig`'s defaults for
/// everything else: the local RoPE base 10000, `query_pre_attn_scalar` 256, every sixth layer global, no
/// soft-capping. Keys transformers ignores (`rope.scaling.*`, `attention.value_length`) are ignored here too.
pub fn gemma3_config(md: &HashMap<String, Value>, has_output: bool) -> Result<Gemma3Config> {
    match md.get("general.architecture") {
        Some(Value::String(s)) if s == "gemma3" => {}
        Some(Value::String(s)) => {
            return Err(ModelError::Config(format!(
                "GGUF architecture `{s}` is not Gemma-3 (`gemma3`)"
            )))
        }
        _ => {
            return Err(ModelError::Config(
                "GGUF metadata has no `general.architecture`".into(),
            ))
        }
    }
    let meta = ArchMetadata::new(md, "gemma3");
    let (int, required, float) = (
        |k: &str| meta.int(k),
        |k: &str| meta.required(k),
        |k: &str| meta.float(k),
    );
    let token_id = |k: &str| meta.token_id(k);
    let vocab_size = meta.vocab_size()?;
    // Start from transformers' defaults (an empty config.json), then set what the metadata gives.
    let mut config: Gemma3Config =
        serde_json::from_str("{}").expect("every Gemma3Config field has a default");
    config.vocab_size = vocab_size;
    config.hidden_size = required("embedding_length")?;
    config.intermediate_size = required("feed_forward_length")?;
    config.num_hidden_layers = required("block_count")?;
    config.num_attention_heads = required("attention.head_count")?;
    if let Some(kv) = int("attention.head_count_kv")? {
        config.num_key_value_heads = kv;
    }
    if let Some(d) = int("attention.key_length")? {
        config.head_dim = d;
    }
    if let Some(n) = int("context_length")? {
        config.max_position_embeddings = n;
    }
    if let Some(eps) = float("attention.layer_norm_rms_epsilon")? {
        config.rms_norm_eps = eps;
    }
    if let Some(theta) = float("rope.freq_base")? {
        config.rope_theta = theta;
    }
    if let Some(w) = int("attention.sliding_window")? {
        config.sliding_window = Some(w);
    }
    config.tie_word_embeddings = !has_output;
    config.bos_token_id = token_id("tokenizer.ggml.bos_token_id").or(config.bos_token_id);
    config.eos_token_id = token_id("tokenizer.ggml.eos_token_id").or(config.eos_token_id);
    config.pad_token_id = token_id("tokenizer.ggml.padding_token_id").or(config.pad_token_id);

    // The values are checked under the metadata's own key names, before anything is sized by them.
    let sizes = [
        ("gemma3.vocab_size", config.vocab_size),
        ("gemma3.embedding_length", config.hidden_size),
        ("gemma3.feed_forward_length", config.intermediate_size),
        ("gemma3.attention.head_count", config.num_attention_heads),
        ("gemma3.attention.head_count_kv", config.num_key_value_heads),
        ("gemma3.attention.key_length", config.head_dim),
        ("gemma3.context_length", config.max_position_embeddings),
        (
            "gemma3.attention.sliding_window",
            config.sliding_window.unwrap_or(1),
        ),
    ];
    check_sizes(&sizes)?;
    check_eps(
        "gemma3.attention.layer_norm_rms_epsilon",
        config.rms_norm_eps,
    )?;
    if !(config.rope_theta.is_finite() && config.rope_theta > 0.0) {
        return Err(ModelError::Config(format!(
            "GGUF metadata `gemma3.rope.freq_base` = {} must be a finite number above 0",
            config.rope_theta
        )));
    }
    Ok(config)
}

/// Refuses a file whose `gemma3.block_count` differs from the blocks its tensors hold, or that holds a tensor
/// the model has no parameter for.
fn check_tensors(content: &Content, blocks: usize) -> Result<()> {
    let names = content.tensor_infos.keys().map(String::as_str);
    let held = count_layers(names, "blk", "the file")?;
    if held != blocks {
        return Err(ModelError::Config(format!(
            "GGUF metadata `gemma3.block_count` = {blocks}, but the file holds {held} blocks of tensors: the \
             header does not describe the weights; download the file again"
        )));
    }
    let mut unused: Vec<&String> = content
        .tensor_infos
        .keys()
        .filter(|n| hf_tensor_name(n).is_none())
        .collect();
    unused.sort();
    if let Some(first) = unused.first() {
        return Err(ModelError::Config(format!(
            "the file holds {} tensor(s) a Gemma-3 text model has no parameter for (first: `{first}`): it is \
             not a Gemma-3 text checkpoint this loader understands",
            unused.len()
        )));
    }
    Ok(())
}

/// Opens a GGUF file and reads its header, with errors that say what is wrong with the file (as `gguf.rs`
/// does for llama; the two meet when the shared loader dispatches on the architecture).
#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use peft_core::hooks::NoHooks;
    use peft_core::model::{BaseModel, Batch};
    use std::fs::File;

    /// A GGUF of the tiny Gemma-3 written as llama.cpp writes it (norms as `1 + w`, llama.cpp names, f32).
    fn write_tiny(path: &Path) -> WeightMap {
        let cfg = crate::tiny::gemma3_config();
        let weights = crate::tiny::gemma3_weights(3);
        let gguf_name = |hf: &str| -> String {
            // Invert the map over the names the tiny model has.
            let mut candidates = vec![
                "token_embd.weight".to_string(),
                "output_norm.weight".to_string(),
            ];
            for i in 0..cfg.num_hidden_layers {
                for part in [
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_output",
                    "attn_q_norm",
                    "attn_k_norm",
                    "attn_norm",
                    "post_attention_norm",
                    "ffn_norm",
                    "post_ffw_norm",
                    "ffn_gate",
                    "ffn_up",
                    "ffn_down",
                ] {
                    candidates.push(format!("blk.{i}.{part}.weight"));
                }
            }
            candidates
                .into_iter()
                .find(|g| hf_tensor_name(g).as_deref() == Some(hf))
                .unwrap_or_else(|| panic!("no llama.cpp name for {hf}"))
        };
        let mut tensors = Vec::new();
        for name in weights.names() {
            let t = weights.get_any(name).unwrap();
            let g = gguf_name(name);
            let stored = if is_norm_weight(&g) {
                (t + 1.0).unwrap()
            } else {
                t
            };
            tensors.push((g, QTensor::quantize(&stored, GgmlDType::F32).unwrap()));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let tokens: Vec<Value> = (0..cfg.vocab_size)
            .map(|i| Value::String(format!("t{i}")))
            .collect();
        let md: Vec<(String, Value)> = vec![
            (
                "general.architecture".into(),
                Value::String("gemma3".into()),
            ),
            ("gemma3.block_count".into(), Value::U32(2)),
            ("gemma3.context_length".into(), Value::U32(64)),
            ("gemma3.embedding_length".into(), Value::U32(32)),
            ("gemma3.feed_forward_length".into(), Value::U32(64)),
            ("gemma3.attention.head_count".into(), Value::U32(4)),
            ("gemma3.attention.head_count_kv".into(), Value::U32(2)),
            ("gemma3.attention.key_length".into(), Value::U32(16)),
            (
                "gemma3.attention.layer_norm_rms_epsilon".into(),
                Value::F32(1e-6),
            ),
            ("gemma3.rope.freq_base".into(), Value::F32(10000.0)),
            ("gemma3.attention.sliding_window".into(), Value::U32(3)),
            ("tokenizer.ggml.model".into(), Value::String("llama".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
        ];
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut f = File::create(path).unwrap();
        gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
        weights
    }

    #[test]
    fn config_follows_transformers_defaults_where_the_metadata_is_silent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny(&path);
        let ckpt = read_gemma3_gguf(&path, &Device::Cpu, false).unwrap();
        let c = &ckpt.config;
        assert_eq!(
            (
                c.vocab_size,
                c.hidden_size,
                c.head_dim,
                c.num_key_value_heads
            ),
            (crate::tiny::VOCAB, 32, 16, 2)
        );
        assert_eq!(c.sliding_window, Some(3));
        assert!(c.tie_word_embeddings);
        // Not in the metadata: transformers' Gemma3TextConfig defaults.
        assert_eq!(
            (c.rope_local_base_freq, c.query_pre_attn_scalar),
            (10000.0, 256.0)
        );
        assert_eq!(c.layer_types, None);
        let kinds = c.layer_kinds().unwrap();
        assert_eq!(kinds.len(), 2);
        assert!(kinds
            .iter()
            .all(|k| *k == crate::config::Gemma3Attention::Sliding));
    }

    #[test]
    fn norms_come_back_as_raw_weights_and_the_model_matches_the_folder_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let original = write_tiny(&path);
        let ckpt = read_gemma3_gguf(&path, &Device::Cpu, false).unwrap();
        assert_eq!(ckpt.weights.names().count(), original.names().count());
        for name in original.names() {
            let a = original.get_any(name).unwrap();
            let b = ckpt.weights.get_any(name).unwrap();
            let diff = peft_core::compare::max_abs_diff(&a, &b).unwrap();
            assert!(diff < 1e-6, "{name}: {diff}");
        }
        // The GGUF's config differs from the tiny one only where transformers' defaults apply; with those
        // taken over, the two models agree.
        let mut cfg = crate::tiny::gemma3_config();
        cfg.rope_local_base_freq = ckpt.config.rope_local_base_freq;
        cfg.query_pre_attn_scalar = ckpt.config.query_pre_attn_scalar;
        cfg.layer_types = None;
        let folder_form = Gemma3::from_weights(&cfg, &original, "x").unwrap();
        let loaded = load_gemma3_gguf(&path, &Device::Cpu, LoadOptions::default()).unwrap();
        assert_eq!(loaded.eos_token_id, Some(1));
        let batch = Batch::single(&[5, 9, 17, 33, 2], &Device::Cpu).unwrap();
        let a = folder_form.forward(&batch, &NoHooks).unwrap().hidden;
        let b = loaded.model.forward(&batch, &NoHooks).unwrap().hidden;
        assert!(peft_core::compare::max_abs_diff(&a, &b).unwrap() < 1e-5);
    }

    #[test]
    fn other_architectures_and_foreign_tensors_are_refused() {
        let mut md = HashMap::new();
        md.insert(
            "general.architecture".to_string(),
            Value::String("llama".into()),
        );
        let err = gemma3_config(&md, false).unwrap_err().to_string();
        assert!(err.contains("llama") && err.contains("gemma3"), "{err}");
        assert_eq!(hf_tensor_name("blk.0.attn_qkv.weight"), None);
        assert_eq!(hf_tensor_name("blk.x.attn_q.weight"), None);
        let t = Tensor::new(&[2f32, 0.5], &Device::Cpu).unwrap();
        let fixed = fix_up("blk.3.attn_k_norm.weight", t.clone()).unwrap();
        assert_eq!(fixed.to_vec1::<f32>().unwrap(), vec![1.0, -0.5]);
        let kept = fix_up("blk.3.attn_k.weight", t).unwrap();
        assert_eq!(kept.to_vec1::<f32>().unwrap(), vec![2.0, 0.5]);
    }
}
