//! Which file to read and which columns hold what: a [`DataSource`] names a JSONL, CSV, TSV or `label text`
//! line file and the columns that hold the text, the optional second text, the label and any further
//! template fields, and reads it into [`RawExample`]s. One reader per [`Format`] lives beside this file.
//!
//! ```
//! use peft_train::data::{DataSource, Format};
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

mod delimited;
mod field;
mod format;
mod jsonl;
mod lines;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use field::Field;
pub use format::Format;

use super::corpus::read_utf8;
use super::raw_example::RawExample;
use super::template::{check_field_name, Template};
use peft_core::error::{PeftError, Result};

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
            Format::Jsonl => jsonl::parse(self, content, &mut out)?,
            Format::Csv => delimited::parse(self, content, b',', true, &mut out)?,
            Format::Tsv => delimited::parse(self, content, b'\t', false, &mut out)?,
            Format::Lines => lines::parse(self, content, &mut out)?,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testing::labels;

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
    fn a_format_the_extension_does_not_imply_must_be_configured() {
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
    }
}
