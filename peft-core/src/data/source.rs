//! Reading labelled text from JSONL, CSV, TSV and `label text` line files, with the columns that hold the
//! text, the optional second text and the label named by the user; and reading a whole plain-text corpus.
//!
//! ```
//! use peft_core::data::{DataSource, Format};
//! let source = DataSource::new("dev.tsv", "sentence").with_label("label");
//! let rows = source.parse_str("sentence\tlabel\nit 's a charming journey . \t1\n").unwrap();
//! assert_eq!(rows[0].text, "it 's a charming journey .");
//! assert_eq!(rows[0].label.as_deref(), Some("1"));
//!
//! // A headerless file addresses its columns by 0-based index (here GLUE CoLA).
//! let cola = DataSource::new("cola.tsv", 3).with_label(1).without_header();
//! let rows = cola.parse_str("gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n").unwrap();
//! assert_eq!(rows[0].text, "The sailors rode the breeze clear of the rocks.");
//! assert_eq!(cola.format().unwrap(), Format::Tsv);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::template::{check_field_name, Template};
use crate::error::{PeftError, Result};

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
}

impl Format {
    /// The format a file name implies: `.jsonl`, `.csv`, `.tsv`, `.txt` (lines); `None` for anything else.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            "tsv" => Some(Format::Tsv),
            "txt" => Some(Format::Lines),
            _ => None,
        }
    }
}

/// Where a value sits in a row: a column name (a header cell or a JSON key) or a 0-based column index.
///
/// In a config file an integer is an index and a string a name: `text = "sentence"`, `label = 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Field {
    /// 0-based column index (CSV / TSV, with or without a header; `lines`: 0 = label word, 1 = rest).
    Index(usize),
    /// Header cell (CSV / TSV with a header) or JSON key (JSONL); `line` = the whole line in `lines` files.
    Name(String),
}

impl From<&str> for Field {
    fn from(name: &str) -> Self {
        Field::Name(name.to_string())
    }
}

impl From<String> for Field {
    fn from(name: String) -> Self {
        Field::Name(name)
    }
}

impl From<usize> for Field {
    fn from(index: usize) -> Self {
        Field::Index(index)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Index(i) => write!(f, "column {i}"),
            Field::Name(n) => write!(f, "field `{n}`"),
        }
    }
}

/// One example as read from a file, before any template or tokenizer is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawExample {
    /// The main text.
    pub text: String,
    /// The second text of a pair task (RTE's hypothesis, say), when the source names one.
    pub text_pair: Option<String>,
    /// The label as a string (`"1"`, `"entailment"`; JSON `true` becomes `"true"`, `1` becomes `"1"`), when
    /// the source names a label field.
    pub label: Option<String>,
    /// The values of the source's `fields` table, by placeholder name (COPA's `choice1`, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
    /// The 1-based line of the file where the row starts, for messages; 0 when not known.
    #[serde(default)]
    pub line: usize,
}

impl RawExample {
    /// The value of placeholder `name`: `text`, `text_pair` (when present) or a name of `extra`.
    pub fn field(&self, name: &str) -> Option<&str> {
        match name {
            "text" => Some(&self.text),
            "text_pair" => self.text_pair.as_deref(),
            other => self.extra.get(other).map(String::as_str),
        }
    }

    /// The placeholder names this example has values for: `text`, `text_pair` (when present), then `extra`'s.
    pub fn field_names(&self) -> Vec<&str> {
        let mut names = vec!["text"];
        if self.text_pair.is_some() {
            names.push("text_pair");
        }
        names.extend(self.extra.keys().map(String::as_str));
        names
    }

    /// Where the example is, for messages: `example 3 (line 5)` (`row` is its 0-based index).
    pub fn position(&self, row: usize) -> String {
        if self.line > 0 {
            format!("example {row} (line {})", self.line)
        } else {
            format!("example {row}")
        }
    }
}

