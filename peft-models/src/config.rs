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
