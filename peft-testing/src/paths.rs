//! Where the repository and its fixtures are.

use std::path::{Path, PathBuf};

/// The repository root (the folder holding this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("peft-testing sits in the repository root")
        .to_path_buf()
}

/// A path under the repository's `fixtures/` (`fixture("adapters/hf-tiny-gpt2-lora")`).
pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}
