//! Model configurations as Hugging Face's `config.json` spells them, so that a checkpoint folder's config
//! deserialises directly.
//!
//! ```
//! let cfg: peft_models::config::LlamaConfig = serde_json::from_str(r#"{
//!   "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
//!   "num_attention_heads": 4, "num_key_value_heads": 2 }"#).unwrap();
//! assert_eq!(cfg.head_dim(), 16);
//! assert_eq!(cfg.rope_theta, 10000.0);
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// LLaMA-family configuration (LLaMA, SmolLM2, ...), HF `LlamaConfig` field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head dimension; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMS norm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Context length.
    #[serde(default = "default_llama_positions")]
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the token embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o projections carry biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether the MLP projections carry biases.
    #[serde(default)]
    pub mlp_bias: bool,
    /// BOS token id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// EOS token id.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

impl LlamaConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
}

/// GPT-2 configuration, HF `GPT2Config` field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    #[serde(default = "default_gpt2_vocab")]
    pub vocab_size: usize,
    /// Context length.
    #[serde(default = "default_gpt2_positions")]
    pub n_positions: usize,
    /// Hidden size.
    #[serde(default = "default_gpt2_embd")]
    pub n_embd: usize,
    /// Layers.
    #[serde(default = "default_gpt2_layers")]
    pub n_layer: usize,
    /// Attention heads.
    #[serde(default = "default_gpt2_layers")]
    pub n_head: usize,
    /// MLP inner size; defaults to `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// Layer norm epsilon.
    #[serde(default = "default_gpt2_ln_eps")]
    pub layer_norm_epsilon: f64,
    /// Activation (`gelu_new` in GPT-2).
    #[serde(default = "default_gpt2_act")]
    pub activation_function: String,
    /// Divide attention scores by `sqrt(head_dim)`.
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    /// Divide attention scores further by `layer_idx + 1`.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// BOS token id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// EOS token id.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

impl Gpt2Config {
    /// MLP inner size.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

/// Gemma-3 text configuration (transformers' `Gemma3TextConfig`, `model_type = "gemma3_text"`), HF field names
/// and defaults. transformers 5 writes the rotary bases as `rope_parameters` per layer type;
/// [`crate::gemma3`]'s folder loader moves them to `rope_theta` / `rope_local_base_freq` before parsing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gemma3Config {
    /// Vocabulary size.
    #[serde(default = "default_gemma3_vocab")]
    pub vocab_size: usize,
    /// Hidden size.
    #[serde(default = "default_gemma3_hidden")]
    pub hidden_size: usize,
    /// MLP inner size.
    #[serde(default = "default_gemma3_inner")]
    pub intermediate_size: usize,
    /// Decoder layers.
    #[serde(default = "default_gemma3_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "default_gemma3_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    #[serde(default = "default_gemma3_kv_heads")]
    pub num_key_value_heads: usize,
    /// Head dimension (independent of `hidden_size / num_attention_heads` in Gemma).
    #[serde(default = "default_gemma3_head_dim")]
    pub head_dim: usize,
    /// MLP activation (`gelu_pytorch_tanh`).
    #[serde(default = "default_gemma3_act")]
    pub hidden_activation: String,
    /// Context length.
    #[serde(default = "default_gemma3_positions")]
    pub max_position_embeddings: usize,
    /// RMS norm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base of the global (full attention) layers.
    #[serde(default = "default_gemma3_global_theta")]
    pub rope_theta: f64,
    /// RoPE base of the sliding-window (local) layers.
    #[serde(default = "default_rope_theta")]
    pub rope_local_base_freq: f64,
    /// Attention scores are scaled by `query_pre_attn_scalar ** -0.5` (not `head_dim ** -0.5`).
    #[serde(default = "default_gemma3_query_scalar")]
    pub query_pre_attn_scalar: f64,
    /// Keys a sliding layer's query sees: itself and the `sliding_window - 1` positions before it.
    #[serde(default = "default_gemma3_window")]
    pub sliding_window: Option<usize>,
    /// `sliding_attention` / `full_attention` per layer; derived from `sliding_window_pattern` when absent.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Older configs: every `sliding_window_pattern`-th layer is global, the others slide (default 6).
    #[serde(default, alias = "_sliding_window_pattern")]
    pub sliding_window_pattern: Option<usize>,
    /// Whether q/k/v/o projections carry biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// `cap * tanh(logits / cap)` on the LM head's output, where set (None for Gemma-3).
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    /// Attention score soft-capping: read, but not applied, as transformers' Gemma-3 attention never applies it.
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    /// Bidirectional attention (EmbeddingGemma); not supported, refused when true.
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    /// Whether the LM head shares the token embedding matrix.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// BOS token id.
    #[serde(default = "default_gemma3_bos")]
    pub bos_token_id: Option<u32>,
    /// EOS token id.
    #[serde(default = "default_gemma3_eos")]
    pub eos_token_id: Option<u32>,
    /// Padding token id.
    #[serde(default = "default_gemma3_pad")]
    pub pad_token_id: Option<u32>,
}

