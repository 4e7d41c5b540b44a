//! The task files under `tasks/`: every one parses; those whose dataset is on the Hugging Face hub name it (id,
//! config, split) with the development copy in `../shared/data` as their `local` override, and map the hub's
//! class indices onto exactly the labels of their `label_words`; and each local copy reads the same rows as
//! before the hub sources were added (so results on a machine with `../shared/data` do not change), every
//! label one of the task's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use peft_cli::task_file::TaskFile;
use peft_train::data::DataSource;

/// A hub dataset as a task file names it: id, config, and the splits read for training and evaluation.
struct Hub {
    id: &'static str,
    config: &'static str,
    train: &'static str,
    eval: &'static str,
}

/// What one task file must hold.
struct Expected {
    file: &'static str,
    /// The hub dataset of a converted task; `None` for a task read from its local files only.
    hub: Option<Hub>,
    /// The rows its local copy reads, (train, eval): the counts the file gave before its hub source was added.
    rows: (usize, usize),
}

const fn task(file: &'static str, hub: Option<Hub>, rows: (usize, usize)) -> Expected {
    Expected { file, hub, rows }
}

const fn hub(id: &'static str, config: &'static str, eval: &'static str) -> Option<Hub> {
    Some(Hub {
        id,
        config,
        train: "train",
        eval,
    })
}

const GLUE: &str = "nyu-mll/glue";
const SUPER_GLUE: &str = "aps/super_glue";

/// Every file in `tasks/`, in name order.
const TASKS: &[Expected] = &[
    // The template places the description apart from the title; fancyzhx/ag_news joins them in one column.
    task("agnews.toml", None, (6600, 1000)),
    task(
        "boolq.toml",
        hub(SUPER_GLUE, "boolq", "validation"),
        (2770, 500),
    ),
    task("cb.toml", hub(SUPER_GLUE, "cb", "validation"), (250, 56)),
    task("cola.toml", hub(GLUE, "cola", "validation"), (8551, 1043)),
    task(
        "copa.toml",
        hub(SUPER_GLUE, "copa", "validation"),
        (400, 100),
    ),
    task(
        "encoder-cb.toml",
        hub(SUPER_GLUE, "cb", "validation"),
        (250, 56),
    ),
    task(
        "encoder-rte.toml",
        hub(GLUE, "rte", "validation"),
        (2490, 277),
    ),
    // FewGLUE's 32-example training sets are not on the hub.
    task("fewglue-boolq.toml", None, (32, 3270)),
    task("fewglue-cb.toml", None, (32, 56)),
    task("fewglue-copa.toml", None, (32, 100)),
    task("fewglue-rte.toml", None, (32, 277)),
    task("fewglue-wic.toml", None, (32, 638)),
    // The same rows' descriptions as general text for the forgetting measurement.
    task("general-text-agnews.toml", None, (6600, 1000)),
    task("mrpc.toml", hub(GLUE, "mrpc", "validation"), (3667, 408)),
    task("rte.toml", hub(GLUE, "rte", "validation"), (2490, 277)),
    task("sst2.toml", hub(GLUE, "sst2", "validation"), (67349, 872)),
    task(
        "tinyshakespeare.toml",
        hub("karpathy/tiny_shakespeare", "default", "validation"),
        (29499, 3278),
    ),
    // CogComp/trec has no validation split: its test split (500) is the eval set, as locally.
    task(
        "trec.toml",
        hub("CogComp/trec", "default", "test"),
        (5452, 500),
    ),
    task("wic.toml", hub(SUPER_GLUE, "wic", "validation"), (438, 200)),
];

fn tasks_dir() -> PathBuf {
    peft_testing::root().join("tasks")
}

