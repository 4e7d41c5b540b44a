//! The JSONL metrics log: one JSON object per line, each written with a single `write` so that a crash
//! leaves whole lines only.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("metrics.jsonl");
//! let mut log = peft_train::train::metrics_log::MetricsLog::create(&path, false).unwrap();
//! log.write(&serde_json::json!({"step": 1, "loss": 0.5})).unwrap();
//! assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"loss\":0.5,\"step\":1}\n");
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use peft_core::error::{PeftError, Result};

/// An append-only JSONL file.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path`, truncating it unless `append` (a resumed run appends).
    pub fn create(path: &Path, append: bool) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| PeftError::io("creating folder", parent, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(path)
            .map_err(|e| PeftError::io("opening", path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Reopens the log of a run resumed at `step`, dropping the records of later steps first: those steps
    /// ran after the checkpoint (the run died before its next one) and the resumed run logs them again.
    /// A torn last line is dropped too. The trimmed log replaces the old one atomically.
    pub fn resume(path: &Path, step: usize) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let kept: String = text
                    .lines()
                    .filter(|line| {
                        serde_json::from_str::<serde_json::Value>(line)
                            .ok()
                            .and_then(|record| record.get("step")?.as_u64())
                            .is_some_and(|s| s <= step as u64)
                    })
                    .flat_map(|line| [line, "\n"])
                    .collect();
                if kept.len() != text.len() {
                    peft_core::atomic::write_atomic(path, kept.as_bytes())?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PeftError::io("reading", path, e)),
        }
        Self::create(path, true)
    }

    /// Appends one record.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| PeftError::io("writing", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_drops_the_steps_after_the_checkpoint_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            "{\"step\":5,\"loss\":1}\n{\"step\":5,\"eval_accuracy\":0.5}\n{\"step\":10,\"loss\":0.9}\n{\"step\":15,\"loss\":0.8}\n{\"step\":1",
        )
        .unwrap();
        let mut log = MetricsLog::resume(&path, 10).unwrap();
        log.write(&serde_json::json!({"step": 15, "loss": 0.7}))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"step\":5,\"loss\":1}\n{\"step\":5,\"eval_accuracy\":0.5}\n{\"step\":10,\"loss\":0.9}\n{\"loss\":0.7,\"step\":15}\n"
        );
    }

    #[test]
    fn resuming_without_a_log_starts_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        MetricsLog::resume(&path, 3).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