/// The attention of one Gemma-3 layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gemma3Attention {
    /// `sliding_attention`: a window of `sliding_window` positions, the local RoPE base.
    Sliding,
    /// `full_attention`: every earlier position, the global RoPE base.
    Full,
}

impl Gemma3Config {
    /// Each layer's attention: `layer_types`, or (older configs) every `sliding_window_pattern`-th layer global.
    pub fn layer_kinds(&self) -> Result<Vec<Gemma3Attention>> {
        let Some(types) = &self.layer_types else {
            let pattern = self.sliding_window_pattern.unwrap_or(6);
            if pattern == 0 {
                return Err(ModelError::Config(
                    "`sliding_window_pattern` = 0: it must be at least 1".into(),
                ));
            }
            return Ok((0..self.num_hidden_layers)
                .map(|i| {
                    if (i + 1) % pattern == 0 {
                        Gemma3Attention::Full
                    } else {
                        Gemma3Attention::Sliding
                    }
                })
                .collect());
        };
        if types.len() != self.num_hidden_layers {
            return Err(ModelError::Config(format!(
                "`layer_types` lists {} layers, `num_hidden_layers` is {}",
                types.len(),
                self.num_hidden_layers
            )));
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(Gemma3Attention::Sliding),
                "full_attention" => Ok(Gemma3Attention::Full),
                other => Err(ModelError::Config(format!(
                    "`layer_types` entry `{other}` is not supported (sliding_attention, full_attention)"
                ))),
            })
            .collect()
    }
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_llama_positions() -> usize {
    2048
}
fn default_gpt2_vocab() -> usize {
    50257
}
fn default_gpt2_positions() -> usize {
    1024
}
fn default_gpt2_embd() -> usize {
    768
}
fn default_gpt2_layers() -> usize {
    12
}
fn default_gpt2_ln_eps() -> f64 {
    1e-5
}
fn default_gpt2_act() -> String {
    "gelu_new".into()
}
fn default_true() -> bool {
    true
}
fn default_gemma3_vocab() -> usize {
    262_208
}
fn default_gemma3_hidden() -> usize {
    2304
}
fn default_gemma3_inner() -> usize {
    9216
}
fn default_gemma3_layers() -> usize {
    26
}
fn default_gemma3_heads() -> usize {
    8
}
fn default_gemma3_kv_heads() -> usize {
    4
}
fn default_gemma3_head_dim() -> usize {
    256
}
fn default_gemma3_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_gemma3_positions() -> usize {
    131_072
}
fn default_gemma3_global_theta() -> f64 {
    1_000_000.0
}
fn default_gemma3_query_scalar() -> f64 {
    256.0
}
fn default_gemma3_window() -> Option<usize> {
    Some(4096)
}
fn default_gemma3_bos() -> Option<u32> {
    Some(2)
}
fn default_gemma3_eos() -> Option<u32> {
    Some(1)
}
fn default_gemma3_pad() -> Option<u32> {
    Some(0)
}
