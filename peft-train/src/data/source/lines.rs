//! The `label text` line reader of the sentence sets (SST, TREC, MR): one example per non-blank line, column 0
//! the first whitespace-separated word, column 1 the rest of the line, and the field `line` the whole line.
//!
//! ```
//! use peft_train::data::{DataSource, Format};
//! let source = DataSource::new("stsa.binary.dev", 1).with_label(0).with_format(Format::Lines);
//! let rows = source.parse_str("1 a gem of a film\n").unwrap();
//! assert_eq!(rows[0].text, "a gem of a film");
//! assert_eq!(rows[0].label.as_deref(), Some("1"));
//! ```

use peft_core::error::{PeftError, Result};

use super::{DataSource, Field};
use crate::data::RawExample;

/// Appends the examples of `label text` `content` to `out` (up to the source's `limit`, after its `skip`).
pub(super) fn parse(source: &DataSource, content: &str, out: &mut Vec<RawExample>) -> Result<()> {
    let columns = source.columns();
    for field in columns.iter().copied().flatten() {
        let ok = matches!(field, Field::Index(0 | 1)) || *field == Field::Name("line".into());
        if !ok {
            return Err(PeftError::Data(format!(
                "{}: a `lines` file has column 0 (first word), column 1 (rest of the line) and the field \
                 `line` (whole line); {field} does not exist",
                source.name()
            )));
        }
    }
    let mut seen = 0;
    for (n, line) in content.lines().enumerate() {
        if source.full(out) {
            break;
        }
        if line.trim().is_empty() || source.skipped(&mut seen) {
            continue;
        }
        let trimmed = line.trim_start();
        let (first, rest) = match trimmed.split_once(char::is_whitespace) {
            Some((a, b)) => (a, Some(b)),
            None => (trimmed, None),
        };
        let mut values: Vec<Option<String>> = vec![None; columns.len()];
        for (slot, field) in values.iter_mut().zip(&columns) {
            let Some(field) = field else { continue };
            let value = match field {
                Field::Index(0) => first,
                Field::Index(_) => rest.ok_or_else(|| {
                    PeftError::Data(format!(
                        "{} line {}: no column 1 (text after the first word); the line has one word",
                        source.name(),
                        n + 1
                    ))
                })?,
                Field::Name(_) => line,
            };
            *slot = Some(source.clean(value));
        }
        out.push(source.example(values, n + 1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::data::testing::labels;
    use crate::data::{DataSource, Format};

    #[test]
    fn lines_split_label_from_text() {
        let src = DataSource::new("stsa.binary.dev", 1)
            .with_label(0)
            .with_format(Format::Lines);
        let rows = src
            .parse_str("0 one long string of cliches .\r\n\n1 a gem\n")
            .unwrap();
        assert_eq!(rows[0].text, "one long string of cliches .");
        assert_eq!(labels(&rows), ["0", "1"]);
        let whole = DataSource::new("corpus.txt", "line")
            .parse_str("first line\nsecond\n")
            .unwrap();
        assert_eq!(whole[0].text, "first line");
        assert_eq!(whole[1].label, None);
    }

    #[test]
    fn fields_address_the_first_word_or_the_rest() {
        let lines = DataSource::new("trec.all", 1)
            .with_field("first", 0)
            .with_format(Format::Lines);
        assert_eq!(
            lines.parse_str("5 How far ?\n").unwrap()[0].extra["first"],
            "5"
        );
    }
}
