//! Catalogue cases: training. A run that diverges stops at its first non-finite number with the last good
//! checkpoint and `best/` untouched, or is warned about when its loss climbs far above its start; an output
//! folder has one run at a time; a resume continues exactly or is refused (a changed batch size, data file
//! or template), recovering the state a kill between two renames leaves and removing what killed runs left;
//! settings that cannot train are refused before the zero-shot evaluation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::{common, refused};
use common::{peft, toy_experiment, toy_train_rows};

/// A LoRA section for the toy experiments.
const LORA_R2: &str = "peft_type = \"LORA\"\nr = 2";

/// Writes `exp.toml` in `dir`: `method` on the toy classification task trained on `rows`, with the
/// `[training]` lines `training` plus quiet progress and `out` as the output folder.
fn experiment(dir: &Path, method: &str, rows: &str, training: &str) -> PathBuf {
    let training = format!("{training}\nprogress = false\noutput_dir = \"out\"");
    toy_experiment(dir, "exp.toml", method, "classification", rows, &training)
}

/// Runs `peft train exp.toml --no-baseline` plus `extra` in `dir`.
fn train(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "exp.toml", "--no-baseline"];
    args.extend_from_slice(extra);
    peft(&args, dir)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeeded(out: &Output) {
    assert!(out.status.success(), "the run failed: {}", stderr(out));
}

/// The training records of a metrics log (those with a `loss`), without their times.
fn training_records(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.remove("elapsed_s");
            o.remove("tokens_per_s");
            r
        })
        .collect()
}

/// The number of non-finite values in every tensor of a safetensors file, which must exist.
fn non_finite_values(path: &Path) -> usize {
    let tensors: HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!tensors.is_empty(), "{} holds no tensor", path.display());
    tensors
        .values()
        .map(|t| {
            t.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .filter(|x| !x.is_finite())
                .count()
        })
        .sum()
}

fn checkpoint_step(out: &Path) -> u64 {
    let text = std::fs::read_to_string(out.join("checkpoint/trainer_state.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["step"]
        .as_u64()
        .unwrap()
}

/// The names in `dir` that start with a dot.
fn hidden_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn nan_gradient_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // At this rate the toy run's gradient overflows at step 3 (at some other rates its norms saturate and the
    // run ends finite: which one happens depends on rounding, so the rate is the one checked here).
    let training = "max_steps = 7\nbatch_size = 8\nlearning_rate = 1e10\nschedule = \"constant\"\n\
                    eval_every = 1\nsave_every = 1\nlog_every = 1";
    experiment(dir.path(), LORA_R2, &toy_train_rows(), training);
    let out_dir = dir.path().join("out");
    let out = train(dir.path(), &[]);
    refused(
        &out,
        &[
            "training stopped at step",
            "gradient norm",
            "not finite",
            "learning_rate 1e10 is likely too high",
        ],
        &[&out_dir.join("adapter")],
    );
    let err = stderr(&out);
    let bad: u64 = err
        .split("training stopped at step ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step in {err}"));
    assert!(bad > 1, "the run must have had good steps to keep: {err}");
    // The checkpoint is the last good step's, and neither it nor the best adapter holds a NaN.
    assert_eq!(checkpoint_step(&out_dir), bad - 1);
    for file in [
        "checkpoint/trainable.safetensors",
        "checkpoint/adapter_model.safetensors",
        "checkpoint/optimizer.safetensors",
        "best/adapter_model.safetensors",
    ] {
        assert_eq!(non_finite_values(&out_dir.join(file)), 0, "{file}");
    }
    let logged = training_records(&out_dir.join("metrics.jsonl"));
    assert_eq!(
        logged.last().unwrap()["step"],
        bad - 1,
        "the bad step was logged"
    );
}

#[test]
fn a_loss_climbing_far_above_its_start_is_warned_about_once() {
    let dir = tempfile::tempdir().unwrap();
    let training = "max_steps = 30\nbatch_size = 8\nlearning_rate = 1e6\nschedule = \"constant\"\n\
                    eval_every = 10\nlog_every = 1";
    experiment(
        dir.path(),
        "peft_type = \"LORA\"",
        &toy_train_rows(),
        training,
    );
    let out = train(dir.path(), &[]);
    succeeded(&out);
    let err = stderr(&out);
    assert_eq!(
        err.matches("the loss is diverging").count(),
        1,
        "one warning: {err}"
    );
    assert!(
        err.contains("learning_rate 1e6 is likely too high"),
        "{err}"
    );
    let log = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).unwrap();
    let warnings: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["warning"] == "divergence")
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    let (mean, reference) = (
        warnings[0]["loss_window_mean"].as_f64().unwrap(),
        warnings[0]["loss_reference"].as_f64().unwrap(),
    );
    assert!(mean > 2.0 * reference, "{mean} vs {reference}");
}

