//! The grid file of `peft compare`: models x tasks x methods x seeds, one shared `[training]` budget, and
//! per-method settings. Every name is checked when the file is read, and errors name the line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use peft_core::method::PeftMethod;
use peft_train::train::TrainConfig;
use serde::Deserialize;
use toml::Spanned;

use super::hf_experiment::{layered_training, HfExperiment};
use crate::experiment::parse_method;
use crate::task_file::{metrics_of, TaskFile};

/// The whole grid file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridRepr {
    compare: CompareSection,
    #[serde(default)]
    training: toml::Table,
    methods: Vec<MethodRepr>,
}

/// `[compare]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareSection {
    #[serde(default)]
    title: Option<String>,
    models: Vec<Spanned<String>>,
    tasks: Vec<Spanned<String>>,
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    #[serde(default)]
    param_budget: Option<usize>,
    #[serde(default)]
    metrics: Vec<Spanned<String>>,
    #[serde(default)]
    output_dir: Option<PathBuf>,
    #[serde(default = "default_latency_batch")]
    latency_batch: usize,
    #[serde(default)]
    forgetting_text: Option<Spanned<String>>,
    #[serde(default = "default_forgetting_rows")]
    forgetting_rows: usize,
}

fn default_forgetting_rows() -> usize {
    1000
}

fn default_seeds() -> Vec<u64> {
    vec![42]
}
fn default_latency_batch() -> usize {
    8
}

/// `[[methods]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodRepr {
    name: Spanned<String>,
    #[serde(default)]
    baseline: Option<Spanned<String>>,
    #[serde(default)]
    config: Option<Spanned<toml::Table>>,
    /// An HF PEFT method_comparison experiment folder, relative to the grid file.
    #[serde(default)]
    experiment: Option<Spanned<String>>,
    #[serde(default)]
    training: toml::Table,
    #[serde(default)]
    fixed_size: bool,
}

/// What a grid row does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// Trains its method config.
    Method,
    /// No training: the frozen model's dev metrics (the verbalizer, or the majority class where a model has
    /// no LM head).
    ZeroShot,
    /// Only a classification head on the frozen model's pooled state trains.
    LinearProbe,
}

/// One method row of the grid.
#[derive(Debug)]
pub struct MethodRow {
    /// The label in tables, plots and run folders.
    pub name: String,
    /// What it does.
    pub kind: RowKind,
    /// The method config as written (`LINEAR_PROBE` for a linear probe, nothing for zero-shot).
    pub config: Option<toml::Table>,
    /// The shared `[training]` with this row's overrides applied.
    pub training: TrainConfig,
    /// Left at its written size under a `param_budget`.
    pub fixed_size: bool,
    /// 1-based line of the row's `name`, for messages.
    pub line: usize,
    /// What an `experiment` folder's row did not apply, or applied differently from HF, each with the reason
    /// (empty for other rows).
    pub notes: Vec<String>,
}

/// A parsed, checked grid.
#[derive(Debug)]
pub struct Grid {
    /// Report title.
    pub title: String,
    /// Model names (zoo name, folder, `.gguf`, hub id), with their lines.
    pub models: Vec<(String, usize)>,
    /// Task definition files.
    pub tasks: Vec<TaskFile>,
    /// Seeds: each cell runs once per seed (data order and initialisation).
    pub seeds: Vec<u64>,
    /// Size every method with a size knob to about this many trainable parameters.
    pub param_budget: Option<usize>,
    /// Metrics shown in the tables (empty: each task's headline metric).
    pub metrics: Vec<String>,
    /// Results folder.
    pub output_dir: PathBuf,
    /// Rows in the latency measurement's batch.
    pub latency_batch: usize,
    /// General text for the forgetting measurement: a causal-LM task file whose evaluation split is read
    /// (at most `forgetting_rows` rows), and every decoder run reports its loss there after training minus
    /// before.
    pub forgetting: Option<ForgettingText>,
    /// The method rows, in file order.
    pub methods: Vec<MethodRow>,
    /// The grid file.
    pub path: PathBuf,
}

