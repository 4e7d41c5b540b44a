//! One file per `peft` subcommand.

pub mod bench;
pub mod convert;
pub mod embed;
pub mod eval;
pub mod fetch;
pub mod generate;
pub mod inspect;
pub mod logits;
pub mod merge;
pub mod serve;
pub mod train;