#[test]
fn a_second_run_on_a_locked_output_folder_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    experiment(dir.path(), LORA_R2, &toy_train_rows(), "max_steps = 2");
    let out_dir = dir.path().join("out");
    // This test process plays the first run.
    let lock = peft_core::lock::DirLock::acquire(&out_dir, "output_dir").unwrap();
    let out = train(dir.path(), &[]);
    refused(
        &out,
        &[
            &format!("in use by process {}", std::process::id()),
            "wait for that process to finish",
            "pick another output_dir",
        ],
        &[&out_dir.join("metrics.jsonl"), &out_dir.join("checkpoint")],
    );
    drop(lock);
    succeeded(&train(dir.path(), &[]));
}

/// Trains the toy LoRA in `dir` for 2 of its 4 steps (`--max-steps 2`: a checkpoint at step 2); returns the
/// log's bytes.
fn trained_halfway(dir: &Path) -> Vec<u8> {
    let training = "max_steps = 4\nbatch_size = 8\nsave_every = 2";
    experiment(dir, LORA_R2, &toy_train_rows(), training);
    succeeded(&train(dir, &["--max-steps", "2"]));
    std::fs::read(dir.join("out/metrics.jsonl")).unwrap()
}

/// Asserts that `--resume` in `dir` is refused with `needles`, leaving the log and checkpoint as they were.
fn resume_refused(dir: &Path, log_before: &[u8], needles: &[&str]) {
    let out = train(dir, &["--resume"]);
    let mut all = vec!["cannot resume", "--resume"];
    all.extend_from_slice(needles);
    refused(&out, &all, &[]);
    assert_eq!(
        std::fs::read(dir.join("out/metrics.jsonl")).unwrap(),
        log_before
    );
    assert_eq!(checkpoint_step(&dir.join("out")), 2);
}

#[test]
fn resume_after_a_batch_size_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = trained_halfway(dir.path());
    let exp = dir.path().join("exp.toml");
    let text = std::fs::read_to_string(&exp).unwrap();
    std::fs::write(&exp, text.replace("batch_size = 8", "batch_size = 4")).unwrap();
    resume_refused(dir.path(), &log, &["batch_size 8 -> 4"]);
}

#[test]
fn resume_after_a_data_file_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = trained_halfway(dir.path());
    // One label flipped: same size, same names, other content.
    let rows = toy_train_rows().replacen("\t0\n", "\t1\n", 1);
    std::fs::write(dir.path().join("train.tsv"), rows).unwrap();
    resume_refused(dir.path(), &log, &["inputs changed", "data"]);
}

#[test]
fn resume_after_a_template_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = trained_halfway(dir.path());
    let exp = dir.path().join("exp.toml");
    let text = std::fs::read_to_string(&exp).unwrap();
    std::fs::write(&exp, text.replace("{text} w3", "{text} w4")).unwrap();
    resume_refused(dir.path(), &log, &["inputs changed", "template"]);
}

