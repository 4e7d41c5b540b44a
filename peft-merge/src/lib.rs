//! Adapter arithmetic: LoRA adapters trained on one base model combined into one, as HF PEFT's
//! `LoraModel.add_weighted_adapter` combines them, working on adapter folders in HF's format alone (no base
//! model is loaded). Combinations, by HF's names: `linear`, `cat`, `svd`, `ties`, `ties_svd`, `dare_linear`,
//! `dare_ties`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune`, `magnitude_prune_svd`, with `weights`,
//! `density`, `majority_sign_method`, `svd_rank` and `svd_clamp`.
//!
//! Where this differs from HF PEFT 0.21, on purpose: DARE's random masks come from a seeded generator of our
//! own (HF uses torch's global one, whose bits cannot be reproduced), the merged config always reloads as
//! merged (a `rank_pattern` / `alpha_pattern` where HF drops them, HF issue 3737; `use_rslora` off), the SVD
//! combinations pad their factors with zeros where the new rank exceeds a module's size (HF fails there), and
//! merges HF would make wrongly or fail on deep inside torch are refused up front with what to do (adapters of
//! different base models, layer selections or module shapes, DoRA, trained biases and heads).
//!
//! Layout: `combination.rs` (the combinations and what each does), `task_tensors.rs` (pruning, sign election,
//! disjoint mean: HF's `merge_utils`), `svd.rs` (factoring a combined update to the new rank),
//! `source.rs` (reading an adapter folder: factors by module, each module's scaling), `compatibility.rs`
//! (what the adapters must share; the new rank and targets), `merge.rs` (the merge, module by module),
//! `output.rs` (the merged adapter, its config and folder), `matrix.rs` (the dense f64 matrices of all this).
//!
//! ```
//! use peft_lora::LoraConfig;
//! use peft_merge::{merge_folders, Combination, Matrix, MergeOptions, ModuleFactors, SourceAdapter};
//! let dir = tempfile::tempdir().unwrap();
//! // Two adapters of rank 1 on one module (written here in memory; usually folders HF PEFT or `peft train` saved).
//! let module = "transformer.h.0.attn.c_attn";
//! let mut folders = Vec::new();
//! for (i, alpha) in [(0, 2.0), (1, 4.0)] {
//!     let config = LoraConfig { lora_alpha: alpha, ..LoraConfig::new(1, ["c_attn"]) };
//!     let a = Matrix::new(1, 2, vec![1.0, -1.0]);
//!     let b = Matrix::new(3, 1, vec![0.5, 0.0, 1.0]);
//!     let folder = dir.path().join(format!("adapter-{i}"));
//!     let modules = [(module.to_string(), ModuleFactors::linear(a, b))].into();
//!     let adapter = SourceAdapter::new(folder.display().to_string(), config, modules).unwrap();
//!     // Saved as a merge of itself at weight 1: the same update, in HF's format.
//!     let itself = MergeOptions::new(Combination::Linear, vec![1.0]);
//!     peft_merge::merge(&[adapter], &itself).unwrap().save(&folder).unwrap();
//!     folders.push(folder);
//! }
//! let options = MergeOptions::new(Combination::Svd, vec![0.5, 0.5]);
//! let merged = merge_folders(&folders, &options, &dir.path().join("merged")).unwrap();
//! // svd is exact up to the new rank: 0.5 * 2 * B A + 0.5 * 4 * B A = 3 B A (to f32 precision: the folders
//! // hold f32).
//! let expected = [1.5, -1.5, 0.0, 0.0, 3.0, -3.0];
//! let delta = merged.delta(module).unwrap();
//! assert!(delta.data.iter().zip(expected).all(|(x, y)| (x - y).abs() < 1e-5));
//! assert!(dir.path().join("merged/adapter_model.safetensors").is_file());
//! ```

pub mod combination;
pub mod compatibility;
mod error;
pub mod matrix;
mod merge;
pub mod output;
pub mod source;
pub mod svd;
pub mod task_tensors;

pub use combination::{Combination, Layout, MajoritySignMethod, Prune};
pub use error::{MergeError, Result};
pub use matrix::Matrix;
pub use merge::{merge, merge_folders, MergeOptions};
pub use output::MergedAdapter;
pub use source::{FactorKeys, ModuleFactors, SourceAdapter};
