//! Which data to read and which columns hold what: a [`DataSource`] names a JSONL, CSV, TSV, `label text`
//! line or Parquet file, or a dataset of the Hugging Face hub by id, config and split (read from the local
//! hub cache, see [`HubDataset`]), and the columns that hold the text, the optional second text, the label
//! and any further template fields, and reads it into [`RawExample`]s. One reader per [`Format`] lives
//! beside this file.
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
//!
//! // A hub dataset, with a local copy read instead where it exists (its own layout: GLUE's TSV names the
//! // class, the hub stores its index).
//! let rte: DataSource = toml::from_str(r#"
//!     hub = "nyu-mll/glue"
//!     config = "rte"
//!     split = "train"
//!     text = "sentence1"
//!     text_pair = "sentence2"
//!     label = "label"
//!     label_map = { "0" = "entailment", "1" = "not_entailment" }
//!     [local]
//!     path = "../shared/data/glue/RTE/train.tsv"
//!     text = "sentence1"
//!     text_pair = "sentence2"
//!     label = "label"
//! "#).unwrap();
//! assert_eq!(rte.name(), "nyu-mll/glue (config rte, split train)");
//! assert_eq!(rte.format().unwrap(), Format::Parquet);
//! ```

mod delimited;
mod field;
mod format;
mod jsonl;
mod lines;
mod parquet;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use field::Field;
pub use format::Format;

use super::corpus::read_utf8;
use super::hub_dataset::HubDataset;
use super::raw_example::RawExample;
use super::template::{check_field_name, Template};
use peft_core::error::{PeftError, Result};

/// Which data to read and which columns hold what: the `[data]`-style table of an experiment file.
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
///
/// A dataset of the Hugging Face hub is named as HF datasets names it (`load_dataset("nyu-mll/glue", "sst2",
/// split="train")`), and may carry a `[local]` source read instead where its file exists:
///
/// ```toml
/// hub = "nyu-mll/glue"
/// config = "sst2"
/// split = "train"
/// text = "sentence"
/// label = "label"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// The file to read; a relative path is taken as given (see [`DataSource::relative_to`]). A source names
    /// `path` or `hub`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// A dataset of the Hugging Face hub by id (`"nyu-mll/glue"`), read as Parquet from the local hub cache and
    /// downloaded there where the network allows (see [`HubDataset`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// The hub dataset's config (HF datasets' "subset", `"sst2"`). Default: `"default"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The hub dataset's split (`"train"`, `"validation"`, `"test"`). Required with `hub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// The hub revision to download from. Default: the hub's Parquet conversion, `refs/convert/parquet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
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
    /// Renames label values as read (value in the data -> label value of the task), for data that stores a
    /// label differently from the task's `label_words` (a hub dataset's class index, say). When set, a label
    /// missing from the map is an error. Default: none (labels as read).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_map: BTreeMap<String, String>,
    /// A local copy read instead of the hub dataset where its file exists: a complete source of its own (a
    /// file `path`, its columns and `label_map`), since a copy from elsewhere often lays the data out
    /// differently. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<Box<DataSource>>,
}

fn default_true() -> bool {
    true
}

/// Where [`DataSource::locate`] found the data.
#[derive(Debug)]
pub enum Located<'a> {
    /// The source's `local` copy, whose file exists.
    Local(&'a DataSource),
    /// The source's own file.
    File(&'a Path),
    /// The hub split's Parquet files in the local cache.
    Hub(Vec<PathBuf>),
}

/// The refusal of a data path that is a folder, a pipe or a device: reading a pipe would wait for a writer.
fn not_a_file(path: &Path) -> PeftError {
    PeftError::Data(format!(
        "{} is not a regular file (a folder, a pipe or a device): name the data file itself",
        path.display()
    ))
}

/// The refusal of a data file that is not there, saying what to do; a path into `../shared/data` is the
/// development copy of the datasets, which a clone of the project does not have.
fn missing_file(path: &Path) -> PeftError {
    let shared = path
        .components()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0].as_os_str() == "shared" && w[1].as_os_str() == "data");
    let development = if shared {
        " (a path into ../shared/data reads the development copy of the datasets kept beside the project's \
         repository, which a clone does not have)"
    } else {
        ""
    };
    PeftError::Data(format!(
        "data file {} does not exist{development}. Put the file there, or name the dataset on the Hugging Face \
         hub instead (`hub = \"org/name\"`, `config`, `split`; `peft fetch org/name --config <config>` puts it in \
         the local cache)",
        path.display()
    ))
}

