//! Reading a whole plain-text corpus (for causal-LM training), and the strict UTF-8 file read that the data
//! sources share.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("corpus.txt");
//! std::fs::write(&path, "To be, or not to be.\n").unwrap();
//! assert_eq!(peft_train::data::read_text(&path).unwrap(), "To be, or not to be.\n");
//! ```

use std::path::Path;

use peft_core::error::{PeftError, Result};

/// Reads a whole plain-text corpus (for causal-LM training). An empty or whitespace-only file is an error.
pub fn read_text(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let text = read_utf8(path)?;
    if text.trim().is_empty() {
        return Err(PeftError::Data(format!("no text in {}", path.display())));
    }
    Ok(text)
}

/// The file at `path` as text; bytes that are not UTF-8 are an error that points at `lossy_utf8`.
pub(crate) fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| PeftError::io("reading", path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        PeftError::Data(format!(
            "{}: not UTF-8 (first bad byte at offset {}); a data source with lossy_utf8 = true replaces such bytes",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corpus_is_read_whole_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus.txt");
        std::fs::write(&corpus, "To be, or not to be.\n").unwrap();
        assert_eq!(read_text(&corpus).unwrap(), "To be, or not to be.\n");
        std::fs::write(&corpus, "\n").unwrap();
        assert!(read_text(&corpus)
            .unwrap_err()
            .to_string()
            .contains("no text in"));
    }
}