/// `[compare] forgetting_text` and `forgetting_rows`.
#[derive(Debug, Clone, serde::Serialize, Deserialize, PartialEq)]
pub struct ForgettingText {
    /// The causal-LM task file whose evaluation split is the general text.
    pub task_path: PathBuf,
    /// At most this many rows of it are read (lines of a local text file).
    pub rows: usize,
}

/// The 1-based line of byte offset `at` in `text`.
pub fn line_at(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

impl Grid {
    /// Reads and checks a grid file: syntax, unknown keys, method configs, task files, metric names.
    /// Models are checked later, when they are opened (before any training).
    pub fn load(path: &Path) -> Result<Grid> {
        let text = crate::input_file::read_text(path, "grid")?;
        Self::parse(&text, path)
    }

    /// Parses grid text; `path` gives messages, the folder task paths start from and the default output.
    pub fn parse(text: &str, path: &Path) -> Result<Grid> {
        let at = |span: std::ops::Range<usize>| line_at(text, span.start);
        let repr: GridRepr =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let file = path.display();
        let c = repr.compare;
        if c.models.is_empty()
            || c.tasks.is_empty()
            || c.seeds.is_empty()
            || repr.methods.is_empty()
        {
            bail!("{file}: a grid needs at least one of each: [compare] models, tasks, seeds, and a [[methods]] row");
        }
        if let Some(seed) = c
            .seeds
            .iter()
            .enumerate()
            .find_map(|(i, s)| c.seeds[..i].contains(s).then_some(s))
        {
            bail!(
                "{file}: seed {seed} is listed twice in [compare] seeds: a repeated seed reruns the same cells and \
                 its spread of 0 would pass for agreement between seeds; list each seed once"
            );
        }
        if c.latency_batch == 0 {
            bail!("{file}: latency_batch must be at least 1");
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut tasks = Vec::new();
        for t in &c.tasks {
            let task_path = dir.join(t.get_ref());
            let task = TaskFile::load(&task_path).with_context(|| {
                format!("{file}: task `{}` (line {})", t.get_ref(), at(t.span()))
            })?;
            if tasks.iter().any(|other: &TaskFile| other.name == task.name) {
                bail!(
                    "{file}: two tasks are named `{}` (line {}): give one a different `name`",
                    task.name,
                    at(t.span())
                );
            }
            tasks.push(task);
        }
        let forgetting = match &c.forgetting_text {
            Some(t) => {
                let task_path = dir.join(t.get_ref());
                let task = TaskFile::load(&task_path).with_context(|| {
                    format!(
                        "{file}: forgetting_text `{}` (line {})",
                        t.get_ref(),
                        at(t.span())
                    )
                })?;
                if task.task.kind != crate::experiment::TaskKind::CausalLm {
                    bail!(
                        "{file}: forgetting_text `{}` (line {}) is a {:?} task: it must be a causal-LM task file \
                         (kind = \"causal-lm\"), whose evaluation split is the general text",
                        t.get_ref(),
                        at(t.span()),
                        task.task.kind
                    );
                }
                if c.forgetting_rows == 0 {
                    bail!("{file}: forgetting_rows must be at least 1");
                }
                Some(ForgettingText {
                    task_path,
                    rows: c.forgetting_rows,
                })
            }
            None => None,
        };
        let metrics: Vec<String> = c.metrics.iter().map(|m| m.get_ref().clone()).collect();
        for m in &c.metrics {
            for task in &tasks {
                let known = metrics_of(task.task.kind);
                if !known.contains(&m.get_ref().as_str()) {
                    bail!(
                        "{file}: unknown metric `{}` (line {}) for task {} ({:?}); it reports: {}",
                        m.get_ref(),
                        at(m.span()),
                        task.name,
                        task.task.kind,
                        known.join(", ")
                    );
                }
            }
        }
        let mut names = BTreeSet::new();
        let mut methods = Vec::new();
        for row in repr.methods {
            let line = at(row.name.span());
            let name = row.name.get_ref().clone();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                bail!("{file}: method name {name:?} (line {line}) must be letters, digits, `-`, `_` or `.` (it names run folders)");
            }
            if !names.insert(name.clone()) {
                bail!("{file}: two methods are named `{name}` (line {line})");
            }
            let experiment = match &row.experiment {
                Some(e) if row.baseline.is_some() || row.config.is_some() => bail!(
                    "{file}: method `{name}` (line {}) has `experiment` with `baseline` or `config`: keep one",
                    at(e.span())
                ),
                Some(e) => Some(
                    HfExperiment::read(&dir.join(e.get_ref())).with_context(|| {
                        format!("{file}: experiment of method `{name}` (line {})", at(e.span()))
                    })?,
                ),
                None => None,
            };
            let (merged, notes) =
                layered_training(&repr.training, experiment.as_ref(), &row.training);
            let training: TrainConfig = toml::Value::Table(merged).try_into().map_err(|e| {
                anyhow::anyhow!("{file}: [training] of method `{name}` (line {line}): {e}")
            })?;
            let (kind, config) = match (&row.baseline, &row.config) {
                (Some(b), None) => match b.get_ref().as_str() {
                    "zero-shot" => (RowKind::ZeroShot, None),
                    "linear-probe" => {
                        let mut t = toml::Table::new();
                        t.insert("peft_type".into(), "LINEAR_PROBE".into());
                        (RowKind::LinearProbe, Some(t))
                    }
                    "full" => {
                        let mut t = toml::Table::new();
                        t.insert("peft_type".into(), "FULL".into());
                        (RowKind::Method, Some(t))
                    }
                    other => bail!(
                        "{file}: unknown baseline `{other}` (line {}): use \"zero-shot\", \"linear-probe\" or \"full\"",
                        at(b.span())
                    ),
                },
                (None, Some(cfg)) => {
                    let table = cfg.get_ref().clone();
                    let method = parse_method(&table, text).with_context(|| {
                        format!(
                            "{file}: config of method `{name}` (line {})",
                            at(cfg.span())
                        )
                    })?;
                    let kind = if method.typetag_name() == "LINEAR_PROBE" {
                        RowKind::LinearProbe
                    } else {
                        RowKind::Method
                    };
                    (kind, Some(table))
                }
                (Some(_), Some(_)) => {
                    bail!("{file}: method `{name}` (line {line}) has both `baseline` and `config`: keep one")
                }
                (None, None) => match experiment {
                    Some(e) => (RowKind::Method, Some(e.config)),
                    None => bail!(
                        "{file}: method `{name}` (line {line}) needs `config = {{ peft_type = ... }}`, `baseline = \"zero-shot\" | \"linear-probe\" | \"full\"` or `experiment = \"<HF experiment folder>\"`"
                    ),
                },
            };
            methods.push(MethodRow {
                name,
                kind,
                config,
                training,
                fixed_size: row.fixed_size,
                line,
                notes,
            });
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "grid".into());
        Ok(Grid {
            title: c.title.unwrap_or_else(|| stem.clone()),
            models: c
                .models
                .iter()
                .map(|m| (m.get_ref().clone(), at(m.span())))
                .collect(),
            tasks,
            seeds: c.seeds,
            param_budget: c.param_budget,
            metrics,
            output_dir: c
                .output_dir
                .unwrap_or_else(|| Path::new("results").join(&stem)),
            latency_batch: c.latency_batch,
            forgetting,
            methods,
            path: path.to_path_buf(),
        })
    }

    /// The metrics shown for `task`: the grid's list, or the task's headline metric.
    pub fn metrics_for(&self, task: &TaskFile) -> Vec<String> {
        if self.metrics.is_empty() {
            vec![task.metric.clone()]
        } else {
            self.metrics.clone()
        }
    }
}

/// The method config of a row as a method.
pub fn method_of(table: &toml::Table) -> Result<Box<dyn PeftMethod>> {
    Ok(toml::Value::Table(table.clone()).try_into()?)
}
