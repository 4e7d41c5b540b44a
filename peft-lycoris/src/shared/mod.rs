//! What LoHa and LoKr share: HF PEFT's `LycorisConfig` fields ([`fields`]), target resolution ([`targets`]),
//! the adapter with its hooks, saving and merging ([`adapter`]), the two dropouts ([`dropout`]), starting
//! values ([`init`]) and the steps of `build` both methods take ([`build`]).

pub mod adapter;
pub mod build;
pub mod dropout;
pub mod fields;
pub mod init;
pub mod targets;
