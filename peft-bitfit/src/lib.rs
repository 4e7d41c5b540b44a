//! BitFit (bias-only training) for the peft workspace.
//!
//! Not implemented yet: this crate is reserved so that the workspace layout is final, and holds no method
//! until the methods issue lands. It registers nothing, so an experiment naming this method fails with the
//! list of methods that exist.