/// Which file to read and which columns hold what: the `[data]`-style table of an experiment file.
///
/// ```toml
/// path = "../shared/data/glue/RTE/dev.tsv"
/// text = "sentence1"
/// text_pair = "sentence2"
/// label = "label"
/// ```
///
/// More fields, for templates that place more than two texts, go in `fields` (placeholder name -> field):
///
/// ```toml
/// path = "../shared/data/superglue/COPA/val.jsonl"
/// text = "premise"
/// fields = { choice1 = "choice1", choice2 = "choice2", question = "question" }
/// label = "label"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// The file to read. Required; a relative path is taken as given (see [`DataSource::relative_to`]).
    pub path: PathBuf,
    /// Layout of the file. Default: inferred from the extension (`.jsonl`, `.csv`, `.tsv`, `.txt` = lines);
    /// any other extension must set it.
    #[serde(default)]
    pub format: Option<Format>,
    /// Whether the first row of a CSV / TSV file names the columns. Default: `true`. Ignored for JSONL and
    /// lines. Without a header, fields must be column indices.
    #[serde(default = "default_true")]
    pub has_header: bool,
    /// Where the main text is. Required.
    pub text: Field,
    /// Where the second text of a pair task is. Default: none.
    #[serde(default)]
    pub text_pair: Option<Field>,
    /// Further values a template places as `{name}`: placeholder name -> where the value is (the same rules
    /// as `text`). Names are letters, digits and `_`, other than `text`, `text_pair` and `label`.
    /// Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Field>,
    /// Where the label is. Default: none (unlabelled examples, e.g. a test split or a plain corpus).
    #[serde(default)]
    pub label: Option<Field>,
    /// Skip the first `skip` examples, in file order (blank lines do not count), before `limit` applies: with
    /// `limit`, one file splits into a training and a held-out part. Default: 0.
    #[serde(default)]
    pub skip: usize,
    /// Keep only the first `limit` examples, in file order (after `skip`). Default: all.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Strip leading and trailing whitespace from every value (SST-2's TSV ends each sentence with a space).
    /// Default: `true`.
    #[serde(default = "default_true")]
    pub trim: bool,
    /// Replace bytes that are not UTF-8 with U+FFFD instead of refusing the file (TREC's training file has
    /// one stray byte). Default: `false`.
    #[serde(default)]
    pub lossy_utf8: bool,
}

fn default_true() -> bool {
    true
}

impl DataSource {
    /// A source reading `text` from `path`, with a header, no pair, no label, no limit, trimming values.
    pub fn new(path: impl Into<PathBuf>, text: impl Into<Field>) -> Self {
        DataSource {
            path: path.into(),
            format: None,
            has_header: true,
            text: text.into(),
            text_pair: None,
            fields: BTreeMap::new(),
            label: None,
            skip: 0,
            limit: None,
            trim: true,
            lossy_utf8: false,
        }
    }

