//! T5's `config.json` as Hugging Face spells it (`T5Config`), with transformers 5's reading of the fields that
//! changed meaning over the versions: the feed-forward kind, the output scaling of a tied head, the decoder depth.
//!
//! ```
//! use peft_models::parts::Activation;
//! use peft_models::t5::T5Config;
//! let flan: T5Config = serde_json::from_str(r#"{"d_model": 512, "feed_forward_proj": "gated-gelu",
//!     "tie_word_embeddings": false, "num_decoder_layers": 8}"#).unwrap();
//! assert!(flan.is_gated().unwrap());
//! assert_eq!(flan.activation().unwrap(), Activation::GeluTanh); // gated-gelu means gelu_new
//! assert!(!flan.scales_decoder_output());
//! assert_eq!((flan.num_layers, flan.decoder_layers()), (6, 8));
//! let t5: T5Config = serde_json::from_str("{}").unwrap();
//! assert_eq!((t5.is_gated().unwrap(), t5.scales_decoder_output()), (false, true));
//! assert_eq!(t5.decoder_start_token(), 0);
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::parts::Activation;

/// T5 configuration (T5 v1.0, T5 v1.1, flan-t5), HF `T5Config` field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// Vocabulary size.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Hidden size.
    #[serde(default = "default_d_model")]
    pub d_model: usize,
    /// Dimension of one attention head (may differ from `d_model / num_heads`).
    #[serde(default = "default_d_kv")]
    pub d_kv: usize,
    /// Feed-forward inner size.
    #[serde(default = "default_d_ff")]
    pub d_ff: usize,
    /// Encoder blocks (what HF PEFT reads as the model's layers).
    #[serde(default = "default_layers")]
    pub num_layers: usize,
    /// Decoder blocks; defaults to `num_layers`.
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    /// Attention heads.
    #[serde(default = "default_heads")]
    pub num_heads: usize,
    /// Buckets of the relative position bias.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Relative distance from which every position shares the last bucket.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    /// Epsilon of the T5 layer norm (an RMS norm without bias).
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` (T5 v1.0), `gated-gelu` (T5 v1.1, flan-t5), or `[gated-]<activation>`.
    #[serde(default = "default_ff_proj")]
    pub feed_forward_proj: String,
    /// The activation, where the config states it (transformers writes it; it wins over `feed_forward_proj`).
    #[serde(default)]
    pub dense_act_fn: Option<String>,
    /// Whether the feed-forward is gated, where the config states it (wins over `feed_forward_proj`).
    #[serde(default)]
    pub is_gated_act: Option<bool>,
    /// Whether the head is tied to `shared`: `false` in T5 v1.1 / flan-t5 configs, which have an `lm_head.weight`
    /// and no output scaling.
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Whether the decoder output is scaled by `d_model^-0.5` before the head (transformers 5 writes it;
    /// otherwise it is `tie_word_embeddings != false`).
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    /// Padding token id (T5's decoder start token unless the config names another).
    #[serde(default = "default_pad")]
    pub pad_token_id: Option<u32>,
    /// EOS token id.
    #[serde(default = "default_eos")]
    pub eos_token_id: Option<u32>,
    /// The token the decoder starts from.
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
    /// The context that old configs record (the tokenizer's `model_max_length`); T5 itself has no position limit.
    #[serde(default)]
    pub n_positions: Option<usize>,
}

fn default_vocab() -> usize {
    32128
}
fn default_d_model() -> usize {
    512
}
fn default_d_kv() -> usize {
    64
}
fn default_d_ff() -> usize {
    2048
}
fn default_layers() -> usize {
    6
}
fn default_heads() -> usize {
    8
}
fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff_proj() -> String {
    "relu".into()
}
fn default_pad() -> Option<u32> {
    Some(0)
}
fn default_eos() -> Option<u32> {
    Some(1)
}

/// The context recorded in [`ModelSpec::max_positions`](peft_core::spec::ModelSpec) when the config names
/// none: the 512 tokens T5 was trained with (its tokenizers' `model_max_length`).
pub const DEFAULT_CONTEXT: usize = 512;

impl T5Config {
    /// Decoder blocks (`num_decoder_layers`, else `num_layers`).
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// `feed_forward_proj` split as transformers does: (gated, activation name).
    fn feed_forward(&self) -> Result<(bool, String)> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        if parts.len() > 2 || (parts.len() == 2 && parts[0] != "gated") {
            return Err(ModelError::Config(format!(
                "T5 feed_forward_proj `{}` is not `<activation>` or `gated-<activation>` (e.g. `relu`, `gated-gelu`)",
                self.feed_forward_proj
            )));
        }
        let gated = parts[0] == "gated";
        let act = if self.feed_forward_proj == "gated-gelu" {
            "gelu_new".to_string()
        } else {
            parts[parts.len() - 1].to_string()
        };
        Ok((gated, act))
    }

    /// Whether the feed-forward is gated (`wo(act(wi_0 x) * wi_1 x)`) rather than `wo(act(wi x))`.
    pub fn is_gated(&self) -> Result<bool> {
        let (gated, _) = self.feed_forward()?;
        Ok(self.is_gated_act.unwrap_or(gated))
    }

    /// The feed-forward activation.
    pub fn activation(&self) -> Result<Activation> {
        let (_, act) = self.feed_forward()?;
        Activation::parse(self.dense_act_fn.as_deref().unwrap_or(&act))
    }

    /// Whether the decoder output is multiplied by `d_model^-0.5` before the head (T5 v1.0's tied head).
    pub fn scales_decoder_output(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings != Some(false))
    }

    /// The decoder start token (`decoder_start_token_id`, else the padding token, else 0).
    pub fn decoder_start_token(&self) -> u32 {
        self.decoder_start_token_id
            .or(self.pad_token_id)
            .unwrap_or(0)
    }

    /// The context recorded in the spec: `n_positions`, else [`DEFAULT_CONTEXT`].
    pub fn context(&self) -> usize {
        self.n_positions.unwrap_or(DEFAULT_CONTEXT)
    }

    /// Refuses dimensions the model cannot run with.
    pub fn validate(&self) -> Result<()> {
        self.is_gated()?;
        self.activation()?;
        let dims = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.decoder_layers()),
        ];
        if let Some((name, _)) = dims.iter().find(|(_, v)| *v == 0) {
            return Err(ModelError::Config(format!("T5 {name} is 0")));
        }
        // The layer counts are checked against the checkpoint's blocks instead (`T5::from_weights`).
        crate::config_checks::check_sizes(&dims[..5])?;
        crate::config_checks::check_sizes(&[
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
            ("n_positions", self.context()),
        ])?;
        crate::config_checks::check_eps("layer_norm_epsilon", self.layer_norm_epsilon)?;
        // The encoder's buckets are halved per direction, then halved again into exact and logarithmic ones.
        let (buckets, max_distance) = (
            self.relative_attention_num_buckets,
            self.relative_attention_max_distance,
        );
        if buckets < 4 || max_distance <= buckets / 2 {
            return Err(ModelError::Config(format!(
                "T5 relative_attention_num_buckets {buckets} and relative_attention_max_distance {max_distance}: \
                 at least 4 buckets are needed, and a max distance above half of them"
            )));
        }
        Ok(())
    }
}
