//! The Parquet reader: the files of a hub dataset's split (or one local `.parquet` file), row by row through
//! the `parquet` crate; fields are named by column or addressed by 0-based column index, and strings,
//! integers, floats and booleans become strings as in JSONL (`1` -> `"1"`, `true` -> `"true"`).
//!
//! ```
//! use peft_train::data::testing::{write_parquet, Column};
//! use peft_train::data::DataSource;
//! let dir = tempfile::tempdir().unwrap();
//! let file = dir.path().join("train.parquet");
//! write_parquet(&file, &[
//!     ("sentence", Column::Text(vec!["a charming journey".into()])),
//!     ("label", Column::Int(vec![1])),
//! ]);
//! let rows = DataSource::new(&file, "sentence").with_label("label").read().unwrap();
//! assert_eq!(rows[0].text, "a charming journey");
//! assert_eq!(rows[0].label.as_deref(), Some("1"));
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field as Value;

use peft_core::error::{PeftError, Result};

use super::{DataSource, Field};
use crate::data::RawExample;

/// Appends the examples of Parquet `files`, read in order as one table, to `out` (up to the source's `limit`,
/// after its `skip`). Rows are numbered from 1 across the files.
pub(super) fn read(
    source: &DataSource,
    files: &[PathBuf],
    out: &mut Vec<RawExample>,
) -> Result<()> {
    let columns = source.columns();
    let mut seen = 0;
    let mut row_number = 0;
    for file in files {
        let bad = |what: String| PeftError::BadFile {
            path: file.clone(),
            message: what,
        };
        let handle = File::open(file).map_err(|e| PeftError::io("opening", file, e))?;
        let reader = SerializedFileReader::new(handle)
            .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
        let names: Vec<String> = reader
            .metadata()
            .file_metadata()
            .schema_descr()
            .root_schema()
            .get_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let positions = columns
            .iter()
            .map(|field| field.map(|f| position(f, &names, file)).transpose())
            .collect::<Result<Vec<Option<usize>>>>()?;
        let rows = reader
            .get_row_iter(None)
            .map_err(|e| bad(format!("reading rows: {e}")))?;
        for row in rows {
            if source.full(out) {
                return Ok(());
            }
            row_number += 1;
            let row = row.map_err(|e| bad(format!("row {row_number}: {e}")))?;
            if source.skipped(&mut seen) {
                continue;
            }
            let cells: Vec<&Value> = row.get_column_iter().map(|(_, v)| v).collect();
            let mut values = Vec::with_capacity(columns.len());
            for (position, field) in positions.iter().zip(&columns) {
                let value = match (position, field) {
                    (Some(p), Some(f)) => {
                        Some(source.clean(&text_of(cells[*p], f, row_number, file)?))
                    }
                    _ => None,
                };
                values.push(value);
            }
            out.push(source.example(values, row_number));
        }
    }
    Ok(())
}

/// The index of `field` among the file's top-level columns `names`.
fn position(field: &Field, names: &[String], file: &Path) -> Result<usize> {
    let found = match field {
        Field::Name(name) => names.iter().position(|n| n == name),
        Field::Index(i) => (*i < names.len()).then_some(*i),
    };
    found.ok_or_else(|| PeftError::BadFile {
        path: file.to_path_buf(),
        message: format!("no {field}; its columns: {}", names.join(", ")),
    })
}

/// A cell as text: strings as they are, numbers and booleans written out; anything else is refused.
fn text_of(value: &Value, field: &Field, row: usize, file: &Path) -> Result<String> {
    Ok(match value {
        Value::Str(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Byte(x) => x.to_string(),
        Value::Short(x) => x.to_string(),
        Value::Int(x) => x.to_string(),
        Value::Long(x) => x.to_string(),
        Value::UByte(x) => x.to_string(),
        Value::UShort(x) => x.to_string(),
        Value::UInt(x) => x.to_string(),
        Value::ULong(x) => x.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Double(x) => x.to_string(),
        other => {
            let what = match other {
                Value::Null => "empty (null)".to_string(),
                other => format!("{other}, not a string, number or boolean"),
            };
            return Err(PeftError::BadFile {
                path: file.to_path_buf(),
                message: format!("row {row}: {field} is {what}"),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::data::testing::{labels, write_parquet, Column};
    use crate::data::DataSource;

    #[test]
    fn rows_span_files_and_skip_limit_and_indices_apply() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("train-00000-of-00002.parquet");
        let second = dir.path().join("train-00001-of-00002.parquet");
        write_parquet(
            &first,
            &[
                ("premise", Column::Text(vec!["a ".into(), "b".into()])),
                ("label", Column::Int(vec![0, 1])),
            ],
        );
        write_parquet(
            &second,
            &[
                ("premise", Column::Text(vec!["c".into(), "d".into()])),
                ("label", Column::Int(vec![2, 1])),
            ],
        );
        let files = [first.clone(), second];
        let read = |source: DataSource| {
            let mut out = Vec::new();
            super::read(&source, &files, &mut out).map(|()| out)
        };
        let rows = read(DataSource::new("x", "premise").with_label("label")).unwrap();
        assert_eq!(labels(&rows), ["0", "1", "2", "1"]);
        assert_eq!(rows[0].text, "a");
        let rows = read(
            DataSource::new("x", 0)
                .with_label(1)
                .with_skip(1)
                .with_limit(2),
        )
        .unwrap();
        assert_eq!(
            rows.iter()
                .map(|r| (r.text.as_str(), r.line))
                .collect::<Vec<_>>(),
            [("b", 2), ("c", 3)]
        );
        let err = read(DataSource::new("x", "hypothesis"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no field `hypothesis`") && err.contains("premise, label"),
            "{err}"
        );
        let err = read(DataSource::new("x", 5)).unwrap_err().to_string();
        assert!(err.contains("no column 5"), "{err}");
    }

    #[test]
    fn nulls_and_garbage_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.parquet");
        write_parquet(
            &file,
            &[("text", Column::OptionalText(vec![Some("x".into()), None]))],
        );
        let err = DataSource::new(&file, "text")
            .read()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.parquet") && err.contains("row 2: field `text` is empty (null)"),
            "{err}"
        );
        let garbage = dir.path().join("g.parquet");
        std::fs::write(&garbage, b"not parquet at all").unwrap();
        let err = DataSource::new(&garbage, "text")
            .read()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("g.parquet") && err.contains("not a readable Parquet file"),
            "{err}"
        );
    }
}
