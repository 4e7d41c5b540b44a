//! LayerNorm tuning (Zhao et al., 2023, "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM
//! Finetuning"), with HF PEFT's `LNTuningConfig` (`peft_type = "LN_TUNING"`) and file format: the selected
//! norms get trainable copies of their weights, and of their biases where they have them, which replace the
//! frozen ones at every forward pass (through [`Hooks::norm_weight`](peft_core::hooks::Hooks::norm_weight)
//! and [`Hooks::bias`](peft_core::hooks::Hooks::bias)); each copy starts at the frozen value, so a fresh adapter
//! is a no-op. Saved as HF PEFT saves it, `base_model.model.<norm>.ln_tuning_layers.weight` / `.bias`.
//!
//! What trains: GPT-2, OPT and BERT's LayerNorms train weight and bias (`2 * hidden` per norm); LLaMA's and
//! T5's RMS norms have no bias, so only their weight trains (`hidden` per norm; the adapter's notes say so).
//! Defaults follow HF PEFT's table (GPT-2 `ln_1`, `ln_2`, `ln_f`; LLaMA `input_layernorm`,
//! `post_attention_layernorm`, `norm`; T5 `layer_norm`, `final_layer_norm`); BERT and OPT have no entry there
//! (HF PEFT raises), so here every norm site the model declares by role trains (BERT `embeddings.LayerNorm`,
//! `attention.output.LayerNorm`, `output.LayerNorm`; OPT `self_attn_layer_norm`, `final_layer_norm`). Only norms
//! are tuned: a `target_modules` that matches a linear module is refused (HF PEFT would train a copy of it).
//! `modules_to_save` takes a classification head only. Merging is refused (the models expose no way to
//! rewrite a norm; HF PEFT's merge swaps the tuned module in, which is what the hooks already do).
//!
//! Layout: `config.rs` (HF PEFT's `LNTuningConfig`, `build`, the size knob), `targets.rs` (which norms),
//! `adapter.rs` (the built adapter: hooks, saving, loading).
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx, PeftMethod};
//! use rand::SeedableRng;
//!
//! peft_ln_tuning::register(); // links the LN_TUNING tag into this binary
//! // The JSON HF PEFT writes to adapter_config.json; unset target_modules takes HF PEFT's default.
//! let config: Box<dyn PeftMethod> = serde_json::from_str(r#"{"peft_type": "LN_TUNING"}"#).unwrap();
//! let mut model = peft_models::tiny::llama(0); // hidden 32, two layers
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = config.build(&mut init).unwrap();
//! // input_layernorm and post_attention_layernorm of each layer, and model.norm: RMS norms, weights only.
//! assert_eq!(adapter.num_trainable(), 5 * 32);
//! assert!(adapter.notes()[0].contains("only their weight trains"));
//! assert!(adapter.merge_into(&mut model).is_err());
//! ```

mod adapter;
mod config;
mod targets;

pub use adapter::{ln_tuning_key, LnTuning, TunedNorm};
pub use config::{LnTuningConfig, TargetModules};
pub use targets::{hf_default_targets, norm_module_names, select_norms, HF_DEFAULT_TARGETS};

/// Makes sure this crate's method is linked (and so registered with typetag) into a binary that names no
/// other item of it.
pub fn register() {}
