//! LoKr (Yeh et al., 2023, "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model
//! Evaluation"): per adapted module `ΔW = kron(w1, w2) · alpha / r`, with `w1` `[out_l, in_m]` and `w2`
//! `[out_k, in_n]` (`out = out_l out_k`, `in = in_m in_n` by [`factorization`](crate::factorization)), each a
//! full matrix or a rank-`r` product by HF PEFT's rules (see [`LokrConfig::sides`]).
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx, PeftMethod};
//! use rand::SeedableRng;
//! peft_lycoris::register();
//! let config: Box<dyn PeftMethod> =
//!     serde_json::from_str(r#"{"peft_type": "LOKR", "r": 1, "decompose_both": true}"#).unwrap();
//! let model = peft_models::tiny::llama(0);
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = config.build(&mut init).unwrap();
//! // q_proj, 32 -> 32 = (4 x 8) -> (4 x 8): both sides decomposed at r = 1.
//! let q: Vec<(String, Vec<usize>)> = adapter.trainable().into_iter().take(4)
//!     .map(|(k, v)| (k.rsplit('.').next().unwrap().to_string(), v.dims().to_vec())).collect();
//! assert_eq!(q, [("lokr_w1_a".into(), vec![4, 1]), ("lokr_w1_b".into(), vec![1, 4]),
//!                ("lokr_w2_a".into(), vec![8, 1]), ("lokr_w2_b".into(), vec![1, 8])]);
//! ```

mod config;
mod factorization;
mod factors;

pub use config::{LokrConfig, LokrInitWeights};
pub use factorization::factorization;
pub use factors::{kron, KronFactor, KronFactors};

/// A built LoKr adapter.
pub type Lokr = crate::shared::adapter::LycorisAdapter<LokrConfig, KronFactors>;
