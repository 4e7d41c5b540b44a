//! Catalogue cases: settings. Values in experiment files, grids and paths that used to be refused only after
//! the zero-shot evaluation (minutes on SST-2), accepted although they cannot work, or silently read another
//! way than written. Every refusal here comes before anything is evaluated or written: stdout stays empty
//! (the zero-shot line would be the first thing printed) and no output folder appears.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{fixture, peft, toy_experiment, toy_train_rows, write_task, PROMPT};
use crate::refused;

/// A toy prompt-tuning experiment in `dir` whose `[training]` section is `training` (plus the output folder
/// `dir/out`), and the output folder.
fn experiment_with(dir: &Path, training: &str) -> (PathBuf, PathBuf) {
    let out = dir.join("out");
    let training = format!(
        "{training}\nprogress = false\noutput_dir = \"{}\"",
        out.display()
    );
    let exp = toy_experiment(
        dir,
        "exp.toml",
        PROMPT,
        "classification",
        &toy_train_rows(),
        &training,
    );
    (exp, out)
}

/// Runs `peft train` on an experiment whose `[training]` section is `training`, asserting a refusal naming
/// `needles` before the zero-shot evaluation, with no output folder.
fn refused_training(training: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (exp, out) = experiment_with(dir.path(), training);
    let run = peft(&["train", exp.to_str().unwrap()], dir.path());
    refused(&run, needles, &[&out]);
}

#[test]
fn batch_size_zero_is_refused_before_the_zero_shot_evaluation() {
    refused_training("max_steps = 5\nbatch_size = 0", &["batch_size"]);
}

#[test]
fn a_nan_learning_rate_is_refused_before_the_zero_shot_evaluation() {
    refused_training("max_steps = 5\nlearning_rate = nan", &["learning_rate"]);
}

#[test]
fn a_negative_learning_rate_is_refused_before_the_zero_shot_evaluation() {
    refused_training("max_steps = 5\nlearning_rate = -0.1", &["learning_rate"]);
}

#[test]
fn a_nan_max_grad_norm_is_refused() {
    refused_training("max_steps = 5\nmax_grad_norm = nan", &["max_grad_norm"]);
}

#[test]
fn adam_betas_out_of_range_are_named_not_blamed_on_the_learning_rate() {
    refused_training(
        "max_steps = 5\n[training.optimizer]\nbeta1 = 1.5",
        &["beta1"],
    );
    refused_training(
        "max_steps = 5\n[training.optimizer]\nbeta2 = -0.1",
        &["beta2"],
    );
}

#[test]
fn max_steps_zero_is_refused_instead_of_reporting_no_metrics() {
    refused_training("max_steps = 0", &["max_steps"]);
}

#[test]
fn batch_size_far_above_the_training_set_is_refused_before_any_work() {
    refused_training("max_steps = 5\nbatch_size = 1000000", &["batch_size", "64"]);
}

/// Runs `peft train` on the toy experiment with `label_words` as its verbalizer, asserting a refusal.
fn refused_label_words(label_words: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (exp, out) = experiment_with(dir.path(), "max_steps = 5");
    let text = std::fs::read_to_string(&exp).unwrap().replace(
        r#"label_words = { "0" = " w10", "1" = " w11" }"#,
        label_words,
    );
    std::fs::write(&exp, text).unwrap();
    let run = peft(&["train", exp.to_str().unwrap()], dir.path());
    refused(&run, needles, &[&out]);
}

#[test]
fn a_label_word_of_several_tokens_is_refused_not_scored_by_its_first() {
    refused_label_words(
        r#"label_words = { "0" = " w10 w12", "1" = " w11" }"#,
        &["\" w10 w12\"", "2 tokens"],
    );
}

#[test]
fn a_label_word_the_tokenizer_does_not_know_is_refused_not_trained_as_unk() {
    refused_label_words(
        r#"label_words = { "0" = " zebra", "1" = " w11" }"#,
        &["\" zebra\"", "unknown"],
    );
}

#[test]
fn a_repeated_seed_in_a_grid_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_task(dir.path());
    let grid = dir.path().join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            "[compare]\nmodels = [\"{}\"]\ntasks = [\"toy.toml\"]\nseeds = [1, 1]\noutput_dir = \"results\"\n\n\
             [[methods]]\nname = \"zero-shot\"\nbaseline = \"zero-shot\"\n",
            fixture("tiny-gpt2")
        ),
    )
    .unwrap();
    let run = peft(&["compare", grid.to_str().unwrap()], dir.path());
    refused(&run, &["seed 1", "twice"], &[&dir.path().join("results")]);
}

/// Runs `peft` with `args` in `cwd`, failing the test if it has not finished within 30 s (a read of a pipe
/// with no writer waits for ever).
fn run_bounded(args: &[&str], cwd: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("peft {args:?} still running after 30 s: it hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Makes a named pipe at `path`.
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn an_experiment_path_that_is_a_pipe_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("exp.toml");
    mkfifo(&fifo);
    let run = run_bounded(&["train", fifo.to_str().unwrap()], dir.path());
    refused(
        &run,
        &["exp.toml", "not a regular file"],
        &[&dir.path().join("out")],
    );
}

#[test]
fn a_data_path_that_is_a_pipe_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (exp, out) = experiment_with(dir.path(), "max_steps = 5");
    let train = dir.path().join("train.tsv");
    std::fs::remove_file(&train).unwrap();
    mkfifo(&train);
    let run = run_bounded(&["train", exp.to_str().unwrap()], dir.path());
    refused(&run, &["train.tsv", "not a regular file"], &[&out]);
}

#[test]
fn a_compare_rerun_after_a_data_edit_reruns_the_cells_that_read_it() {
    let dir = tempfile::tempdir().unwrap();
    write_task(dir.path());
    let grid = dir.path().join("grid.toml");
    std::fs::write(
        &grid,
        format!(
            "[compare]\nmodels = [\"{}\"]\ntasks = [\"toy.toml\"]\nseeds = [1]\noutput_dir = \"results\"\n\n\
             [[methods]]\nname = \"zero-shot\"\nbaseline = \"zero-shot\"\n",
            fixture("tiny-gpt2")
        ),
    )
    .unwrap();
    let compare = || {
        let out = peft(&["compare", grid.to_str().unwrap()], dir.path());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    };
    assert!(!compare().contains("reused"));
    assert!(compare().contains("finished earlier, reused"));
    // The same path with other rows: the cell is no longer the one that was measured.
    let dev = dir.path().join("dev.tsv");
    let text = std::fs::read_to_string(&dev).unwrap();
    std::fs::write(&dev, text.replace("w20 ", "w21 ")).unwrap();
    let third = compare();
    assert!(
        !third.contains("reused"),
        "a cell was reused after its data changed: {third}"
    );
}
