//! The catalogue of bad inputs: one case per way a run could end wrong while looking right (a NaN adapter
//! saved, memory asked for before a size is checked, a model loaded with parts ignored, two runs in one
//! folder, stale state reused, a setting refused only after minutes of work). Each case asserts the exit code
//! of a clean refusal, the key words of its message and that nothing was written.
//!
//! The cases are grouped by what they feed the `peft` binary: `models` (config.json, safetensors, GGUF),
//! `adapters` (adapter folders), `training` (runs, checkpoints, output folders) and `settings` (experiment,
//! grid and command-line values).

#[path = "../common/mod.rs"]
mod common;

mod adapters;
mod models;
mod settings;
mod training;

use std::path::Path;
use std::process::Output;

/// Asserts a clean refusal: exit code 1 (an error, not a panic's 101 or a signal), nothing on stdout, every
/// needle in stderr, and none of the `absent` paths written.
pub fn refused(out: &Output, needles: &[&str], absent: &[&Path]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean refusal (exit code 1); stderr: {err}"
    );
    assert!(
        !err.contains("panicked"),
        "a panic instead of an error: {err}"
    );
    assert!(
        out.stdout.is_empty(),
        "output on stdout from a refused command: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "the message does not say {needle:?}: {err}"
        );
    }
    for path in absent {
        assert!(
            !path.exists(),
            "a refused command wrote {}; stderr: {err}",
            path.display()
        );
    }
}
