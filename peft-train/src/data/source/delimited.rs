//! The CSV / TSV reader: columns named by a header cell or addressed by 0-based index; CSV with standard
//! double-quote quoting (a field may span lines), TSV with quoting off (a `"` is an ordinary character, as in
//! the GLUE files).
//!
//! ```
//! use peft_train::data::DataSource;
//! let source = DataSource::new("ag.csv", "Title").with_label("Class Index");
//! let rows = source.parse_str("Class Index,Title\n3,\"Fears, for \"\"T N\"\"\"\n").unwrap();
//! assert_eq!(rows[0].text, "Fears, for \"T N\"");
//! assert_eq!(rows[0].label.as_deref(), Some("3"));
//! ```

use peft_core::error::{PeftError, Result};

use super::{DataSource, Field};
use crate::data::RawExample;

/// Appends the examples of delimited `content` to `out` (up to the source's `limit`, after its `skip`):
/// cells split at `delimiter`, with double-quote quoting where `quoting`.
pub(super) fn parse(
    source: &DataSource,
    content: &str,
    delimiter: u8,
    quoting: bool,
    out: &mut Vec<RawExample>,
) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .double_quote(quoting)
        .has_headers(false)
        // Short rows get our own error, which names the missing column.
        .flexible(true)
        .from_reader(content.as_bytes());
    let mut records = reader.records();
    let csv_err = |e: csv::Error| PeftError::Data(format!("{}: {e}", source.name()));

    let header: Option<Vec<String>> = if source.has_header {
        match records.next() {
            Some(r) => Some(
                r.map_err(csv_err)?
                    .iter()
                    .map(|c| c.trim().to_string())
                    .collect(),
            ),
            None => return Ok(()),
        }
    } else {
        None
    };
    // Resolve every field to a column index once, against the header.
    let fields = source.columns();
    let mut columns: Vec<Option<usize>> = vec![None; fields.len()];
    for (slot, field) in columns.iter_mut().zip(fields) {
        let Some(field) = field else { continue };
        *slot = Some(match (field, &header) {
            (Field::Index(i), _) => *i,
            (Field::Name(name), Some(h)) => h.iter().position(|c| c == name).ok_or_else(|| {
                PeftError::Data(format!(
                    "{} line 1 (header): no column `{name}`; available: {}",
                    source.name(),
                    h.join(", ")
                ))
            })?,
            (Field::Name(name), None) => {
                return Err(PeftError::Data(format!(
                    "{}: field `{name}` is a name but the file has no header (has_header = false); \
                     give fields as 0-based column indices",
                    source.name()
                )))
            }
        });
    }
    let mut seen = 0;
    let mut lines = LineCounter::new(content);
    for record in records {
        if source.full(out) {
            break;
        }
        let record = record.map_err(csv_err)?;
        // csv's own line count leaves out blank lines, and its position is where it started reading
        // (before any blank lines): count newlines up to the record's first character instead.
        let line = record
            .position()
            .map_or(0, |p| lines.line_at(p.byte() as usize));
        if record.iter().all(|c| c.trim().is_empty()) || source.skipped(&mut seen) {
            continue;
        }
        let mut values: Vec<Option<String>> = vec![None; columns.len()];
        for (slot, &column) in values.iter_mut().zip(&columns) {
            let Some(column) = column else { continue };
            let cell = record.get(column).ok_or_else(|| {
                let name = header
                    .as_ref()
                    .and_then(|h| h.get(column))
                    .map_or(String::new(), |n| format!(" (`{n}`)"));
                PeftError::Data(format!(
                    "{} line {line}: no column {column}{name}; the row has {} columns",
                    source.name(),
                    record.len()
                ))
            })?;
            *slot = Some(source.clean(cell));
        }
        out.push(source.example(values, line));
    }
    Ok(())
}

