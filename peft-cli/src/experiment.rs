//! The experiment file: one TOML file naming the model, the method, the task, the data and the training
//! settings. Unknown keys are refused with their name and line, so that a typo never silently falls back to a
//! default.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use peft_core::method::PeftMethod;
use peft_train::data::{DataSource, Template, Verbalizer};
use peft_train::train::TrainConfig;
use serde::{Deserialize, Serialize};

/// A whole experiment file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    /// `[model]`: which frozen model.
    pub model: ModelSection,
    /// `[method]`: the PEFT method's HF PEFT config (`peft_type` names it); checked separately.
    pub method: toml::Table,
    /// `[task]`: what is learned.
    pub task: TaskSection,
    /// `[data]`: where the examples come from.
    pub data: DataSection,
    /// `[training]`: the shared trainer's settings (all optional).
    #[serde(default)]
    pub training: TrainConfig,
}

/// `[model]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A zoo name (`smollm2-135m`), an HF model folder, a `.gguf` file, or a hub id (`org/name`).
    pub name: String,
    /// Keep a GGUF model's weights in their block formats while the adapter trains over them (QLoRA-style);
    /// the default dequantizes them to f32. A folder or hub model refuses it.
    #[serde(default)]
    pub quantized: bool,
}

/// What kind of task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// Label words scored by the LM head at the answer position.
    #[serde(rename = "classification")]
    Classification,
    /// A trained linear head on the last real token's final hidden state (P-tuning v2's setting); the classes
    /// are `label_words`' labels in order (the words themselves are used only by the zero-shot baseline).
    #[serde(rename = "classification-head")]
    ClassificationHead,
    /// Next-token prediction over a text corpus.
    #[serde(rename = "causal-lm")]
    CausalLm,
    /// Encoder-decoder generation (T5): the rendered `template` (default `{text}`) is the source, the data's
    /// label field the target; teacher-forced loss, greedy exact match in evaluation.
    #[serde(rename = "seq2seq")]
    Seq2Seq,
    /// A trained head on every token (named entities, parts of speech): JSONL rows whose `text` field is a list
    /// of words and whose `label` field is a list of tags, one per word; `labels` lists the tags in class order.
    #[serde(rename = "token-classification")]
    TokenClassification,
}

impl TaskKind {
    /// Whether the task classifies (with a verbalizer or a head).
    pub fn is_classification(self) -> bool {
        matches!(
            self,
            TaskKind::Classification | TaskKind::ClassificationHead
        )
    }
}

/// `[task]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// `classification`, `classification-head`, `causal-lm`, `seq2seq` or `token-classification`.
    pub kind: TaskKind,
    /// Classification: the prompt, with `{text}` (and `{text_pair}`, and any `{name}` the data's `fields`
    /// declare); the answer follows its last token.
    #[serde(default)]
    pub template: Option<String>,
    /// Classification: label value -> label word, in class order (`{ "0" = " negative", "1" = " positive" }`).
    #[serde(default)]
    pub label_words: Option<Verbalizer>,
    /// Token classification: the tag names in class order (`["O", "B-PER", "I-PER"]`).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Longest prompt in tokens, virtual tokens excluded. Default: the model's context minus the virtual tokens.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Whether the tokenizer's special tokens (a BOS, say) are added. Default true.
    #[serde(default = "default_true")]
    pub add_special_tokens: bool,
    /// Causal LM: tokens per training block. Default 128.
    #[serde(default = "default_block")]
    pub block_size: usize,
}

fn default_true() -> bool {
    true
}
fn default_block() -> usize {
    128
}

/// `[data]`: `[data.train]` and `[data.eval]`. Relative paths are taken from the experiment file's folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training examples.
    pub train: DataSource,
    /// Evaluation examples (dev set).
    pub eval: DataSource,
}

impl DataSection {
    /// Checks that each source names one file or one hub split (before any model is opened), and resolves
    /// relative paths against `dir`, the folder of the file that named them.
    pub fn checked(self, file: &Path, dir: &Path) -> Result<DataSection> {
        for (name, source) in [("train", &self.train), ("eval", &self.eval)] {
            source
                .check()
                .with_context(|| format!("{}: [data.{name}]", file.display()))?;
        }
        Ok(DataSection {
            train: self.train.relative_to(dir),
            eval: self.eval.relative_to(dir),
        })
    }

