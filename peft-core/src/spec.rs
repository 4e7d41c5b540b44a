//! What a frozen model is, as the methods see it: its shape and its injection sites, named with Hugging Face
//! parameter names. Sites are resolved once, when an adapter is built; at forward time a site is an index.
//!
//! ```
//! use peft_core::spec::{ModelSpec, Site, SiteKind};
//! let mut spec = ModelSpec::new("llama", 2, 64, 4, 2, 128, 256);
//! let q = spec.add_site(Site::linear("model.layers.0.self_attn.q_proj", Some(0), 64, 64, false));
//! assert_eq!(spec.site(q).name, "model.layers.0.self_attn.q_proj");
//! assert_eq!(spec.find_site("model.layers.0.self_attn.q_proj"), Some(q));
//! assert!(matches!(spec.site(q).kind, SiteKind::Linear { .. }));
//! ```

use serde::{Deserialize, Serialize};

/// Index of an injection site in [`ModelSpec::sites`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SiteId(pub usize);

/// What kind of module sits at a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SiteKind {
    /// A dense projection `y = x W^T (+ b)`; `fan_in_fan_out` marks GPT-2's Conv1D, stored as `[in, out]`.
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
        /// True where the checkpoint stores the weight transposed (`[in, out]`, GPT-2's Conv1D).
        fan_in_fan_out: bool,
    },
    /// A layer norm or RMS norm over `dim` features.
    Norm {
        /// Normalised features.
        dim: usize,
    },
}

/// One injection site: a module of the frozen model addressed by its Hugging Face name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Hugging Face module name, e.g. `transformer.h.0.attn.c_attn` (parameters are `<name>.weight`, `<name>.bias`).
    pub name: String,
    /// The transformer layer the site belongs to (`None` for embeddings, final norms, heads).
    pub layer: Option<usize>,
    /// The module kind and its dimensions.
    pub kind: SiteKind,
    /// Whether the frozen checkpoint has a bias here.
    pub has_bias: bool,
}

impl Site {
    /// A linear site with a `[out, in]` weight.
    pub fn linear(
        name: impl Into<String>,
        layer: Option<usize>,
        in_f: usize,
        out_f: usize,
        bias: bool,
    ) -> Self {
        Site {
            name: name.into(),
            layer,
            kind: SiteKind::Linear {
                in_features: in_f,
                out_features: out_f,
                fan_in_fan_out: false,
            },
            has_bias: bias,
        }
    }

    /// A GPT-2 Conv1D site (weight stored `[in, out]` in the checkpoint).
    pub fn conv1d(
        name: impl Into<String>,
        layer: Option<usize>,
        in_f: usize,
        out_f: usize,
    ) -> Self {
        Site {
            name: name.into(),
            layer,
            kind: SiteKind::Linear {
                in_features: in_f,
                out_features: out_f,
                fan_in_fan_out: true,
            },
            has_bias: true,
        }
    }

    /// A norm site.
    pub fn norm(name: impl Into<String>, layer: Option<usize>, dim: usize, bias: bool) -> Self {
        Site {
            name: name.into(),
            layer,
            kind: SiteKind::Norm { dim },
            has_bias: bias,
        }
    }

    /// The last component of the name (`c_attn`, `q_proj`, `ln_1`), which `target_modules` lists match.
    pub fn short_name(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }
}

/// The shape of a frozen model and its injection sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Architecture name as Hugging Face's `model_type` (`gpt2`, `llama`, ...).
    pub architecture: String,
    /// Number of transformer layers.
    pub num_layers: usize,
    /// Hidden size (= token embedding dimension).
    pub hidden_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Key/value heads (smaller than `num_heads` under grouped-query attention).
    pub num_kv_heads: usize,
    /// Dimension of one attention head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the token embedding).
    pub vocab_size: usize,
    /// Longest sequence the model accepts (virtual tokens included).
    pub max_positions: usize,
    /// Total parameters of the frozen model.
    pub num_parameters: usize,
    /// Where the model was loaded from (`base_model_name_or_path` of saved adapters).
    pub name_or_path: String,
    /// Injection sites, indexed by [`SiteId`].
    pub sites: Vec<Site>,
    /// Whether the model is an encoder-decoder (T5): HF's `is_encoder_decoder`.
    #[serde(default)]
    pub is_encoder_decoder: bool,
    /// The module name of transformers' classification head for this architecture (`score` for decoders,
    /// `classifier` for BERT), under which HF PEFT saves a trained head.
    #[serde(default = "default_classifier_module")]
    pub classifier_module: String,
    /// Whether that head has a bias (BERT's `classifier` does, decoders' `score` does not).
    #[serde(default)]
    pub classifier_bias: bool,
    /// transformers' `base_model_prefix` where its task-head models nest the base model under a name our site
    /// names lack: `Some("bert")` for BERT, whose sites are named as a bare `BertModel` names them
    /// (`encoder.layer.0.attention.self.query`) while `BertForSequenceClassification` holds them as
    /// `bert.encoder.layer.0...`. `None` where our names already are the task models' (decoders name their sites
    /// as their `*ForCausalLM`, whose body `*ForSequenceClassification` nests the same way).
    /// [`adapter_io`](crate::adapter_io) adds it to the keys of a saved `SEQ_CLS` / `TOKEN_CLS` adapter and
    /// strips it when loading, as HF PEFT keys such an adapter.
    #[serde(default)]
    pub base_model_prefix: Option<String>,
}

fn default_classifier_module() -> String {
    "score".into()
}

impl ModelSpec {
    /// A spec without sites; `head_dim` is `hidden / heads`.
    pub fn new(
        architecture: impl Into<String>,
        num_layers: usize,
        hidden_size: usize,
        num_heads: usize,
        num_kv_heads: usize,
        vocab_size: usize,
        max_positions: usize,
    ) -> Self {
        ModelSpec {
            architecture: architecture.into(),
            num_layers,
            hidden_size,
            num_heads,
            num_kv_heads,
            head_dim: hidden_size / num_heads.max(1),
            vocab_size,
            max_positions,
            num_parameters: 0,
            name_or_path: String::new(),
            sites: Vec::new(),
            is_encoder_decoder: false,
            classifier_module: default_classifier_module(),
            classifier_bias: false,
            base_model_prefix: None,
        }
    }

    /// Registers a site and returns its id.
    pub fn add_site(&mut self, site: Site) -> SiteId {
        self.sites.push(site);
        SiteId(self.sites.len() - 1)
    }

    /// The site behind an id.
    pub fn site(&self, id: SiteId) -> &Site {
        &self.sites[id.0]
    }

    /// Finds a site by its full Hugging Face module name.
    pub fn find_site(&self, name: &str) -> Option<SiteId> {
        self.sites.iter().position(|s| s.name == name).map(SiteId)
    }

    /// All sites with their ids.
    pub fn iter_sites(&self) -> impl Iterator<Item = (SiteId, &Site)> {
        self.sites.iter().enumerate().map(|(i, s)| (SiteId(i), s))
    }
}
