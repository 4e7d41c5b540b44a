//! The references a PEFT comparison reports beside the methods: full fine-tuning (`peft_type = "FULL"`, every
//! weight of the model trains, the classic baseline of PEFT papers) and a linear probe
//! (`peft_type = "LINEAR_PROBE"`, nothing of the model trains; with a classification head task only the head
//! does). Both are [`PeftMethod`](peft_core::method::PeftMethod)s, so they run through the one shared trainer
//! with the same data order and evaluation as every method.
//!
//! ```
//! use peft_baselines::FullFineTuningConfig;
//! use peft_core::method::{InitCtx, PeftMethod};
//! use peft_core::model::BaseModel;
//! use rand::SeedableRng;
//! // Full fine-tuning needs a model built from trainable weights ...
//! let mut weights = peft_models::tiny::gpt2_weights(0);
//! weights.make_trainable().unwrap();
//! let model = peft_models::Gpt2::from_weights(&peft_models::tiny::gpt2_config(), &weights, "tiny").unwrap();
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let full = FullFineTuningConfig::default().build(&mut init).unwrap();
//! assert_eq!(full.num_trainable(), model.spec().num_parameters);
//! // ... and says so on a frozen one.
//! let frozen = peft_models::tiny::gpt2(0);
//! let mut init = InitCtx { model: &frozen, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! assert!(FullFineTuningConfig::default().build(&mut init).err().unwrap().to_string().contains("trainable weights"));
//! ```

mod full;
mod linear_probe;

pub use full::{FullFineTuning, FullFineTuningConfig};
pub use linear_probe::{LinearProbe, LinearProbeConfig};

/// Links this crate into a binary, so that its typetag registrations (`FULL`, `LINEAR_PROBE`) are present.
pub fn register() {}
