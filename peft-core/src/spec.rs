//! What a frozen model is, as the methods see it: its shape and its injection sites, named with Hugging Face
//! parameter names. Sites are resolved once, when an adapter is built; at forward time a site is an index.
//!
//! ```
//! use peft_core::spec::{ModelSpec, Role, Site, SiteKind};
//! let mut spec = ModelSpec::new("llama", 2, 64, 4, 2, 128, 256);
//! let q = spec.add_site(Site::linear("model.layers.0.self_attn.q_proj", Some(0), 64, 64, false));
//! assert_eq!(spec.site(q).name, "model.layers.0.self_attn.q_proj");
//! assert_eq!(spec.find_site("model.layers.0.self_attn.q_proj"), Some(q));
//! assert!(matches!(spec.site(q).kind, SiteKind::Linear { .. }));
//! // The model says what the site is; methods choose their defaults by role, not by architecture.
//! let q = spec.add_site(Site::linear("model.layers.1.self_attn.q_proj", Some(1), 64, 64, false).with_role(Role::Query));
//! assert_eq!(spec.sites_with_any_role(&[Role::Query]), vec![q]);
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

/// What a site is in the transformer, declared once by the model that registers it. Methods state their
/// defaults and presets in roles (LoRA: query and value, or the fused projection that holds them; IA3: key,
/// value and the MLP's down projection), so that a new architecture works with every method without a table
/// keyed by its name. Cross-attention projections (T5's `EncDecAttention`) carry the same roles as
/// self-attention ones, as HF PEFT's module-name defaults select both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// The attention's query projection.
    Query,
    /// The attention's key projection.
    Key,
    /// The attention's value projection.
    Value,
    /// One projection computing query, key and value together (GPT-2's `c_attn`).
    QueryKeyValue,
    /// The projection after attention, back to the hidden size (`o_proj`, `c_proj`, `attention.output.dense`).
    AttentionOutput,
    /// The MLP's widening projection (`up_proj`, `c_fc`, `fc1`, `intermediate.dense`, T5's `wi` / `wi_1`).
    MlpUp,
    /// The gate of a gated MLP (`gate_proj`, T5 v1.1's `wi_0`).
    MlpGate,
    /// The MLP's narrowing projection back to the hidden size (`down_proj`, `mlp.c_proj`, `fc2`, `output.dense`,
    /// T5's `wo`).
    MlpDown,
    /// A norm before (or, post-LN, after) attention.
    AttentionNorm,
    /// A norm before (or after) the MLP.
    MlpNorm,
    /// The norm after the last layer (or the embeddings' norm of a post-LN encoder).
    FinalNorm,
    /// A norm over the embeddings (BERT's `embeddings.LayerNorm`).
    EmbeddingNorm,
    /// A pooler over the sequence (BERT's `pooler.dense`).
    Pooler,
    /// A projection between the embedding width and the hidden size (OPT's `project_in` / `project_out`).
    WidthProjection,
    /// Anything else.
    Other,
}

impl Role {
    /// Whether the role is a norm's.
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            Role::AttentionNorm | Role::MlpNorm | Role::FinalNorm | Role::EmbeddingNorm
        )
    }
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
    /// What the site is (query, MLP down projection, ...).
    #[serde(default = "default_role")]
    pub role: Role,
}

fn default_role() -> Role {
    Role::Other
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
            role: Role::Other,
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
            role: Role::Other,
        }
    }

    /// A norm site.
    pub fn norm(name: impl Into<String>, layer: Option<usize>, dim: usize, bias: bool) -> Self {
        Site {
            name: name.into(),
            layer,
            kind: SiteKind::Norm { dim },
            has_bias: bias,
            role: Role::Other,
        }
    }

    /// The site with its role declared.
    pub fn with_role(mut self, role: Role) -> Self {
        self.role = role;
        self
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
    /// How the frozen weights are stored: per storage type (`f32`, or a GGUF block format such as `q4_k` for a
    /// base kept quantized), the number of values and the bytes they take. Filled by the loader.
    #[serde(default)]
    pub weight_storage: std::collections::BTreeMap<String, WeightStorage>,
}

/// Values and bytes of one storage type ([`ModelSpec::weight_storage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightStorage {
    /// Number of weight values.
    pub values: usize,
    /// Bytes they occupy.
    pub bytes: usize,
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
            weight_storage: Default::default(),
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

    /// The sites that play any of `roles`, in site order: how a method states a default or a preset.
    pub fn sites_with_any_role(&self, roles: &[Role]) -> Vec<SiteId> {
        self.iter_sites()
            .filter(|(_, s)| roles.contains(&s.role))
            .map(|(id, _)| id)
            .collect()
    }

    /// The linear sites (projections) that play any of `roles`, in site order: the sites a projection
    /// method's default adapts.
    pub fn projections_with_any_role(&self, roles: &[Role]) -> Vec<SiteId> {
        self.sites_with_any_role(roles)
            .into_iter()
            .filter(|&id| matches!(self.site(id).kind, SiteKind::Linear { .. }))
            .collect()
    }

    /// Module names that select exactly the `chosen` sites by HF PEFT's list rule (a name matches a module
    /// whose full name equals it or ends with `"." + name`), in the order of `chosen`, each name once: per site,
    /// the shortest dotted suffix of its name (`q_proj`, then `self_attn.q_proj`, ...) that matches no other
    /// site and no parent module. This is the `target_modules` list a saved config carries for a default chosen
    /// by role, so that HF PEFT, which matches names, selects the same modules.
    ///
    /// ```
    /// use peft_core::spec::{ModelSpec, Site};
    /// let mut spec = ModelSpec::new("gpt2", 1, 8, 2, 2, 10, 16);
    /// let attn = spec.add_site(Site::conv1d("h.0.attn.c_proj", Some(0), 8, 8));
    /// let mlp = spec.add_site(Site::conv1d("h.0.mlp.c_proj", Some(0), 32, 8));
    /// assert_eq!(spec.target_names(&[mlp]), ["mlp.c_proj"]);
    /// assert_eq!(spec.target_names(&[attn, mlp]), ["c_proj"]);
    /// ```
    pub fn target_names(&self, chosen: &[SiteId]) -> Vec<String> {
        // Every module HF PEFT tests a name against that must stay unselected: the other sites and the parents.
        let mut others: Vec<&str> = Vec::new();
        for (id, site) in self.iter_sites() {
            if !chosen.contains(&id) {
                others.push(&site.name);
            }
            others.extend(
                site.name
                    .match_indices('.')
                    .map(|(dot, _)| &site.name[..dot]),
            );
        }
        let mut names: Vec<String> = Vec::new();
        for &id in chosen {
            let name = self.site(id).name.as_str();
            let suffixes = name
                .rmatch_indices('.')
                .map(|(dot, _)| &name[dot + 1..])
                .chain(std::iter::once(name));
            let mut picked = name;
            for suffix in suffixes {
                if !others.iter().any(|o| suffix_selects(suffix, o)) {
                    picked = suffix;
                    break;
                }
            }
            if !names.iter().any(|n| n == picked) {
                names.push(picked.to_string());
            }
        }
        names
    }
}

/// HF PEFT's list rule: `entry` selects the module `name` equal to it or ending with `"." + entry`.
fn suffix_selects(entry: &str, name: &str) -> bool {
    name.strip_suffix(entry)
        .is_some_and(|head| head.is_empty() || head.ends_with('.'))
}
