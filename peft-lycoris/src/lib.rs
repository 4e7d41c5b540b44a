//! HF PEFT's LyCORIS methods LoHa (`peft_type = "LOHA"`) and LoKr (`"LOKR"`), with its config fields, file
//! format and forward pass: each adapted linear module computes `base(x) + x ΔW^T`, where `ΔW` is a Hadamard
//! product of two low-rank products (LoHa) or a Kronecker product of two factors (LoKr), scaled by
//! `alpha / r`. Adapters saved by HF PEFT load here with its logits and trainable counts, and adapters saved
//! here load in HF PEFT.
//!
//! Only linear modules are adapted (the zoo has no convolutions), so HF's convolution options do nothing here:
//! `use_effective_conv2d` is read and written back, as HF ignores it for `nn.Linear`. GPT-2's `Conv1D`
//! projections are linear modules here (their weights are `[out, in]` once loaded) and are adapted like any
//! other, with factors in the `[out, in]` orientation; HF PEFT's LyCORIS tuners accept only `nn.Linear`,
//! `nn.Conv1d` and `nn.Conv2d`, so they refuse GPT-2 (see this crate's tests for what is checked there).
//!
//! Layout: `shared/` (the `LycorisConfig` fields, targets, the adapter, dropouts, init, build steps), `loha/`
//! and `lokr/` (each method's config and factors).
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx, PeftMethod};
//! use rand::SeedableRng;
//! peft_lycoris::register(); // links the LOHA and LOKR tags into this binary
//! let mut model = peft_models::tiny::gpt2(0);
//! for json in [r#"{"peft_type": "LOHA", "init_weights": false}"#, r#"{"peft_type": "LOKR", "init_weights": false}"#] {
//!     let config: Box<dyn PeftMethod> = serde_json::from_str(json).unwrap();
//!     let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//!     let adapter = config.build(&mut init).unwrap();
//!     adapter.merge_into(&mut model).unwrap();
//!     assert!(adapter.merge_into(&mut model).is_err()); // already merged
//!     adapter.unmerge_from(&mut model).unwrap();
//! }
//! ```

mod loha;
mod lokr;
mod shared;

pub use loha::{HadaFactors, Loha, LohaConfig};
pub use lokr::{factorization, kron, KronFactor, KronFactors, Lokr, LokrConfig, LokrInitWeights};
pub use peft_core::tuner::list_entry_matches;
pub use shared::adapter::{factor_key, Factors, LycorisAdapter, LycorisLayer};
pub use shared::build::{prepare, Prepared};
pub use shared::dropout::LycorisDropout;
pub use shared::fields::{LayerSelection, LayersPattern, LycorisFields, TargetModules, ALL_LINEAR};
pub use shared::init::kaiming_uniform;
pub use shared::targets::{resolve_targets, Target, DEFAULT_ROLES};

/// Makes sure this crate's methods are linked (and so registered with typetag) into a binary that names no
/// other item of it.
pub fn register() {}
