//! BERT's configuration as Hugging Face's `config.json` spells it (`BertConfig`), with transformers' defaults.

use serde::{Deserialize, Serialize};

/// BERT configuration, HF `BertConfig` field names and defaults (those of `bert-base-uncased`).
///
/// ```
/// let cfg: peft_models::bert::BertConfig = serde_json::from_str(r#"{"hidden_size": 384}"#).unwrap();
/// assert_eq!((cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size), (384, 12, 30522));
/// assert_eq!(cfg.hidden_act, "gelu");
/// assert_eq!(cfg.layer_norm_eps, 1e-12);
/// assert_eq!(cfg.pad_token_id, Some(0));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Hidden size.
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    /// Encoder layers.
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    /// MLP inner size.
    #[serde(default = "default_intermediate")]
    pub intermediate_size: usize,
    /// MLP activation (`gelu` is the exact erf form).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Learned absolute positions.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Segment (token type) vocabulary.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Padding token id (HF's default 0; `null` in the config means none).
    #[serde(default = "default_pad")]
    pub pad_token_id: Option<u32>,
    /// Position embedding kind: only `absolute` exists in transformers 5 (older configs may name others).
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    /// A causal BERT decoder (not supported: this crate's BERT is the bidirectional encoder).
    #[serde(default)]
    pub is_decoder: bool,
}

impl Default for BertConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

fn default_vocab() -> usize {
    30522
}
fn default_hidden() -> usize {
    768
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_intermediate() -> usize {
    3072
}
fn default_act() -> String {
    "gelu".into()
}
fn default_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_pad() -> Option<u32> {
    Some(0)
}
fn default_position_type() -> String {
    "absolute".into()
}