/// The 1-based line of byte offsets in a text, for offsets asked in increasing order (one pass in all).
struct LineCounter<'a> {
    bytes: &'a [u8],
    offset: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> Self {
        LineCounter {
            bytes: text.as_bytes(),
            offset: 0,
            line: 1,
        }
    }

    /// The line of the first byte at or after `offset` that is not a line break.
    fn line_at(&mut self, offset: usize) -> usize {
        let mut end = offset.min(self.bytes.len());
        while end < self.bytes.len() && matches!(self.bytes[end], b'\n' | b'\r') {
            end += 1;
        }
        if end > self.offset {
            self.line += self.bytes[self.offset..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            self.offset = end;
        }
        self.line
    }
}

#[cfg(test)]
mod tests {
    use crate::data::testing::labels;
    use crate::data::DataSource;

    #[test]
    fn tsv_with_header_and_unquoted_quotes() {
        let src = DataSource::new("rte.tsv", "sentence1")
            .with_text_pair("sentence2")
            .with_label("label");
        let content = "index\tsentence1\tsentence2\tlabel\n0\tHe said \"no.\tA \"quote\ttrue\n1\tB\tC\tfalse\n";
        let rows = src.parse_str(content).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].text, "He said \"no.");
        assert_eq!(rows[0].text_pair.as_deref(), Some("A \"quote"));
        assert_eq!(labels(&rows), ["true", "false"]);
    }

    #[test]
    fn csv_with_quoted_fields_and_a_header() {
        let src = DataSource::new("ag.csv", "Title")
            .with_text_pair(2)
            .with_label("Class Index");
        let content = "Class Index,Title,Description\n3,\"Fears, for \"\"T N\"\"\",\"two\nlines\"\n4,Race,On\n";
        let rows = src.parse_str(content).unwrap();
        assert_eq!(rows[0].text, "Fears, for \"T N\"");
        assert_eq!(rows[0].text_pair.as_deref(), Some("two\nlines"));
        assert_eq!(labels(&rows), ["3", "4"]);
    }

    #[test]
    fn headerless_files_use_column_indices() {
        let src = DataSource::new("cola.tsv", 3)
            .with_label(1)
            .without_header();
        let rows = src
            .parse_str("gj04\t1\t\tThe sailors rode.\ngj04\t0\t*\tThe rope stretch.\n")
            .unwrap();
        assert_eq!(rows[1].text, "The rope stretch.");
        assert_eq!(labels(&rows), ["1", "0"]);

        let named = DataSource::new("cola.tsv", "sentence").without_header();
        let err = named.parse_str("a\tb\n").unwrap_err().to_string();
        assert!(
            err.contains("no header") && err.contains("indices"),
            "{err}"
        );
    }

    #[test]
    fn missing_columns_are_named_with_what_is_available() {
        let src = DataSource::new("sst.tsv", "sentence").with_label("gold");
        let err = src
            .parse_str("sentence\tlabel\na\t1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sst.tsv") && err.contains("`gold`") && err.contains("sentence, label"),
            "{err}"
        );

        let src = DataSource::new("sst.tsv", "sentence").with_label("label");
        let err = src
            .parse_str("sentence\tlabel\na\t1\nb\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("column 1 (`label`)"),
            "{err}"
        );
    }

    #[test]
    fn fields_are_read_with_their_lines() {
        let csv = DataSource::new("ag.csv", "Title")
            .with_field("description", 2)
            .with_label(0);
        let rows = csv
            .parse_str("Class Index,Title,Description\n3,\"A, b\",\"two\nlines\"\n4,T,D\n")
            .unwrap();
        assert_eq!(rows[0].extra["description"], "two\nlines");
        assert_eq!((rows[0].line, rows[1].line), (2, 4));

        let tsv = DataSource::new("wic.tsv", "s1").with_field("word", "w");
        let err = tsv.parse_str("s1\tx\na\tb\n").unwrap_err().to_string();
        assert!(
            err.contains("no column `w`") && err.contains("s1, x"),
            "{err}"
        );
    }
}
