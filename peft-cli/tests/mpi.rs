//! Data-parallel training under a real MPI launcher (built with `--features mpi`; `scripts/test.sh` runs this
//! where Open MPI is installed, as `.ci/run` installs it): `mpirun -np 2 peft train` gives the losses and the
//! adapter one process gives, a killed rank stops the job naming it and a restart resumes from the last
//! checkpoint, an error on one rank stops every rank, and a grid spread over two ranks reports what one
//! process reports.

#![cfg(feature = "mpi")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::{fixture, peft, stable_table, toy_experiment, write_task};
use serde_json::Value;

/// `mpirun -np <np> peft <args>` with Open MPI's settings for a test: allowed as root, launcher traffic on
/// loopback, more ranks than cores allowed.
fn mpirun_command(np: usize, args: &[&str], cwd: &Path) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["-np", &np.to_string(), env!("CARGO_BIN_EXE_peft")])
        .args(args)
        .current_dir(cwd)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    cmd
}

/// Waits for `child` at most five minutes: a job that hangs fails the test instead of stalling it.
fn wait_bounded(mut child: Child) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("waiting for mpirun").is_some() {
            return child.wait_with_output().expect("reading mpirun's output");
        }
        if started.elapsed() > Duration::from_secs(300) {
            child.kill().ok();
            panic!("mpirun did not finish within 5 minutes: a rank hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mpirun(np: usize, args: &[&str], cwd: &Path) -> Output {
    let child = mpirun_command(np, args, cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun runs (Open MPI is installed where the mpi feature builds)");
    wait_bounded(child)
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A toy classification experiment on the tiny GPT-2 whose training sentences have 3 to 7 words, so that the halves
/// of a batch pad differently; 7 examples a micro-batch (4 + 3 over two ranks), two micro-batches a step.
fn write_experiment(dir: &Path, name: &str, method: &str, extra_training: &str) -> PathBuf {
    let mut train = String::from("sentence\tlabel\n");
    for i in 0..64usize {
        let filler: Vec<String> = (0..i % 5)
            .map(|j| format!("w{}", 50 + (i * j) % 20))
            .collect();
        train += &format!(
            "w{} {} w{} {}\t{}\n",
            40 + i % 30,
            filler.join(" "),
            12 + i % 5,
            if i % 2 == 1 { "w9" } else { "w8" },
            i % 2
        );
    }
    toy_experiment(
        dir,
        &format!("{name}.toml"),
        method,
        "classification",
        &train,
        &format!("batch_size = 7\ngradient_accumulation_steps = 2\nlog_every = 1\nprogress = false\n{extra_training}"),
    )
}

/// The training losses of a run's `metrics.jsonl`, by step.
fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

fn adapter(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap()
}

/// Largest |difference| between two adapters with the same tensors.
fn adapter_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (adapter(a), adapter(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, t)| peft_core::compare::max_abs_diff(t, &b[k]).unwrap())
        .fold(0f32, f32::max)
}

#[test]
fn two_ranks_train_prompt_tuning_and_lora_as_one_process_does() {
    let dir = tempfile::tempdir().unwrap();
    for (name, method, lr) in [
        (
            "prompt",
            "peft_type = \"PROMPT_TUNING\"\nnum_virtual_tokens = 8",
            0.3,
        ),
        ("lora", "peft_type = \"LORA\"\nr = 4\nlora_alpha = 8", 0.05),
    ] {
        let exp = write_experiment(
            dir.path(),
            name,
            method,
            &format!("max_steps = 30\nlearning_rate = {lr}\neval_every = 10"),
        );
        let exp = exp.to_str().unwrap();
        let one = dir.path().join(format!("{name}-one"));
        let two = dir.path().join(format!("{name}-two"));
        assert_ok(&peft(
            &[
                "train",
                exp,
                "--no-baseline",
                "--output-dir",
                one.to_str().unwrap(),
            ],
            dir.path(),
        ));
        let out = mpirun(
            2,
            &[
                "train",
                exp,
                "--no-baseline",
                "--output-dir",
                two.to_str().unwrap(),
            ],
            dir.path(),
        );
        assert_ok(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("data-parallel over 2 processes (MPI"),
            "{stderr}"
        );
        // Rank 0 alone reports.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.matches("final adapter:").count(), 1, "{stdout}");

        let (a, b) = (losses(&one), losses(&two));
        assert_eq!(a.len(), 30);
        assert_eq!(
            a.iter().map(|x| x.0).collect::<Vec<_>>(),
            b.iter().map(|x| x.0).collect::<Vec<_>>()
        );
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x.1 - y.1).abs())
            .fold(0f64, f64::max);
        assert!(worst < 1e-5, "{name}: losses differ by {worst}");
        let diff = adapter_diff(&one.join("adapter"), &two.join("adapter"));
        assert!(diff < 1e-5, "{name}: adapters differ by {diff}");
        // The job really trained: its adapter moved away from zero-shot, and the log names both processes.
        assert!(b[29].1 < b[0].1, "{name}: {b:?}");
        let log = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
        assert!(log.contains("\"processes\":2"), "{log}");
    }
}

