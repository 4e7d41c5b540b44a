//! Content digests of a run's inputs: what a resumed run and a reused `peft compare` cell must have in common
//! with the run that wrote their state. A data file edited in place keeps its path, so its bytes are what is
//! digested, not its name.
//!
//! ```
//! use peft_train::data::digest::Digest;
//! let mut a = Digest::new();
//! a.update(b"sentence\tlabel\n");
//! let mut b = Digest::new();
//! b.update(b"sentence\tlabel\r\n");
//! assert_ne!(a.hex(), b.hex());
//! assert_eq!(a.hex().len(), 16);
//! ```

use std::io::Read;
use std::path::Path;

use super::source::{DataSource, Located};
use peft_core::error::{PeftError, Result};

/// A streaming 64-bit FNV-1a digest: enough to notice an edited input (it guards against accidents, not
/// against an adversary).
#[derive(Debug, Clone, Copy)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest::new()
    }
}

impl Digest {
    /// An empty digest.
    pub fn new() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Adds a length-prefixed field, so that `("ab", "c")` and `("a", "bc")` differ.
    pub fn field(&mut self, bytes: &[u8]) {
        self.update(&(bytes.len() as u64).to_le_bytes());
        self.update(bytes);
    }

    /// Adds the content of the file at `path`, read in blocks.
    pub fn file(&mut self, path: &Path) -> Result<()> {
        let mut file = std::fs::File::open(path).map_err(|e| PeftError::io("reading", path, e))?;
        let mut block = vec![0u8; 1 << 16];
        let mut len = 0u64;
        loop {
            let n = file
                .read(&mut block)
                .map_err(|e| PeftError::io("reading", path, e))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            self.update(&block[..n]);
        }
        self.update(&len.to_le_bytes());
        Ok(())
    }

    /// The digest as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

impl DataSource {
    /// A digest of what this source reads: its settings (columns, limits, label map) and the content of the
    /// file(s) [`DataSource::locate`] finds: the local copy's, the file's, or the hub split's Parquet files.
    pub fn content_digest(&self) -> Result<String> {
        let mut digest = Digest::new();
        let settings = serde_json::to_string(self).map_err(|e| PeftError::Config(e.to_string()))?;
        digest.field(settings.as_bytes());
        match self.locate()? {
            Located::Local(local) => digest.field(local.content_digest()?.as_bytes()),
            Located::File(path) => digest.file(path)?,
            Located::Hub(mut files) => {
                files.sort();
                for path in &files {
                    digest.file(path)?;
                }
            }
        }
        Ok(digest.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_digest_follows_its_content_not_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.tsv");
        std::fs::write(&path, "sentence\tlabel\na\t0\n").unwrap();
        let source = DataSource::new(path.to_str().unwrap(), "sentence").with_label("label");
        let first = source.content_digest().unwrap();
        assert_eq!(first, source.content_digest().unwrap());
        std::fs::write(&path, "sentence\tlabel\nb\t0\n").unwrap();
        let edited = source.content_digest().unwrap();
        assert_ne!(first, edited);
        // The same bytes read with other settings are another input.
        let limited = source.clone().with_limit_at_most(1);
        assert_ne!(limited.content_digest().unwrap(), edited);
        std::fs::remove_file(&path).unwrap();
        assert!(source.content_digest().is_err());
    }
}