    /// Sets the format instead of inferring it from the extension.
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }

    /// Declares a CSV / TSV file without a header row (fields are then column indices).
    pub fn without_header(mut self) -> Self {
        self.has_header = false;
        self
    }

    /// Sets where the second text is.
    pub fn with_text_pair(mut self, field: impl Into<Field>) -> Self {
        self.text_pair = Some(field.into());
        self
    }

    /// Sets where the label is.
    pub fn with_label(mut self, field: impl Into<Field>) -> Self {
        self.label = Some(field.into());
        self
    }

    /// Sets where the value of placeholder `{name}` is (see [`DataSource::fields`]).
    pub fn with_field(mut self, name: impl Into<String>, field: impl Into<Field>) -> Self {
        self.fields.insert(name.into(), field.into());
        self
    }

    /// Keeps only the first `limit` examples (after any skipped ones).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Skips the first `skip` examples.
    pub fn with_skip(mut self, skip: usize) -> Self {
        self.skip = skip;
        self
    }

    /// Replaces bytes that are not UTF-8 instead of refusing the file.
    pub fn with_lossy_utf8(mut self) -> Self {
        self.lossy_utf8 = true;
        self
    }

    /// The placeholder names this source provides to a template: `text`, `text_pair` when it names one,
    /// then the names of `fields`.
    pub fn placeholders(&self) -> Vec<&str> {
        let mut names = vec!["text"];
        if self.text_pair.is_some() {
            names.push("text_pair");
        }
        names.extend(self.fields.keys().map(String::as_str));
        names
    }

    /// Checks, before any file is read, that this source provides every placeholder of `template`; the error
    /// names the missing placeholder, the known ones and the file.
    pub fn check_template(&self, template: &Template) -> Result<()> {
        let known = self.placeholders();
        match template
            .placeholders()
            .into_iter()
            .find(|p| !known.contains(p))
        {
            Some(missing) => Err(PeftError::Data(format!(
                "{}: {}",
                self.path.display(),
                template.missing_message(missing, &known)
            ))),
            None => Ok(()),
        }
    }

    /// This source with a relative `path` resolved against `dir` (the folder of the config file that named it).
    pub fn relative_to(mut self, dir: &Path) -> Self {
        if self.path.is_relative() {
            self.path = dir.join(&self.path);
        }
        self
    }

    /// The format: the configured one, else the one the extension implies.
    pub fn format(&self) -> Result<Format> {
        self.format.or_else(|| Format::from_path(&self.path)).ok_or_else(|| {
            PeftError::Data(format!(
                "cannot infer the format of {} from its extension; set format = \"jsonl\", \"csv\", \"tsv\" or \"lines\"",
                self.path.display()
            ))
        })
    }

    /// Reads every example of the file (up to `limit`). An empty result is an error.
    pub fn read(&self) -> Result<Vec<RawExample>> {
        let content = if self.lossy_utf8 {
            let bytes =
                std::fs::read(&self.path).map_err(|e| PeftError::io("reading", &self.path, e))?;
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            read_utf8(&self.path)?
        };
        self.parse_str(&content)
    }

    /// Parses `content` as if it were the file at `path` (whose name is used for the format and messages).
    pub fn parse_str(&self, content: &str) -> Result<Vec<RawExample>> {
        let content = content.strip_prefix('\u{feff}').unwrap_or(content);
        for name in self.fields.keys() {
            check_field_name(name).map_err(|why| {
                PeftError::Data(format!("{}: fields: {why}", self.path.display()))
            })?;
        }
        let mut out = Vec::new();
        match self.format()? {
            Format::Jsonl => self.parse_jsonl(content, &mut out)?,
            Format::Csv => self.parse_delimited(content, b',', true, &mut out)?,
            Format::Tsv => self.parse_delimited(content, b'\t', false, &mut out)?,
            Format::Lines => self.parse_lines(content, &mut out)?,
        }
        if out.is_empty() {
            let skipped = if self.skip > 0 {
                format!(" after skipping {} (skip = {})", self.skip, self.skip)
            } else {
                String::new()
            };
            return Err(PeftError::Data(format!(
                "no examples in {}{skipped}",
                self.path.display()
            )));
        }
        Ok(out)
    }

    fn full(&self, out: &[RawExample]) -> bool {
        self.limit.is_some_and(|l| out.len() >= l)
    }

    /// Counts one non-blank row and says whether it is skipped (`skip`).
    fn skipped(&self, seen: &mut usize) -> bool {
        *seen += 1;
        *seen <= self.skip
    }

    fn clean(&self, value: &str) -> String {
        if self.trim {
            value.trim().to_string()
        } else {
            value.to_string()
        }
    }

    /// The configured fields in a fixed order: text, text_pair, label, then `fields` in name order.
    fn columns(&self) -> Vec<Option<&Field>> {
        let mut columns = vec![
            Some(&self.text),
            self.text_pair.as_ref(),
            self.label.as_ref(),
        ];
        columns.extend(self.fields.values().map(Some));
        columns
    }

    /// The example from values in [`DataSource::columns`] order, read at 1-based `line`.
    fn example(&self, values: Vec<Option<String>>, line: usize) -> RawExample {
        let mut values = values.into_iter();
        let mut next = || values.next().flatten();
        let (text, text_pair, label) = (next().unwrap_or_default(), next(), next());
        let extra = self
            .fields
            .keys()
            .map(|name| (name.clone(), next().unwrap_or_default()))
            .collect();
        RawExample {
            text,
            text_pair,
            label,
            extra,
            line,
        }
    }

    fn parse_jsonl(&self, content: &str, out: &mut Vec<RawExample>) -> Result<()> {
        let columns = self.columns();
        if let Some(Field::Index(i)) = columns
            .iter()
            .copied()
            .flatten()
            .find(|f| matches!(f, Field::Index(_)))
        {
            return Err(PeftError::Data(format!(
                "{}: JSONL fields are named by key, not by column index ({i})",
                self.path.display()
            )));
        }
        let mut seen = 0;
        for (n, line) in content.lines().enumerate() {
            if self.full(out) {
                break;
            }
            if line.trim().is_empty() || self.skipped(&mut seen) {
                continue;
            }
            let at = || format!("{} line {}", self.path.display(), n + 1);
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| PeftError::Data(format!("{}: invalid JSON: {e}", at())))?;
            let object = value.as_object().ok_or_else(|| {
                PeftError::Data(format!("{}: expected a JSON object, found {value}", at()))
            })?;
            let mut values: Vec<Option<String>> = vec![None; columns.len()];
            for (slot, field) in values.iter_mut().zip(&columns) {
                let Some(Field::Name(key)) = field else {
                    continue;
                };
                let v = object.get(key).ok_or_else(|| {
                    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                    PeftError::Data(format!(
                        "{}: no field `{key}`; available: {}",
                        at(),
                        keys.join(", ")
                    ))
                })?;
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    serde_json::Value::Number(x) => x.to_string(),
                    other => {
                        return Err(PeftError::Data(format!(
                            "{}: field `{key}` is {other}, not a string, number or boolean",
                            at()
                        )))
                    }
                };
                *slot = Some(self.clean(&s));
            }
            out.push(self.example(values, n + 1));
        }
        Ok(())
    }

    fn parse_delimited(
        &self,
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
        let csv_err = |e: csv::Error| PeftError::Data(format!("{}: {e}", self.path.display()));

        let header: Option<Vec<String>> = if self.has_header {
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
        let fields = self.columns();
        let mut columns: Vec<Option<usize>> = vec![None; fields.len()];
        for (slot, field) in columns.iter_mut().zip(fields) {
            let Some(field) = field else { continue };
            *slot = Some(match (field, &header) {
                (Field::Index(i), _) => *i,
                (Field::Name(name), Some(h)) => h.iter().position(|c| c == name).ok_or_else(|| {
                    PeftError::Data(format!(
                        "{} line 1 (header): no column `{name}`; available: {}",
                        self.path.display(),
                        h.join(", ")
                    ))
                })?,
                (Field::Name(name), None) => {
                    return Err(PeftError::Data(format!(
                        "{}: field `{name}` is a name but the file has no header (has_header = false); \
                         give fields as 0-based column indices",
                        self.path.display()
                    )))
                }
            });
        }
        let mut seen = 0;
        let mut lines = LineCounter::new(content);
        for record in records {
            if self.full(out) {
                break;
            }
            let record = record.map_err(csv_err)?;
            // csv's own line count leaves out blank lines, and its position is where it started reading
            // (before any blank lines): count newlines up to the record's first character instead.
            let line = record
                .position()
                .map_or(0, |p| lines.line_at(p.byte() as usize));
            if record.iter().all(|c| c.trim().is_empty()) || self.skipped(&mut seen) {
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
                        self.path.display(),
                        record.len()
                    ))
                })?;
                *slot = Some(self.clean(cell));
            }
            out.push(self.example(values, line));
        }
        Ok(())
    }

    fn parse_lines(&self, content: &str, out: &mut Vec<RawExample>) -> Result<()> {
        let columns = self.columns();
        for field in columns.iter().copied().flatten() {
            let ok = matches!(field, Field::Index(0 | 1)) || *field == Field::Name("line".into());
            if !ok {
                return Err(PeftError::Data(format!(
                    "{}: a `lines` file has column 0 (first word), column 1 (rest of the line) and the field \
                     `line` (whole line); {field} does not exist",
                    self.path.display()
                )));
            }
        }
        let mut seen = 0;
        for (n, line) in content.lines().enumerate() {
            if self.full(out) {
                break;
            }
            if line.trim().is_empty() || self.skipped(&mut seen) {
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
                            self.path.display(),
                            n + 1
                        ))
                    })?,
                    Field::Name(_) => line,
                };
                *slot = Some(self.clean(value));
            }
            out.push(self.example(values, n + 1));
        }
        Ok(())
    }
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

