//! Training and what it runs on: the data readers ([`data`]), the tasks that turn examples into losses and
//! metrics ([`task`]), the one trainer every method goes through ([`train`]), data parallelism ([`dist`]),
//! generation ([`generate`]) and the contract checks every method crate runs in its tests ([`conformance`]).
//! It knows methods and models only through `peft-core`'s traits, so a comparison between methods is fair:
//! same data order, same optimiser code, same evaluation.
//!
//! ```
//! use peft_train::train::TrainConfig;
//! let config = TrainConfig::default();
//! assert!(config.max_steps > 0 && config.batch_size > 0);
//! ```

pub mod conformance;
pub mod data;
pub mod dist;
pub mod engine;
pub mod generate;
pub mod task;
pub mod train;
