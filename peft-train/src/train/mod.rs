//! The shared trainer: every method is trained by exactly this code, which is what makes a comparison
//! between methods fair (same data order, same optimiser, same evaluation).
//!
//! ```
//! use peft_train::train::TrainConfig;
//! let cfg: TrainConfig = toml::from_str("max_steps = 10\nlearning_rate = 0.03").unwrap();
//! assert_eq!(cfg.batch_size, 8);
//! assert!(toml::from_str::<TrainConfig>("lerning_rate = 0.1").unwrap_err().to_string().contains("lerning_rate"));
//! ```

pub mod checkpoint;
mod config;
pub mod divergence;
mod evaluate;
mod finite;
pub mod metrics_log;
pub mod optim;
pub mod order;
pub mod output_dir;
mod progress;
mod resume;
mod run;
pub mod schedule;
mod step;
mod trainer;

pub use config::{Precision, TrainConfig};
pub use trainer::{TrainReport, Trainer};