    /// Finds both sources' data (see `DataSource::locate`), so that a command stops on absent data before it
    /// loads a model.
    pub fn locate(&self) -> Result<()> {
        self.train.locate()?;
        self.eval.locate()?;
        Ok(())
    }
}

/// A parsed and checked experiment.
pub struct Experiment {
    /// The file's content.
    pub file: ExperimentFile,
    /// The method config.
    pub method: Box<dyn PeftMethod>,
}

impl Experiment {
    /// Reads and checks `path`: TOML syntax, unknown keys anywhere (method included), the task's fields.
    pub fn load(path: &Path) -> Result<Experiment> {
        let text = crate::input_file::read_text(path, "experiment")?;
        Self::parse(&text, path)
    }

    /// Parses experiment text; `path` is used for messages and relative data paths.
    pub fn parse(text: &str, path: &Path) -> Result<Experiment> {
        let file: ExperimentFile =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let method = parse_method(&file.method, text)
            .with_context(|| format!("{}: [method]", path.display()))?;
        check_task(&file.task).with_context(|| format!("{}: [task]", path.display()))?;
        file.training
            .check()
            .with_context(|| format!("{}: [training]", path.display()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut file = file;
        file.data = file.data.checked(path, &dir)?;
        Ok(Experiment { file, method })
    }

    /// A digest of what a run of this experiment learns from: the `[task]` section (template, label words,
    /// lengths) and the training data's settings and content. A checkpoint records it, and a resume with
    /// another digest (an edited data file, a changed template) is refused.
    /// Its parts are named (`template:<hex> label_words:<hex> task:<hex> training_data:<hex>`, `task` being the
    /// rest of the section), so that a refusal says which one changed.
    pub fn inputs_digest(&self) -> Result<String> {
        use peft_train::data::digest::Digest;
        let mut rest = serde_json::to_value(&self.file.task)?;
        let mut part = |key: &str| -> Result<String> {
            let value = rest
                .as_object_mut()
                .and_then(|m| m.remove(key))
                .unwrap_or_default();
            let mut digest = Digest::new();
            digest.field(serde_json::to_string(&value)?.as_bytes());
            Ok(digest.hex())
        };
        let template = part("template")?;
        let label_words = part("label_words")?;
        let mut task = Digest::new();
        task.field(serde_json::to_string(&rest)?.as_bytes());
        Ok(format!(
            "template:{template} label_words:{label_words} task:{} training_data:{}",
            task.hex(),
            self.file.data.train.content_digest()?
        ))
    }
}

/// Builds the method config and refuses keys the method does not know (serde would ignore them, since HF
/// adapter configs carry fields from other PEFT versions).
pub fn parse_method(table: &toml::Table, text: &str) -> Result<Box<dyn PeftMethod>> {
    if !table.contains_key("peft_type") {
        bail!("missing `peft_type` (e.g. peft_type = \"PROMPT_TUNING\")");
    }
    let method: Box<dyn PeftMethod> = match toml::Value::Table(table.clone()).try_into() {
        Ok(m) => m,
        Err(e) => {
            let msg = e.to_string().trim_end().to_string();
            // A misspelt required key shows up as a missing field: name the misspelling instead.
            if let Some(missing) = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.starts_with("missing field"))
            {
                if let Some(typo) = table.keys().find(|k| edit_distance(k, missing) <= 2) {
                    let line = line_of_key(text, "method", typo)
                        .map(|l| format!(" (line {l})"))
                        .unwrap_or_default();
                    bail!("unknown key `{typo}`{line}: did you mean `{missing}`?");
                }
            }
            bail!("{msg}");
        }
    };
    let known: BTreeSet<String> = match serde_json::to_value(&method)? {
        serde_json::Value::Object(map) => map.keys().cloned().collect(),
        _ => BTreeSet::new(),
    };
    for key in table.keys() {
        if !known.contains(key) {
            let line = line_of_key(text, "method", key)
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            bail!(
                "unknown key `{key}`{line} for peft_type {}; known keys: {}",
                table["peft_type"],
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    // A STACK's members are method tables of their own: check their keys the same way.
    if let Some(members) = table.get("adapters").and_then(|a| a.as_array()) {
        for (i, member) in members.iter().enumerate() {
            let member = member
                .as_table()
                .with_context(|| format!("adapters[{i}] must be a method table"))?;
            parse_method(member, text).with_context(|| format!("adapters[{i}]"))?;
        }
    }
    Ok(method)
}

/// Levenshtein distance, to suggest the key a typo meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The 1-based line of `key = ...` inside `[section]`, for messages.
fn line_of_key(text: &str, section: &str, key: &str) -> Option<usize> {
    let header = format!("[{section}]");
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == header;
        } else if inside {
            let name = t.split('=').next().unwrap_or("").trim().trim_matches('"');
            if name == key {
                return Some(i + 1);
            }
        }
    }
    None
}

pub(crate) fn check_task(task: &TaskSection) -> Result<()> {
    match task.kind {
        TaskKind::Classification | TaskKind::ClassificationHead => {
            let template = task
                .template
                .as_deref()
                .context("a classification task needs `template`")?;
            Template::new(template)?;
            if task.label_words.is_none() {
                bail!("a classification task needs `label_words`, e.g. {{ \"0\" = \" negative\", \"1\" = \" positive\" }}");
            }
        }
        TaskKind::CausalLm => {
            if task.template.is_some() || task.label_words.is_some() {
                bail!("`template` and `label_words` belong to classification tasks, not causal-lm");
            }
        }
        TaskKind::TokenClassification => {
            match task.labels.as_deref() {
                Some(l) if l.len() >= 2 => {}
                _ => bail!("a token-classification task needs `labels`, the tag names in class order (at least 2)"),
            }
            if task.template.is_some() || task.label_words.is_some() {
                bail!("`template` and `label_words` do not apply to token classification (the words are the input)");
            }
        }
        TaskKind::Seq2Seq => {
            if let Some(t) = task.template.as_deref() {
                Template::new(t)?;
            }
            if task.label_words.is_some() {
                bail!("`label_words` belong to classification tasks; a seq2seq target is the data's label field");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[model]
name = "smollm2-135m"

[method]
peft_type = "PROMPT_TUNING"
num_virtual_tokens = 4

[task]
kind = "classification"
template = "{text} Sentiment:"
label_words = { "0" = " negative", "1" = " positive" }

[data.train]
path = "train.tsv"
text = "sentence"
label = "label"

[data.eval]
path = "dev.tsv"
text = "sentence"
label = "label"
"#;

    fn parse(text: &str) -> Result<Experiment> {
        peft_prompt::register();
        Experiment::parse(text, Path::new("exp/x.toml"))
    }

    #[test]
    fn a_good_file_parses_with_defaults_and_relative_paths() {
        let e = parse(GOOD).unwrap();
        assert_eq!(e.file.training.max_steps, 300);
        assert_eq!(
            e.file.data.train.path.as_deref(),
            Some(Path::new("exp/train.tsv"))
        );
    }

    #[test]
    fn typos_are_named_with_their_line() {
        let misspelt_required = GOOD.replace("num_virtual_tokens", "num_virtual_token");
        let msg = format!("{:#}", parse(&misspelt_required).err().unwrap());
        assert!(
            msg.contains("`num_virtual_token` (line 7): did you mean `num_virtual_tokens`"),
            "{msg}"
        );
        let misspelt_optional = GOOD.replace("= 4", "= 4\nprompt_tuning_iint = \"TEXT\"");
        let msg = format!("{:#}", parse(&misspelt_optional).err().unwrap());
        assert!(
            msg.contains("unknown key `prompt_tuning_iint` (line 8)"),
            "{msg}"
        );
        let err = parse(&format!("{GOOD}\n[training]\nlerning_rate = 0.1\n"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("lerning_rate"), "{err:#}");
        let err = parse(&GOOD.replace("template =", "templat ="))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("templat"), "{err:#}");
    }

    #[test]
    fn an_unknown_method_is_named() {
        let err = parse(&GOOD.replace("PROMPT_TUNING", "PROMPT_TUNNING"))
            .err()
            .unwrap();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("PROMPT_TUNNING") && msg.contains("PROMPT_TUNING"),
            "{msg}"
        );
    }
}
