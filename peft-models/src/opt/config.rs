//! OPT's configuration as Hugging Face's `config.json` spells it (`OPTConfig`), with its defaults (those of
//! opt-125m's shape where a field is absent).

use serde::{Deserialize, Serialize};

/// OPT configuration, HF `OPTConfig` field names and defaults.
///
/// ```
/// let cfg: peft_models::opt::OptConfig = serde_json::from_str(r#"{"hidden_size": 64}"#).unwrap();
/// assert_eq!(cfg.word_embed_proj_dim(), 64); // defaults to hidden_size
/// assert!(cfg.do_layer_norm_before && cfg.enable_bias && cfg.tie_word_embeddings);
/// assert_eq!((cfg.activation_function.as_str(), cfg.eos_token_id), ("relu", Some(2)));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptConfig {
    /// Vocabulary size.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Hidden size of the decoder layers.
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    /// Decoder layers.
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    /// MLP inner size.
    #[serde(default = "default_ffn")]
    pub ffn_dim: usize,
    /// Context length (the position table has two more rows: OPT's offset).
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Pre-norm blocks (opt-125m, and every size but 350m) where true; post-norm (opt-350m) where false.
    #[serde(default = "default_true")]
    pub do_layer_norm_before: bool,
    /// Drops the decoder's final layer norm (only pre-norm models have one).
    #[serde(rename = "_remove_final_layer_norm", default)]
    pub remove_final_layer_norm: bool,
    /// Width of the token embeddings and of the LM head; where it differs from `hidden_size`, `project_in` /
    /// `project_out` map between the two. Defaults to `hidden_size`.
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    /// Attention heads.
    #[serde(default = "default_layers")]
    pub num_attention_heads: usize,
    /// MLP activation.
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Whether the projections carry biases.
    #[serde(default = "default_true")]
    pub enable_bias: bool,
    /// Whether the layer norms have a weight and a bias (without them they only normalise).
    #[serde(default = "default_true")]
    pub layer_norm_elementwise_affine: bool,
    /// Whether the LM head is the token embedding matrix (otherwise `lm_head.weight`).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Padding token id.
    #[serde(default = "default_pad")]
    pub pad_token_id: Option<u32>,
    /// BOS token id.
    #[serde(default = "default_eos")]
    pub bos_token_id: Option<u32>,
    /// EOS token id.
    #[serde(default = "default_eos")]
    pub eos_token_id: Option<u32>,
}

impl OptConfig {
    /// Width of the token embeddings and the LM head.
    pub fn word_embed_proj_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    /// Whether the decoder ends with a layer norm (pre-norm models unless `_remove_final_layer_norm`).
    pub fn has_final_layer_norm(&self) -> bool {
        self.do_layer_norm_before && !self.remove_final_layer_norm
    }
}

/// `nn.LayerNorm`'s default epsilon, which OPT keeps.
pub(crate) const LAYER_NORM_EPS: f64 = 1e-5;

fn default_vocab() -> usize {
    50272
}
fn default_hidden() -> usize {
    768
}
fn default_layers() -> usize {
    12
}
fn default_ffn() -> usize {
    3072
}
fn default_positions() -> usize {
    2048
}
fn default_activation() -> String {
    "relu".into()
}
fn default_true() -> bool {
    true
}
fn default_pad() -> Option<u32> {
    Some(1)
}
fn default_eos() -> Option<u32> {
    Some(2)
}