impl DataSource {
    /// A source reading `text` from `path`, with a header, no pair, no label, no limit, trimming values.
    pub fn new(path: impl Into<PathBuf>, text: impl Into<Field>) -> Self {
        DataSource {
            path: Some(path.into()),
            hub: None,
            config: None,
            split: None,
            revision: None,
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
            label_map: BTreeMap::new(),
            local: None,
        }
    }

    /// A source reading `text` from split `split` of config `config` of hub dataset `id`.
    pub fn from_hub(
        id: impl Into<String>,
        config: impl Into<String>,
        split: impl Into<String>,
        text: impl Into<Field>,
    ) -> Self {
        DataSource {
            path: None,
            hub: Some(id.into()),
            config: Some(config.into()),
            split: Some(split.into()),
            ..DataSource::new("", text)
        }
    }

    /// Reads `local` instead of this source where `local`'s file exists.
    pub fn with_local(mut self, local: DataSource) -> Self {
        self.local = Some(Box::new(local));
        self
    }

    /// Renames label values as read (see [`DataSource::label_map`]).
    pub fn with_label_map<K: Into<String>, V: Into<String>>(
        mut self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.label_map = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// The hub dataset this source names, if it names one.
    pub fn hub_dataset(&self) -> Option<HubDataset> {
        let id = self.hub.clone()?;
        Some(HubDataset {
            id,
            config: self
                .config
                .clone()
                .unwrap_or_else(|| super::hub_dataset::DEFAULT_CONFIG.into()),
            split: self.split.clone().unwrap_or_default(),
            revision: self.revision.clone(),
        })
    }

    /// What this source reads, for messages: the file, or the hub dataset.
    pub fn name(&self) -> String {
        match (&self.path, self.hub_dataset()) {
            (Some(path), _) => path.display().to_string(),
            (None, Some(hub)) => hub.to_string(),
            (None, None) => "a data source without path or hub".into(),
        }
    }

    /// Checks, before anything is read, that the source names one file or one hub split, and that a `local`
    /// copy is a file source of its own.
    pub fn check(&self) -> Result<()> {
        let refuse = |why: String| Err(PeftError::Config(format!("data source: {why}")));
        match (&self.path, &self.hub) {
            (Some(_), Some(hub)) => {
                return refuse(format!(
                    "names both `path` and `hub = \"{hub}\"`; keep one (a local copy of a hub dataset goes in a \
                     `[local]` table of its own)"
                ))
            }
            (None, None) => {
                return refuse(
                    "names neither `path` (a local file) nor `hub` (a Hugging Face dataset id, with `config` \
                     and `split`)"
                        .into(),
                )
            }
            (Some(path), None) => {
                for (key, set) in [
                    ("config", self.config.is_some()),
                    ("split", self.split.is_some()),
                    ("revision", self.revision.is_some()),
                ] {
                    if set {
                        return refuse(format!(
                            "`{key}` belongs to a hub dataset, but this source reads the file {}",
                            path.display()
                        ));
                    }
                }
                if self.local.is_some() {
                    return refuse(format!(
                        "`local` is the local copy of a hub dataset, but this source already reads the file {}",
                        path.display()
                    ));
                }
            }
            (None, Some(hub)) => {
                if self.split.is_none() {
                    return refuse(format!(
                        "hub dataset `{hub}` needs a `split` (\"train\", \"validation\", \"test\", ...)"
                    ));
                }
                // `hub` is set here, so the dataset is there to check.
                if let Some(dataset) = self.hub_dataset() {
                    dataset.check()?;
                }
            }
        }
        if let Some(local) = &self.local {
            if local.path.is_none() || local.local.is_some() {
                return refuse(format!(
                    "the `local` copy of {} must name a file with `path` (and no `local` of its own)",
                    self.name()
                ));
            }
            local.check()?;
        }
        Ok(())
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

    /// Keeps at most the first `limit` examples, whichever copy is read: an existing `limit` stays where it
    /// is smaller, and the `local` copy gets the same cap.
    pub fn with_limit_at_most(mut self, limit: usize) -> Self {
        self.limit = Some(self.limit.map_or(limit, |l| l.min(limit)));
        self.local = self
            .local
            .map(|local| Box::new(local.with_limit_at_most(limit)));
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
                self.name(),
                template.missing_message(missing, &known)
            ))),
            None => match &self.local {
                Some(local) => local.check_template(template),
                None => Ok(()),
            },
        }
    }

    /// This source with a relative `path` (its own and its `local` copy's) resolved against `dir` (the folder
    /// of the config file that named it).
    pub fn relative_to(mut self, dir: &Path) -> Self {
        if let Some(path) = self.path.as_mut().filter(|p| p.is_relative()) {
            *path = dir.join(&*path);
        }
        self.local = self.local.map(|local| Box::new(local.relative_to(dir)));
        self
    }

    /// The format: the configured one, else the one the extension implies; Parquet for a hub dataset.
    pub fn format(&self) -> Result<Format> {
        let implied = match &self.path {
            Some(path) => Format::from_path(path),
            None => self.hub.as_ref().map(|_| Format::Parquet),
        };
        self.format.or(implied).ok_or_else(|| {
            PeftError::Data(format!(
                "cannot infer the format of {} from its extension; set format = \"jsonl\", \"csv\", \"tsv\", \"lines\" or \"parquet\"",
                self.name()
            ))
        })
    }

    /// Finds the data without reading it: the `local` copy where its file exists, else the file, else the hub
    /// split's Parquet files (from the local cache, or downloaded). An error says what is missing and what to
    /// do; a command calls this before it loads a model, so that absent data costs nothing.
    pub fn locate(&self) -> Result<Located<'_>> {
        self.check()?;
        let local = self.local.as_deref();
        if let Some(local) = local.filter(|l| l.path.as_ref().is_some_and(|p| p.exists())) {
            return Ok(Located::Local(local));
        }
        match (&self.path, self.hub_dataset()) {
            (Some(path), _) if !path.exists() => Err(missing_file(path)),
            (Some(path), _) if !path.is_file() => Err(not_a_file(path)),
            (Some(path), _) => Ok(Located::File(path)),
            (None, Some(hub)) => hub.files().map(Located::Hub).map_err(|e| match (e, local) {
                (PeftError::Data(why), Some(local)) => PeftError::Data(format!(
                    "{why}. (Its local copy, {}, is absent too.)",
                    local.name()
                )),
                (e, _) => e,
            }),
            (None, None) => unreachable!("check() refuses a source without path or hub"),
        }
    }

    /// Reads every example (up to `limit`) from where [`DataSource::locate`] finds the data. An empty result
    /// is an error.
    pub fn read(&self) -> Result<Vec<RawExample>> {
        let files = match self.locate()? {
            Located::Local(local) => return local.read(),
            Located::File(path) if self.format()? != Format::Parquet => {
                let content = if self.lossy_utf8 {
                    let bytes =
                        std::fs::read(path).map_err(|e| PeftError::io("reading", path, e))?;
                    String::from_utf8_lossy(&bytes).into_owned()
                } else {
                    read_utf8(path)?
                };
                return self.parse_str(&content);
            }
            Located::File(path) => vec![path.to_path_buf()],
            Located::Hub(files) => files,
        };
        self.check_field_names()?;
        let mut out = Vec::new();
        parquet::read(self, &files, &mut out)?;
        self.finish(out)
    }

    /// Parses `content` as if it were the file at `path` (whose name is used for the format and messages).
    pub fn parse_str(&self, content: &str) -> Result<Vec<RawExample>> {
        let content = content.strip_prefix('\u{feff}').unwrap_or(content);
        self.check_field_names()?;
        let mut out = Vec::new();
        match self.format()? {
            Format::Jsonl => jsonl::parse(self, content, &mut out)?,
            Format::Csv => delimited::parse(self, content, b',', true, &mut out)?,
            Format::Tsv => delimited::parse(self, content, b'\t', false, &mut out)?,
            Format::Lines => lines::parse(self, content, &mut out)?,
            Format::Parquet => {
                return Err(PeftError::Data(format!(
                    "{}: Parquet is binary; read it with `DataSource::read`",
                    self.name()
                )))
            }
        }
        self.finish(out)
    }

    fn check_field_names(&self) -> Result<()> {
        for name in self.fields.keys() {
            check_field_name(name)
                .map_err(|why| PeftError::Data(format!("{}: fields: {why}", self.name())))?;
        }
        Ok(())
    }

    /// The examples read, renamed by `label_map`; none at all is an error.
    fn finish(&self, mut out: Vec<RawExample>) -> Result<Vec<RawExample>> {
        if out.is_empty() {
            let skipped = if self.skip > 0 {
                format!(" after skipping {} (skip = {})", self.skip, self.skip)
            } else {
                String::new()
            };
            return Err(PeftError::Data(format!(
                "no examples in {}{skipped}",
                self.name()
            )));
        }
        if !self.label_map.is_empty() {
            for row in &mut out {
                let Some(label) = row.label.as_mut() else {
                    continue;
                };
                let renamed = self.label_map.get(label.as_str()).ok_or_else(|| {
                    let keys: Vec<&str> = self.label_map.keys().map(String::as_str).collect();
                    PeftError::Data(format!(
                        "{} row {}: label `{label}` is not in label_map (its keys: {})",
                        self.name(),
                        row.line,
                        keys.join(", ")
                    ))
                })?;
                *label = renamed.clone();
            }
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
        let capped = DataSource::from_hub("o/n", "c", "train", "t")
            .with_limit(5)
            .with_local(DataSource::new("x.tsv", "t").with_limit(1))
            .with_limit_at_most(2);
        assert_eq!(capped.limit, Some(2));
        assert_eq!(capped.local.as_ref().and_then(|l| l.limit), Some(1));
        assert_eq!(
            texts(DataSource::new("x.tsv", "t").with_limit_at_most(2)),
            ["a", "b"]
        );
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
        assert_eq!(rel.path.as_deref(), Some(Path::new("/cfg/d/a.tsv")));
    }

    #[test]
    fn a_source_names_one_file_or_one_hub_split() {
        let parse = |text: &str| {
            toml::from_str::<DataSource>(text)
                .unwrap()
                .check()
                .map_err(|e| e.to_string())
        };
        assert!(parse(
            "hub = \"nyu-mll/glue\"\nconfig = \"sst2\"\nsplit = \"train\"\ntext = \"sentence\""
        )
        .is_ok());
        for (text, says) in [
            ("text = \"t\"", "names neither `path`"),
            ("path = \"a.tsv\"\nhub = \"o/n\"\nsplit = \"train\"\ntext = \"t\"", "names both"),
            ("hub = \"o/n\"\ntext = \"t\"", "needs a `split`"),
            ("path = \"a.tsv\"\nsplit = \"train\"\ntext = \"t\"", "`split` belongs to a hub dataset"),
            ("hub = \"glue\"\nsplit = \"train\"\ntext = \"t\"", "not of the form `org/name`"),
            (
                "hub = \"o/n\"\nsplit = \"train\"\ntext = \"t\"\n[local]\nhub = \"o/m\"\nsplit = \"x\"\ntext = \"t\"",
                "must name a file with `path`",
            ),
            ("path = \"a.tsv\"\ntext = \"t\"\n[local]\npath = \"b.tsv\"\ntext = \"t\"", "already reads the file"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn a_missing_file_says_what_to_do_and_names_the_development_copy() {
        let err = DataSource::new("/absent/shared/data/glue/SST-2/train.tsv", "sentence")
            .read()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data file /absent/shared/data/glue/SST-2/train.tsv does not exist")
                && err.contains("development copy")
                && err.contains("peft fetch"),
            "{err}"
        );
        let err = DataSource::new("mine/train.tsv", "sentence")
            .read()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && !err.contains("development copy"),
            "{err}"
        );
    }

    #[test]
    fn label_map_renames_labels_and_refuses_unknown_ones() {
        let src = DataSource::new("x.tsv", "t")
            .with_label("l")
            .with_label_map([("0", "negative"), ("1", "positive")]);
        let rows = src.parse_str("t\tl\na\t1\nb\t0\n").unwrap();
        assert_eq!(labels(&rows), ["positive", "negative"]);
        let err = src.parse_str("t\tl\na\t2\n").unwrap_err().to_string();
        assert!(
            err.contains("x.tsv row 2: label `2` is not in label_map (its keys: 0, 1)"),
            "{err}"
        );
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
        assert!(err.to_string().contains("nope.jsonl"), "{err}");
        let unreadable = dir.path().join("folder.jsonl");
        std::fs::create_dir(&unreadable).unwrap();
        let err = DataSource::new(&unreadable, "text").read().unwrap_err();
        assert!(
            err.to_string().contains("folder.jsonl")
                && err.to_string().contains("not a regular file"),
            "{err}"
        );
    }
}
