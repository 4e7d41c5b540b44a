//! What the binary's tests share: the binary, the fixtures, the toy task and its experiments, and the stable
//! part of a `peft compare` report.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A path under the workspace's `fixtures/`.
pub fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
        .display()
        .to_string()
}

/// Runs the `peft` binary in `cwd`.
pub fn peft(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running peft")
}

/// The toy task's 64 training rows (label 1 when the sentence holds w9), with the header.
pub fn toy_train_rows() -> String {
    let mut rows = String::from("sentence\tlabel\n");
    for i in 0..64 {
        rows += &format!(
            "w{} w{} {}\t{}\n",
            40 + i % 30,
            12 + i % 5,
            if i % 2 == 1 { "w9" } else { "w8" },
            i % 2
        );
    }
    rows
}

/// The toy task's 16 dev rows, with the header.
fn toy_dev_rows() -> String {
    let mut rows = String::from("sentence\tlabel\n");
    for i in 0..16 {
        rows += &format!(
            "w{} w{} {}\t{}\n",
            20 + i,
            30 + i % 7,
            if i % 2 == 1 { "w9" } else { "w8" },
            i % 2
        );
    }
    rows
}

/// The toy task's `[task]` and `[data.*]` sections as a task of `kind` (verbalizer w10 / w11 after w3), over
/// `train.tsv` and `dev.tsv`.
fn toy_task_sections(kind: &str) -> String {
    format!(
        r#"
[task]
kind = "{kind}"
template = "{{text}} w3"
label_words = {{ "0" = " w10", "1" = " w11" }}

[data.train]
path = "train.tsv"
text = "sentence"
label = "label"

[data.eval]
path = "dev.tsv"
text = "sentence"
label = "label"
"#
    )
}

/// The toy task as a task file (`toy.toml`), with its data.
pub fn write_task(dir: &Path) {
    std::fs::write(dir.join("train.tsv"), toy_train_rows()).unwrap();
    std::fs::write(dir.join("dev.tsv"), toy_dev_rows()).unwrap();
    std::fs::write(
        dir.join("toy.toml"),
        format!(
            "name = \"toy\"\nmetric = \"accuracy\"\n{}",
            toy_task_sections("classification")
        ),
    )
    .unwrap();
}

/// Writes the experiment file `name` in `dir`: `method` on the tiny GPT-2, the toy task of `kind` trained on
/// `train_rows` (written as `train.tsv`, beside the toy dev set) and `training` as its `[training]` section.
/// Returns its path.
pub fn toy_experiment(
    dir: &Path,
    name: &str,
    method: &str,
    kind: &str,
    train_rows: &str,
    training: &str,
) -> PathBuf {
    std::fs::write(dir.join("train.tsv"), train_rows).unwrap();
    std::fs::write(dir.join("dev.tsv"), toy_dev_rows()).unwrap();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[model]\nname = \"{model}\"\n\n[method]\n{method}\n{task}\n[training]\n{training}\n",
            model = fixture("tiny-gpt2"),
            task = toy_task_sections(kind),
        ),
    )
    .unwrap();
    path
}

/// `runs.csv` without the columns that are times or memory (which differ between runs by nature).
pub fn stable_table(results: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_path(results.join("runs.csv")).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let keep: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            ![
                "peak_rss_bytes",
                "step_time_median_s",
                "tokens_per_s",
                "train_seconds",
                "eval_seconds",
                "latency_ms",
                "base_latency_ms",
            ]
            .contains(&h.as_str())
        })
        .map(|(i, _)| i)
        .collect();
    let mut rows = vec![keep.iter().map(|&i| header[i].clone()).collect()];
    for r in reader.records() {
        let r = r.unwrap();
        rows.push(keep.iter().map(|&i| r[i].to_string()).collect());
    }
    rows
}
