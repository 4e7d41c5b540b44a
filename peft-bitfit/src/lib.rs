//! BitFit (Ben Zaken et al., 2022, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
//! Language-models"): only biases train. HF PEFT has no BitFit, so its config is this crate's own
//! (`peft_type = "BITFIT"`), saved in the standard adapter folder; the weights file holds the trained biases
//! under the frozen model's HF parameter names (`transformer.h.0.attn.c_attn.bias`, ...).
//!
//! `targets` chooses the biases: `"all"` (default: every bias the checkpoint has, at linear and norm sites), the
//! preset `"paper"` (the query and intermediate-MLP biases, `b_q` and `b_m2`, chosen by the roles the
//! model's sites declare ([`PAPER_ROLES`]): GPT-2 `c_attn` — fused q, k, v, so
//! its whole bias trains — and `mlp.c_fc`; LLaMA `q_proj`, `gate_proj`, `up_proj`), or a list of module short names or dotted
//! suffixes. Where a chosen site has no bias (LLaMA has none), `add_missing_biases` (default true) adds a
//! zero-initialised one, so the adapter starts as the frozen model; with `"all"` on LLaMA every linear
//! projection gets one (RMS norms get one only when named). The adapter's
//! [`notes`](peft_core::method::Adapter::notes) say which were added.
//!
//! ```
//! use peft_bitfit::{BitFit, BitFitConfig, BitFitTargets};
//! use peft_core::method::{Adapter, InitCtx, PeftMethod};
//! use rand::SeedableRng;
//! let cfg: Box<dyn PeftMethod> =
//!     serde_json::from_str(r#"{"peft_type": "BITFIT", "targets": ["c_attn", "mlp.c_proj"]}"#).unwrap();
//! let model = peft_models::tiny::gpt2(0); // 2 layers, hidden 32
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = cfg.build(&mut init).unwrap();
//! assert_eq!(adapter.num_trainable(), 2 * (3 * 32 + 32));
//! assert_eq!(adapter.trainable()[0].0, "transformer.h.0.attn.c_attn.bias");
//!
//! let llama = peft_models::tiny::llama(0);
//! let bitfit = BitFit::new(BitFitConfig::new(BitFitTargets::Paper), &llama).unwrap();
//! assert_eq!(bitfit.keys()[0], "model.layers.0.self_attn.q_proj.bias");
//! assert!(bitfit.notes()[0].contains("zero-initialised"));
//! ```

mod adapter;
mod config;
mod targets;

pub use adapter::BitFit;
pub use config::{BitFitConfig, BitFitTargets};
pub use targets::PAPER_ROLES;

/// Makes sure this crate's method is linked (and so registered with typetag) into a binary that names no
/// other item of it.
pub fn register() {}
