//! The layout of a data file, named in a config or implied by the file's extension.
//!
//! ```
//! use peft_train::data::Format;
//! use std::path::Path;
//! assert_eq!(Format::from_path(Path::new("glue/RTE/dev.tsv")), Some(Format::Tsv));
//! assert_eq!(Format::from_path(Path::new("TREC.test.all")), None);
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The layout of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line; fields are the object's keys. Blank lines are skipped.
    Jsonl,
    /// Comma-separated values with standard double-quote quoting (a field may span lines).
    Csv,
    /// Tab-separated values with quoting disabled: a `"` is an ordinary character, as in the GLUE files.
    Tsv,
    /// One example per non-blank line in the `label text` layout of the sentence sets: column 0 is the first
    /// whitespace-separated word, column 1 the rest of the line; the field name `line` selects the whole line.
    Lines,
    /// Apache Parquet (the hub's format for datasets): one row per example, fields named by column or
    /// addressed by column index.
    Parquet,
}

impl Format {
    /// The format a file name implies: `.jsonl`, `.csv`, `.tsv`, `.txt` (lines), `.parquet`; `None` for anything else.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            "tsv" => Some(Format::Tsv),
            "txt" => Some(Format::Lines),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_comes_from_the_extension_in_any_case() {
        assert_eq!(
            Format::from_path(Path::new("a/b.JSONL")),
            Some(Format::Jsonl)
        );
    }
}
