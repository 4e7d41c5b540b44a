//! OFT, orthogonal fine-tuning (Qiu et al., 2023; Liu et al., 2024: BOFT's paper, whose Cayley-Neumann form
//! HF PEFT took over), with HF PEFT's `OFTConfig` and file format: the input of every adapted linear module is
//! rotated by a trained block-diagonal orthogonal matrix before the frozen weight sees it, `y = W (R x) + b`, so
//! the angles between the weight's rows are kept. Each block is the Cayley transform of a skew-symmetric matrix
//! saved as its upper triangle (`oft_R.weight` `[r, b (b - 1) / 2]`); exact (`use_cayley_neumann = false`) or a
//! Neumann series (HF's default), constrained (`coft`, radius `eps`), shared by a module's blocks
//! (`block_share`), with `r` or `oft_block_size` setting the blocks (the other follows each module's width).
//! Merging (`W <- W R^T`) and unmerging, trainable biases, `module_dropout`, `layers_to_transform` and
//! `"all-linear"` are supported.
//!
//! Adapters are saved as HF PEFT saves them and load in HF PEFT with the same logits; HF PEFT's load here. HF
//! PEFT's OFT adapts `nn.Linear` only and refuses GPT-2's Conv1D, which this crate adapts (the rotation acts on
//! the input, whatever the weight's storage): such an adapter loads in HF PEFT on the model with its Conv1D
//! layers made `nn.Linear`. Where HF PEFT differs otherwise (it never applies `module_dropout`), the adapter's
//! notes say so.
//!
//! Layout: `config.rs` (HF PEFT's `OFTConfig`, its checks and `build`), `adapter.rs` (the built adapter: hooks,
//! saving, merging), `cayley.rs` (skew-symmetric blocks, the exact and series Cayley transforms, COFT's
//! projection, the inverse for unmerging), `dropout.rs` (the block dropout) and `targets.rs` (which modules, cut
//! into which blocks); target selection and trainable biases are `peft_core::tuner`'s.
//!
//! ```
//! use peft_core::method::{Adapter, InitCtx, PeftMethod};
//! use rand::SeedableRng;
//!
//! peft_oft::register(); // links the OFT tag into this binary
//! // The same JSON HF PEFT writes to adapter_config.json; unset fields take HF PEFT's defaults.
//! let config: Box<dyn PeftMethod> = serde_json::from_str(
//!     r#"{"peft_type": "OFT", "oft_block_size": 8, "target_modules": ["q_proj", "v_proj"]}"#,
//! ).unwrap();
//! let mut model = peft_models::tiny::llama(0); // hidden 32: 4 blocks of 8 per module
//! let mut init = InitCtx { model: &model, tokenizer: None, rng: rand::rngs::StdRng::seed_from_u64(0) };
//! let adapter = config.build(&mut init).unwrap();
//! // Two layers, two modules each, one oft_R [4, 28] for each.
//! assert_eq!(adapter.trainable().len(), 4);
//! assert_eq!(adapter.num_trainable(), 4 * 4 * 28);
//! adapter.merge_into(&mut model).unwrap();
//! assert!(adapter.merge_into(&mut model).is_err()); // already merged
//! adapter.unmerge_from(&mut model).unwrap();
//! ```

mod adapter;
mod cayley;
mod config;
mod dropout;
mod targets;

pub use adapter::{rotation_key, Oft, OftLayer};
pub use cayley::{cayley_exact, cayley_neumann, invert_blocks, project_coft, skew_len, Skew};
pub use config::{
    BiasMode, LayerSelection, LayersPattern, OftConfig, TargetModules, ALL_LINEAR, HF_PEFT_FORMAT,
};
pub use dropout::BlockDropout;
pub use targets::{blocks_for, nearest_divisor, resolve_targets, OftTarget, DEFAULT_ROLES};

/// Makes sure this crate's method is linked (and so registered with typetag) into a binary that names no
/// other item of it.
pub fn register() {}
