//! The JSONL metrics log: one JSON object per line, each written with a single `write` so that a crash
//! leaves whole lines only.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("metrics.jsonl");
//! let mut log = peft_core::train::metrics_log::MetricsLog::create(&path, false).unwrap();
//! log.write(&serde_json::json!({"step": 1, "loss": 0.5})).unwrap();
//! assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"loss\":0.5,\"step\":1}\n");
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{PeftError, Result};

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

    /// Appends one record.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| PeftError::io("writing", &self.path, e))
    }
}
