//! Contracts and shared machinery of the peft workspace.
//!
//! A frozen [`model::BaseModel`] calls [`hooks::Hooks`] at its injection sites; a [`method::PeftMethod`]
//! configuration builds an [`method::Adapter`] (trainable state + hooks); the one shared [`train::Trainer`]
//! trains every method on a [`task::Task`], so that comparisons between methods are fair.
//!
//! ```
//! use peft_core::spec::ModelSpec;
//! let spec = ModelSpec::new("gpt2", 2, 32, 4, 4, 100, 64);
//! assert_eq!(spec.head_dim, 8);
//! ```

pub mod adapter_io;
pub mod atomic;
pub mod compare;
pub mod conformance;
pub mod data;
pub mod dist;
pub mod error;
pub mod frozen;
pub mod generate;
pub mod grad;
pub mod head;
pub mod hooks;
pub mod method;
pub mod model;
pub mod nn;
pub mod prompt_learning;
pub mod spec;
pub mod stack;
pub mod task;
pub mod train;

pub use error::{PeftError, Result};