fn load(file: &str) -> TaskFile {
    let path = tasks_dir().join(file);
    TaskFile::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

/// The label values of a classification task's `label_words`, or `None` for another kind of task.
fn label_values(task: &TaskFile) -> Option<BTreeSet<String>> {
    if !task.task.kind.is_classification() {
        return None;
    }
    let words = task.task.label_words.as_ref()?;
    Some(words.labels().map(str::to_string).collect())
}

/// The path of `local` inside `../shared/data`, e.g. `glue/SST-2/train.tsv`.
fn shared_data_rel(local: &Path) -> String {
    let text = local.to_string_lossy().replace('\\', "/");
    let (_, rel) = text
        .split_once("shared/data/")
        .unwrap_or_else(|| panic!("{text} is not in ../shared/data"));
    rel.to_string()
}

/// The file a source reads on this machine: its `local` copy where it has one, else its own `path`.
fn local_file(source: &DataSource) -> &Path {
    let file = source.local.as_deref().unwrap_or(source);
    file.path.as_deref().expect("a local source names a path")
}

#[test]
fn the_table_lists_every_task_file() {
    let mut on_disk: Vec<String> = std::fs::read_dir(tasks_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = TASKS.iter().map(|t| t.file).collect();
    assert_eq!(on_disk, listed, "tasks/ and the table of this test differ");
}

#[test]
fn every_task_file_parses() {
    for expected in TASKS {
        let task = load(expected.file);
        assert!(!task.name.is_empty(), "{}", expected.file);
    }
}

#[test]
fn converted_tasks_name_the_hub_dataset_with_the_shared_copy_as_override() {
    for expected in TASKS {
        let task = load(expected.file);
        let sources = [("train", &task.data.train), ("eval", &task.data.eval)];
        let Some(hub) = &expected.hub else {
            for (which, source) in sources {
                assert!(
                    source.hub.is_none() && source.local.is_none() && source.path.is_some(),
                    "{} [data.{which}] should read its local file only",
                    expected.file
                );
            }
            continue;
        };
        for (which, source) in sources {
            let split = if which == "train" {
                hub.train
            } else {
                hub.eval
            };
            let at = format!("{} [data.{which}]", expected.file);
            assert_eq!(source.hub.as_deref(), Some(hub.id), "{at}");
            assert_eq!(source.config.as_deref(), Some(hub.config), "{at}");
            assert_eq!(source.split.as_deref(), Some(split), "{at}");
            assert!(source.path.is_none(), "{at}: a hub source names no path");
            let local = source
                .local
                .as_deref()
                .unwrap_or_else(|| panic!("{at}: no [local] copy"));
            assert!(
                local.hub.is_none(),
                "{at}: the local copy names a hub dataset"
            );
            shared_data_rel(local_file(source));
            // The hub source reads everything the hub holds; skip / limit belong to the local copy.
            assert_eq!((source.skip, source.limit), (0, None), "{at}");
        }
    }
}

#[test]
fn hub_labels_map_onto_exactly_the_task_labels() {
    for expected in TASKS.iter().filter(|t| t.hub.is_some()) {
        let task = load(expected.file);
        let Some(labels) = label_values(&task) else {
            continue;
        };
        for (which, source) in [("train", &task.data.train), ("eval", &task.data.eval)] {
            let at = format!("{} [data.{which}]", expected.file);
            assert!(source.label.is_some(), "{at}: no label column");
            // A ClassLabel column reads as "0", "1", ...: either the task's labels are those indices, or the
            // label_map renames every index to one task label, each used once.
            let indices: BTreeSet<String> = (0..labels.len()).map(|i| i.to_string()).collect();
            if source.label_map.is_empty() {
                assert_eq!(
                    labels, indices,
                    "{at}: labels are not class indices; add a label_map"
                );
            } else {
                let keys: BTreeSet<String> = source.label_map.keys().cloned().collect();
                let values: BTreeSet<String> = source.label_map.values().cloned().collect();
                assert_eq!(keys, indices, "{at}: label_map keys");
                assert_eq!(values, labels, "{at}: label_map values");
            }
        }
    }
}

#[test]
fn local_copies_read_the_same_rows_as_before() {
    for expected in TASKS {
        let task = load(expected.file);
        let labels = label_values(&task);
        let sources = [
            ("train", &task.data.train, expected.rows.0),
            ("eval", &task.data.eval, expected.rows.1),
        ];
        for (which, source, rows) in sources {
            if peft_testing::shared_data(&shared_data_rel(local_file(source))).is_none() {
                continue;
            }
            let at = format!("{} [data.{which}]", expected.file);
            let read = source.read().unwrap_or_else(|e| panic!("{at}: {e}"));
            assert_eq!(read.len(), rows, "{at}: rows");
            if let Some(labels) = &labels {
                for row in &read {
                    let label = row.label.as_deref().unwrap_or("(none)");
                    assert!(
                        labels.contains(label),
                        "{at} line {}: label {label}",
                        row.line
                    );
                }
            }
        }
    }
}

#[test]
fn the_grids_that_name_task_files_still_load() {
    let dir = peft_testing::root().join("experiments");
    let mut grids = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with("tasks = ")) {
            continue;
        }
        let grid = peft_cli::compare::grid::Grid::load(&path)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(!grid.tasks.is_empty(), "{}", path.display());
        grids += 1;
    }
    assert!(grids > 0, "no grid in {} names task files", dir.display());
}

#[test]
fn every_verbalizer_task_scores_one_token_per_label_word_on_smollm2() {
    let Some(loaded) = peft_testing::smollm2() else {
        return;
    };
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .expect("the GGUF carries its tokenizer");
    let mut checked = 0;
    for expected in TASKS {
        let task = load(expected.file);
        if task.task.kind != peft_cli::experiment::TaskKind::Classification {
            continue;
        }
        let template =
            peft_train::data::Template::new(task.task.template.clone().unwrap()).unwrap();
        let words = task.task.label_words.as_ref().unwrap();
        words
            .check_scorable(tokenizer, &template)
            .unwrap_or_else(|e| panic!("{}: {e}", expected.file));
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} verbalizer tasks");
    // The check refuses a word of several tokens, naming its tokens.
    let template = peft_train::data::Template::new("{text} Topic:").unwrap();
    let long =
        peft_train::data::Verbalizer::new([("0", " abbreviationally"), ("1", " sports")]).unwrap();
    let err = long
        .check_scorable(tokenizer, &template)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("abbreviationally") && err.contains("tokens"),
        "{err}"
    );
}