/// Reads a whole plain-text corpus (for causal-LM training). An empty or whitespace-only file is an error.
pub fn read_text(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let text = read_utf8(path)?;
    if text.trim().is_empty() {
        return Err(PeftError::Data(format!("no text in {}", path.display())));
    }
    Ok(text)
}

fn read_utf8(path: &Path) -> Result<String> {
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

    fn labels(rows: &[RawExample]) -> Vec<&str> {
        rows.iter()
            .map(|r| r.label.as_deref().unwrap_or("-"))
            .collect()
    }

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
    fn jsonl_values_become_label_strings() {
        let src = DataSource::new("x.jsonl", "premise")
            .with_text_pair("hypothesis")
            .with_label("label");
        let content = "{\"premise\": \"p\", \"hypothesis\": \"h\", \"label\": true}\n\n\
                       {\"premise\": \"q\", \"hypothesis\": \"i\", \"label\": 1}\n\
                       {\"premise\": \"r\", \"hypothesis\": \"j\", \"label\": \"neutral\"}\n";
        let rows = src.parse_str(content).unwrap();
        assert_eq!(labels(&rows), ["true", "1", "neutral"]);
        assert_eq!(rows[2].text_pair.as_deref(), Some("j"));
    }

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
    fn missing_fields_are_named_with_what_is_available() {
        let src = DataSource::new("cb.jsonl", "premise").with_label("labels");
        let err = src
            .parse_str("{\"premise\": \"p\", \"label\": \"x\"}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cb.jsonl line 1")
                && err.contains("`labels`")
                && err.contains("label, premise"),
            "{err}"
        );

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

        let src = DataSource::new("x.jsonl", 0);
        assert!(src
            .parse_str("{}\n")
            .unwrap_err()
            .to_string()
            .contains("named by key"));
    }

    #[test]
    fn an_empty_dataset_is_an_error() {
        for (name, content) in [
            ("e.tsv", "sentence\tlabel\n"),
            ("e.jsonl", "\n\n"),
            ("e.csv", ""),
            ("e.txt", " \n"),
        ] {
            let field = if name.ends_with(".txt") {
                "line"
            } else {
                "sentence"
            };
            let err = DataSource::new(name, field)
                .parse_str(content)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("no examples in {name}")), "{err}");
        }
    }

    #[test]
    fn limit_keeps_the_first_rows() {
        let src = DataSource::new("x.tsv", "t").with_limit(2);
        let rows = src.parse_str("t\na\nb\nc\n").unwrap();
        assert_eq!(
            rows.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn fields_are_read_in_every_format_with_their_lines() {
        let jsonl = DataSource::new("copa.jsonl", "premise")
            .with_field("choice1", "choice1")
            .with_field("question", "question")
            .with_label("label");
        let rows = jsonl
            .parse_str(
                "\n{\"premise\": \"p\", \"choice1\": \"c\", \"question\": \"cause\", \"label\": 0}\n",
            )
            .unwrap();
        assert_eq!(rows[0].field("choice1"), Some("c"));
        assert_eq!(rows[0].field("question"), Some("cause"));
        assert_eq!(rows[0].field_names(), ["text", "choice1", "question"]);
        assert_eq!(rows[0].line, 2);
        let err = jsonl
            .parse_str("{\"premise\": \"p\", \"label\": 0, \"question\": \"q\"}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no field `choice1`"), "{err}");

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

        let lines = DataSource::new("trec.all", 1)
            .with_field("first", 0)
            .with_format(Format::Lines);
        assert_eq!(
            lines.parse_str("5 How far ?\n").unwrap()[0].extra["first"],
            "5"
        );
    }

    #[test]
    fn field_names_must_be_placeholders_of_their_own() {
        for bad in ["text", "text_pair", "label", "two words", ""] {
            let err = DataSource::new("x.jsonl", "t")
                .with_field(bad, "k")
                .parse_str("{\"t\": \"a\", \"k\": \"b\"}\n")
                .unwrap_err()
                .to_string();
            assert!(err.contains("x.jsonl: fields:"), "{bad:?}: {err}");
        }
        let src: DataSource = toml::from_str(
            "path = \"a.jsonl\"\ntext = \"p\"\nfields = { choice1 = \"c1\", n = 2 }",
        )
        .unwrap();
        assert_eq!(src.fields["choice1"], Field::Name("c1".into()));
        assert_eq!(src.fields["n"], Field::Index(2));
        assert_eq!(src.placeholders(), ["text", "choice1", "n"]);
        assert!(src
            .check_template(&Template::new("{text} {n}").unwrap())
            .is_ok());
        let err = src
            .check_template(&Template::new("{text} {text_pair}").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.jsonl")
                && err.contains("{text_pair}")
                && err.contains("{text}, {choice1}, {n}"),
            "{err}"
        );
    }

    #[test]
    fn skip_and_limit_split_one_file() {
        let content = "t\na\nb\n\nc\nd\ne\n";
        let texts = |src: DataSource| -> Vec<String> {
            src.parse_str(content)
                .unwrap()
                .into_iter()
                .map(|r| r.text)
                .collect()
        };
        let head = DataSource::new("x.tsv", "t").with_limit(3);
        let tail = DataSource::new("x.tsv", "t").with_skip(3);
        assert_eq!(texts(head), ["a", "b", "c"]);
        assert_eq!(texts(tail.clone()), ["d", "e"]);
        assert_eq!(texts(tail.with_limit(1)), ["d"]);
        let lines = DataSource::new("corpus.txt", "line").with_skip(1);
        assert_eq!(lines.parse_str("x\n\ny\nz\n").unwrap()[0].line, 3);
        let jsonl = DataSource::new("x.jsonl", "t").with_skip(1);
        assert_eq!(
            jsonl.parse_str("{\"t\": 1}\n{\"t\": 2}\n").unwrap()[0].text,
            "2"
        );
        let err = DataSource::new("x.tsv", "t")
            .with_skip(9)
            .parse_str(content)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no examples in x.tsv after skipping 9"),
            "{err}"
        );
    }

    #[test]
    fn lossy_utf8_replaces_stray_bytes_instead_of_failing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trec.all");
        std::fs::write(&path, b"4 a sister\xf0city ?\n").unwrap();
        let src = DataSource::new(&path, 1)
            .with_label(0)
            .with_format(Format::Lines);
        let err = src.read().unwrap_err().to_string();
        assert!(
            err.contains("not UTF-8") && err.contains("lossy_utf8"),
            "{err}"
        );
        let rows = src.with_lossy_utf8().read().unwrap();
        assert_eq!(rows[0].text, "a sister\u{fffd}city ?");
    }

    #[test]
    fn a_byte_order_mark_does_not_hide_the_first_column() {
        let src = DataSource::new("mrpc.tsv", "Quality");
        assert_eq!(
            src.parse_str("\u{feff}Quality\tx\n1\ty\n").unwrap()[0].text,
            "1"
        );
    }

    #[test]
    fn format_comes_from_the_extension_or_the_config() {
        assert_eq!(
            Format::from_path(Path::new("a/b.JSONL")),
            Some(Format::Jsonl)
        );
        let err = DataSource::new("TREC.test.all", 1)
            .format()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("TREC.test.all") && err.contains("set format"),
            "{err}"
        );
    }

    #[test]
    fn config_tables_are_strict_and_default_sensibly() {
        let src: DataSource =
            toml::from_str("path = \"cola.tsv\"\nhas_header = false\ntext = 3\nlabel = 1").unwrap();
        assert_eq!(
            src,
            DataSource::new("cola.tsv", 3)
                .with_label(1)
                .without_header()
        );
        let err = toml::from_str::<DataSource>("path = \"a.tsv\"\ntext = \"t\"\nlabl = \"l\"")
            .unwrap_err();
        assert!(err.to_string().contains("labl"), "{err}");
        let rel = DataSource::new("d/a.tsv", "t").relative_to(Path::new("/cfg"));
        assert_eq!(rel.path, Path::new("/cfg/d/a.tsv"));
    }

    #[test]
    fn files_are_read_and_failures_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.jsonl");
        std::fs::write(&path, "{\"text\": \"hi\", \"label\": 0}\n").unwrap();
        let rows = DataSource::new(&path, "text")
            .with_label("label")
            .read()
            .unwrap();
        assert_eq!(labels(&rows), ["0"]);

        let missing = dir.path().join("nope.jsonl");
        let err = DataSource::new(&missing, "text").read().unwrap_err();
        assert!(
            matches!(err, PeftError::Io { .. }) && err.to_string().contains("nope.jsonl"),
            "{err}"
        );

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
