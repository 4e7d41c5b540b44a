//! LoHa (Hyeon-Woo et al., 2022, FedPara's low-rank Hadamard product, as LyCORIS and HF PEFT name it): per
//! adapted module `ΔW = (w1_a w1_b) ⊙ (w2_a w2_b) · alpha / r`, with `hada_w1_a`, `hada_w2_a` `[out, r]` and
//! `hada_w1_b`, `hada_w2_b` `[r, in]`, so that a rank-`r` budget reaches rank up to `r²`.
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx, PeftMethod};
//! use rand::SeedableRng;
//! peft_lycoris::register();
//! let config: Box<dyn PeftMethod> = serde_json::from_str(r#"{"peft_type": "LOHA", "r": 4}"#).unwrap();
//! let model = peft_models::tiny::llama(0);
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = config.build(&mut init).unwrap();
//! let (key, var) = &adapter.trainable()[0];
//! assert_eq!(key, "base_model.model.model.layers.0.self_attn.q_proj.hada_w1_a");
//! assert_eq!(var.dims(), &[32, 4]); // [out, r]
//! // Two layers of q_proj (32 -> 32) and v_proj (32 -> 16): 2 r (out + in) each.
//! assert_eq!(adapter.num_trainable(), 2 * (2 * 4 * (32 + 32) + 2 * 4 * (16 + 32)));
//! ```

mod config;
mod factors;

pub use config::LohaConfig;
pub use factors::HadaFactors;

/// A built LoHa adapter.
pub type Loha = crate::shared::adapter::LycorisAdapter<LohaConfig, HadaFactors>;