#[test]
fn a_kill_between_the_two_renames_of_a_checkpoint_is_recovered_on_resume() {
    let training =
        "max_steps = 8\nbatch_size = 8\nschedule = \"constant\"\nsave_every = 2\nlog_every = 1";
    // The run as it should end.
    let straight = tempfile::tempdir().unwrap();
    experiment(straight.path(), LORA_R2, &toy_train_rows(), training);
    succeeded(&train(straight.path(), &[]));
    // A run with a checkpoint at step 2, then one at step 4 that was being renamed into place when killed:
    // `checkpoint/` moved aside as `.checkpoint.old-PID`, the complete `.checkpoint.staging-PID` not yet in.
    let dir = tempfile::tempdir().unwrap();
    experiment(dir.path(), LORA_R2, &toy_train_rows(), training);
    let out_dir = dir.path().join("out");
    succeeded(&train(dir.path(), &["--max-steps", "2"]));
    std::fs::rename(out_dir.join("checkpoint"), dir.path().join("step2")).unwrap();
    std::fs::create_dir(out_dir.join("checkpoint")).unwrap();
    for f in std::fs::read_dir(dir.path().join("step2")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), out_dir.join("checkpoint").join(f.file_name())).unwrap();
    }
    succeeded(&train(dir.path(), &["--max-steps", "4", "--resume"]));
    assert_eq!(checkpoint_step(&out_dir), 4);
    std::fs::remove_dir_all(out_dir.join("adapter")).unwrap();
    std::fs::rename(
        out_dir.join("checkpoint"),
        out_dir.join(".checkpoint.staging-999999"),
    )
    .unwrap();
    std::fs::rename(
        dir.path().join("step2"),
        out_dir.join(".checkpoint.old-999999"),
    )
    .unwrap();

    let out = train(dir.path(), &["--resume"]);
    succeeded(&out);
    let err = stderr(&out);
    assert!(
        err.contains("recovered") && err.contains(".checkpoint.staging-999999"),
        "{err}"
    );
    assert!(
        err.contains("at step 4"),
        "not resumed from the step-4 checkpoint: {err}"
    );
    assert_eq!(
        training_records(&out_dir.join("metrics.jsonl")),
        training_records(&straight.path().join("out/metrics.jsonl"))
    );
    assert_eq!(
        std::fs::read(out_dir.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(
            straight
                .path()
                .join("out/adapter/adapter_model.safetensors")
        )
        .unwrap()
    );
    assert!(
        hidden_names(&out_dir).is_empty(),
        "{:?}",
        hidden_names(&out_dir)
    );
}

#[test]
fn stale_staging_folders_of_killed_runs_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    experiment(dir.path(), LORA_R2, &toy_train_rows(), "max_steps = 2");
    let out_dir = dir.path().join("out");
    for folder in [
        ".checkpoint.staging-12345",
        ".checkpoint.old-12345",
        "..checkpoint.staging-7.staging-7",
        ".best.staging-3",
        ".adapter.old-3",
    ] {
        std::fs::create_dir_all(out_dir.join(folder)).unwrap();
        std::fs::write(out_dir.join(folder).join("adapter_config.json"), "{}").unwrap();
    }
    std::fs::write(out_dir.join(".metrics.jsonl.tmp-77"), "{\"step\":").unwrap();
    std::fs::write(out_dir.join("notes.txt"), "mine").unwrap();
    succeeded(&train(dir.path(), &[]));
    assert!(
        hidden_names(&out_dir).is_empty(),
        "{:?}",
        hidden_names(&out_dir)
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(out_dir.join("adapter/adapter_model.safetensors").is_file());
}

#[test]
fn resume_without_a_checkpoint_warns_that_the_logged_steps_are_redone() {
    let dir = tempfile::tempdir().unwrap();
    experiment(
        dir.path(),
        LORA_R2,
        &toy_train_rows(),
        "max_steps = 3\nlog_every = 1",
    );
    succeeded(&train(dir.path(), &[]));
    std::fs::remove_dir_all(dir.path().join("out/checkpoint")).unwrap();
    let out = train(dir.path(), &["--resume"]);
    succeeded(&out);
    let err = stderr(&out);
    assert!(
        err.contains("--resume found no checkpoint") && err.contains("records steps up to 3"),
        "{err}"
    );
    assert!(err.contains("starting again from step 0"), "{err}");
}

#[test]
fn a_batch_far_above_the_training_set_is_refused_before_the_zero_shot_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let rows: String = toy_train_rows()
        .lines()
        .take(5)
        .map(|l| format!("{l}\n"))
        .collect();
    experiment(dir.path(), LORA_R2, &rows, "max_steps = 2\nbatch_size = 64");
    // No --no-baseline: an empty stdout shows the zero-shot evaluation never ran.
    let out = peft(&["train", "exp.toml"], dir.path());
    refused(
        &out,
        &["batch_size 64", "far above the 4 examples", "at most 4"],
        &[&dir.path().join("out")],
    );
}

#[test]
fn max_steps_zero_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    experiment(dir.path(), LORA_R2, &toy_train_rows(), "max_steps = 0");
    let out = peft(&["train", "exp.toml"], dir.path());
    refused(&out, &["max_steps is 0"], &[&dir.path().join("out")]);
    let overridden = peft(&["train", "exp.toml", "--max-steps", "0"], dir.path());
    refused(&overridden, &["max_steps is 0"], &[&dir.path().join("out")]);
}