/// The processes mpirun started for `job` and the rank each one is.
fn ranks_of(job: u32) -> Vec<(u32, usize)> {
    let children =
        std::fs::read_to_string(format!("/proc/{job}/task/{job}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|pid| {
            let pid: u32 = pid.parse().ok()?;
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let rank = environ
                .split(|&b| b == 0)
                .find_map(|v| v.strip_prefix(b"OMPI_COMM_WORLD_RANK="))?;
            Some((pid, std::str::from_utf8(rank).ok()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_killed_rank_stops_the_job_naming_it_and_a_restart_resumes_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let exp = write_experiment(
        dir.path(),
        "long",
        "peft_type = \"LORA\"\nr = 4\nlora_alpha = 8",
        "max_steps = 1500\nlearning_rate = 0.05\nsave_every = 10",
    );
    let exp = exp.to_str().unwrap();
    let (killed, straight) = (dir.path().join("killed"), dir.path().join("straight"));
    let job = mpirun_command(
        2,
        &[
            "train",
            exp,
            "--no-baseline",
            "--output-dir",
            killed.to_str().unwrap(),
        ],
        dir.path(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let state = killed.join("checkpoint/trainer_state.json");
    let started = Instant::now();
    while !state.is_file() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let rank1 = ranks_of(job.id())
        .into_iter()
        .find(|&(_, rank)| rank == 1)
        .expect("rank 1 is a child of mpirun")
        .0;
    let killed_at = Instant::now();
    kill_9(rank1);
    let out = wait_bounded(job);
    assert!(
        killed_at.elapsed() < Duration::from_secs(60),
        "the job went on without rank 1"
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rank 1"),
        "the failure must name the rank: {stderr}"
    );
    assert!(
        !killed.join("adapter").exists(),
        "a killed job wrote a final adapter"
    );
    let checkpoint: Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let stopped_at = checkpoint["step"].as_u64().unwrap();
    assert!(
        stopped_at > 0 && stopped_at < 1500,
        "checkpoint at step {stopped_at}"
    );

    // Restarted with --resume, the job continues from that step and ends where an uninterrupted job ends.
    let resumed = mpirun(
        2,
        &[
            "train",
            exp,
            "--no-baseline",
            "--resume",
            "--output-dir",
            killed.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_ok(&resumed);
    let uninterrupted = mpirun(
        2,
        &[
            "train",
            exp,
            "--no-baseline",
            "--output-dir",
            straight.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_ok(&uninterrupted);
    let diff = adapter_diff(&killed.join("adapter"), &straight.join("adapter"));
    assert!(diff < 1e-6, "the resumed job's adapter differs by {diff}");
    let (a, b) = (losses(&killed), losses(&straight));
    let steps = |l: &[(u64, f64)]| l.iter().map(|x| x.0).collect::<Vec<_>>();
    assert_eq!(
        steps(&a),
        steps(&b),
        "the resumed job's log repeats or misses steps"
    );
    let last = |l: &[(u64, f64)]| *l.last().unwrap();
    assert_eq!(last(&a).0, 1500);
    assert!(
        (last(&a).1 - last(&b).1).abs() < 1e-6,
        "{:?} vs {:?}",
        last(&a),
        last(&b)
    );
}

/// SIGKILL, as the kernel's out-of-memory killer sends it.
fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn an_error_on_one_rank_stops_every_rank_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // Only rank 0 writes outputs: a file where its output folder should be fails rank 0 alone.
    std::fs::write(dir.path().join("blocked"), "a file, not a folder").unwrap();
    let exp = write_experiment(
        dir.path(),
        "blocked",
        "peft_type = \"PROMPT_TUNING\"\nnum_virtual_tokens = 4",
        "max_steps = 5\noutput_dir = \"blocked/out\"",
    );
    let out = mpirun(
        2,
        &["train", exp.to_str().unwrap(), "--no-baseline"],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error on rank 0 of 2"), "{stderr}");
    assert!(
        stderr.contains("blocked"),
        "the error names the path: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_grid_of_four_cells_over_two_ranks_reports_what_one_process_reports() {
    let grid_text = format!(
        r#"
[compare]
title = "toy grid over ranks"
models = ["{model}"]
tasks = ["toy.toml"]
seeds = [1, 2]
metrics = ["accuracy", "matthews"]
output_dir = "results"

[training]
max_steps = 20
batch_size = 8
log_every = 5

[[methods]]
name = "prompt"
config = {{ peft_type = "PROMPT_TUNING", num_virtual_tokens = 8 }}
training = {{ learning_rate = 0.3 }}

[[methods]]
name = "lora"
config = {{ peft_type = "LORA", r = 4, lora_alpha = 8 }}
training = {{ learning_rate = 0.05 }}
"#,
        model = fixture("tiny-gpt2"),
    );
    let run = |np: usize| {
        let dir = tempfile::tempdir().unwrap();
        write_task(dir.path());
        std::fs::write(dir.path().join("grid.toml"), &grid_text).unwrap();
        let out = if np == 1 {
            peft(&["compare", "grid.toml"], dir.path())
        } else {
            mpirun(np, &["compare", "grid.toml"], dir.path())
        };
        assert_ok(&out);
        (dir, out)
    };
    let (one, _) = run(1);
    let (two, out) = run(2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Each rank ran two of the four cells.
    assert_eq!(stderr.matches("rank 0: [").count(), 2, "{stderr}");
    assert_eq!(stderr.matches("rank 1: [").count(), 2, "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 of 4 cells done"));
    let table = stable_table(&one.path().join("results"));
    assert_eq!(table.len(), 1 + 4, "{table:?}");
    assert_eq!(stable_table(&two.path().join("results")), table);
    for f in ["report.md", "runs.csv", "loss-tiny-gpt2-toy.png"] {
        assert!(two.path().join("results").join(f).is_file(), "missing {f}");
    }
    // A rerun under mpirun reuses all four cells.
    let again = mpirun(2, &["compare", "grid.toml"], two.path());
    assert_ok(&again);
    let log = String::from_utf8_lossy(&again.stderr);
    assert_eq!(log.matches("finished earlier, reused").count(), 4, "{log}");
}
