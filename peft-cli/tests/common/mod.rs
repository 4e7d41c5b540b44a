//! What the `peft compare` tests share: the binary, the fixtures, the toy task and the stable part of a report.

#![allow(dead_code)] // each test file uses its own part

use std::path::Path;
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

/// The toy task (label w1 when the sentence holds w9) as a task file, with its data.
pub fn write_task(dir: &Path) {
    let mut train = String::from("sentence\tlabel\n");
    for i in 0..64 {
        train += &format!(
            "w{} w{} {}\t{}\n",
            40 + i % 30,
            12 + i % 5,
            if i % 2 == 1 { "w9" } else { "w8" },
            i % 2
        );
    }
    let mut dev = String::from("sentence\tlabel\n");
    for i in 0..16 {
        dev += &format!(
            "w{} w{} {}\t{}\n",
            20 + i,
            30 + i % 7,
            if i % 2 == 1 { "w9" } else { "w8" },
            i % 2
        );
    }
    std::fs::write(dir.join("train.tsv"), train).unwrap();
    std::fs::write(dir.join("dev.tsv"), dev).unwrap();
    std::fs::write(
        dir.join("toy.toml"),
        r#"
name = "toy"
metric = "accuracy"

[task]
kind = "classification"
template = "{text} w3"
label_words = { "0" = " w10", "1" = " w11" }

[data.train]
path = "train.tsv"
text = "sentence"
label = "label"

[data.eval]
path = "dev.tsv"
text = "sentence"
label = "label"
"#,
    )
    .unwrap();
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
