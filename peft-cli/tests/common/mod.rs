//! What the binary's tests share: the binary, its JSON answers and its errors, the fixtures, the toy task and
//! its experiments, and the stable part of a `peft compare` report.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

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

/// Runs the `peft` binary in the test's own working directory (for arguments that are absolute paths).
pub fn run_peft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .output()
        .expect("the peft binary runs")
}

/// Asserts success and parses stdout as the one JSON object the command prints.
pub fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

/// Asserts a failure whose message contains every `needle`, with nothing on stdout.
pub fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should have failed; stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "partial output on stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in needles {
        assert!(err.contains(n), "error does not mention {n:?}: {err}");
    }
}

/// A JSON array of token ids as `--ids` takes it: `1,2,3`.
pub fn id_list(ids: &Value) -> String {
    let ids: Vec<String> = ids
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(Value::to_string)
        .collect();
    ids.join(",")
}

/// Reads a JSON file.
pub fn read_json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
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

/// A prompt-tuning method section (8 virtual tokens) for the toy experiments.
pub const PROMPT: &str = "peft_type = \"PROMPT_TUNING\"\nnum_virtual_tokens = 8";

/// The toy classification experiment as the CLI tests train it: `exp.toml` in `dir` with `method`, trained
/// on `train_rows` for 100 steps (batch 8, learning rate 0.3, an evaluation every 20) into `dir/out`.
/// Returns its path.
pub fn toy_run(dir: &Path, method: &str, train_rows: &str) -> PathBuf {
    toy_run_of_kind(dir, method, train_rows, "classification")
}

/// `toy_run` with another task kind (`classification-head`).
pub fn toy_run_of_kind(dir: &Path, method: &str, train_rows: &str, kind: &str) -> PathBuf {
    let training = format!(
        "max_steps = 100\nbatch_size = 8\nlearning_rate = 0.3\neval_every = 20\nprogress = false\noutput_dir = \"{}\"",
        dir.join("out").display()
    );
    toy_experiment(dir, "exp.toml", method, kind, train_rows, &training)
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
                "rss_p99_bytes",
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
