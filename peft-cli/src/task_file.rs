//! Task definition files: the `[task]` and `[data]` sections of an experiment in a file of their own
//! (`tasks/sst2.toml`), with a `name` and the headline `metric`, so that a comparison grid names its tasks
//! and a user copies and edits one file per dataset. Relative data paths are taken from the task file's
//! folder.
//!
//! ```
//! use std::path::Path;
//! use peft_cli::task_file::TaskFile;
//! let text = r#"
//! name = "sst2"
//! metric = "accuracy"
//! [task]
//! kind = "classification"
//! template = "Review: {text}\nSentiment:"
//! label_words = { "0" = " negative", "1" = " positive" }
//! [data.train]
//! path = "train.tsv"
//! text = "sentence"
//! label = "label"
//! [data.eval]
//! path = "dev.tsv"
//! text = "sentence"
//! label = "label"
//! "#;
//! let task = TaskFile::parse(text, Path::new("tasks/sst2.toml")).unwrap();
//! assert_eq!(task.name, "sst2");
//! assert_eq!(task.data.train.path.as_deref(), Some(Path::new("tasks/train.tsv")));
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::experiment::{check_task, DataSection, TaskKind, TaskSection};

/// A parsed task definition file.
#[derive(Debug)]
pub struct TaskFile {
    /// Short name for tables and folders (default: the file's stem).
    pub name: String,
    /// The headline metric (default: the task kind's: accuracy, perplexity for causal LM, exact match for
    /// seq2seq).
    pub metric: String,
    /// `[task]`.
    pub task: TaskSection,
    /// `[data.train]` and `[data.eval]`, paths resolved against the file's folder.
    pub data: DataSection,
    /// Where it was read from.
    pub path: PathBuf,
    /// The file's text (part of a grid cell's identity: an edited task reruns its cells).
    pub text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFileRepr {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    metric: Option<String>,
    task: TaskSection,
    data: DataSection,
}

/// The metrics a task kind reports, headline first.
pub fn metrics_of(kind: TaskKind) -> &'static [&'static str] {
    match kind {
        TaskKind::Classification | TaskKind::ClassificationHead => {
            &["accuracy", "macro_f1", "matthews", "loss"]
        }
        TaskKind::TokenClassification => &["accuracy", "macro_f1", "loss"],
        TaskKind::CausalLm => &["perplexity", "loss"],
        TaskKind::Seq2Seq => &["exact_match", "loss", "perplexity"],
    }
}

/// Whether a higher value of `metric` is better.
pub fn higher_is_better(metric: &str) -> bool {
    !matches!(metric, "loss" | "perplexity")
}

impl TaskFile {
    /// Reads and checks a task file.
    pub fn load(path: &Path) -> Result<TaskFile> {
        let text = crate::input_file::read_text(path, "task file")?;
        Self::parse(&text, path)
    }

    /// Parses task file text; `path` gives messages and the folder relative data paths start from.
    pub fn parse(text: &str, path: &Path) -> Result<TaskFile> {
        let repr: TaskFileRepr =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        check_task(&repr.task).with_context(|| format!("{}: [task]", path.display()))?;
        let known = metrics_of(repr.task.kind);
        let metric = repr.metric.unwrap_or_else(|| known[0].to_string());
        if !known.contains(&metric.as_str()) {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with("metric"))
                .map(|l| format!(" (line {})", l + 1))
                .unwrap_or_default();
            bail!(
                "{}: unknown metric `{metric}`{line} for this task; it reports: {}",
                path.display(),
                known.join(", ")
            );
        }
        let name = repr.name.unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "task".into())
        });
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let data = repr.data.checked(path, &dir)?;
        // A placeholder the data does not provide fails here, before any model is opened.
        if let Some(t) = &repr.task.template {
            let template = peft_train::data::Template::new(t.clone())?;
            for source in [&data.train, &data.eval] {
                source
                    .check_template(&template)
                    .with_context(|| format!("{}: [task] template", path.display()))?;
            }
        }
        Ok(TaskFile {
            name,
            metric,
            task: repr.task,
            data,
            path: path.to_path_buf(),
            text: text.to_string(),
        })
    }
}
