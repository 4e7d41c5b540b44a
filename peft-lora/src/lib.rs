//! LoRA (with merge and unmerge) for the peft workspace.
//!
//! Not implemented yet: this crate is reserved so that the workspace layout is final, and holds no method
//! until the methods issue lands. It registers nothing, so an experiment naming this method fails with the
//! list of methods that exist.

/// Makes sure this crate's methods are linked (and so registered with typetag) into a binary that names no
/// other item of it.
pub fn register() {}
