//! `peft train` killed with SIGKILL at seeded random moments (while it starts, during steps, while it writes
//! a checkpoint every step) and resumed with `--resume` until it finishes ends exactly as an uninterrupted
//! run: the same training and evaluation records in `metrics.jsonl`, the same final and best adapter, byte
//! for byte, and no staging folder or temporary file left behind.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use common::{toy_experiment, toy_train_rows};

/// The toy LoRA experiment in `dir`: 40 steps, a checkpoint after every one, an evaluation every 10.
fn write_experiment(dir: &Path) {
    let training =
        "max_steps = 40\nbatch_size = 8\nlearning_rate = 0.01\neval_every = 10\nsave_every = 1\n\
                    log_every = 1\nprogress = false\noutput_dir = \"out\"";
    toy_experiment(
        dir,
        "exp.toml",
        "peft_type = \"LORA\"\nr = 2",
        "classification",
        &toy_train_rows(),
        training,
    );
}

/// `peft train exp.toml --no-baseline --resume` in `dir`, quiet.
fn train_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peft"));
    cmd.args(["train", "exp.toml", "--no-baseline", "--resume"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The records of a metrics log without their wall-clock fields (which differ between runs by nature).
fn records(log: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("whole lines only"))
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.remove("elapsed_s");
            o.remove("tokens_per_s");
            r
        })
        .collect()
}

/// The names in `dir` that start with a dot (staging folders, backups, temporaries, a lock file).
fn hidden_names(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_run_killed_at_random_points_and_resumed_ends_as_an_uninterrupted_one() {
    let straight = tempfile::tempdir().unwrap();
    write_experiment(straight.path());
    let started = Instant::now();
    let out = train_command(straight.path()).output().unwrap();
    let full = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The run's time in its training loop (the last record's `elapsed_s`); the rest is starting up.
    let looping = std::fs::read_to_string(straight.path().join("out/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["elapsed_s"].as_f64())
        .fold(0.0, f64::max);
    let starting = (full.as_secs_f64() - looping).max(0.0);

    let dir = tempfile::tempdir().unwrap();
    write_experiment(dir.path());
    let out_dir = dir.path().join("out");
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let (mut kills, mut mid_training, mut left_temporaries) = (0, 0, 0);
    loop {
        let mut child = train_command(dir.path()).spawn().unwrap();
        // From late in the start-up to an eighth of the training loop on: most kills land in steps or in
        // checkpoint writes (one after every step), each run gets a little further than the last. After 40
        // kills it is left to finish, so that the test's time stays bounded whatever the machine's speed.
        let delay = Duration::from_secs_f64(
            0.8 * starting + rng.random_range(0.0..1.0) * (0.2 * starting + 0.12 * looping),
        );
        let finished = if kills < 40 {
            let deadline = Instant::now() + delay;
            loop {
                if child.try_wait().unwrap().is_some() || Instant::now() >= deadline {
                    break child.try_wait().unwrap().is_some();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        } else {
            true
        };
        if finished {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "after {kills} kills: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let logged = records(&out_dir.join("metrics.jsonl")).len();
        mid_training += usize::from(logged > 0);
        left_temporaries += usize::from(
            hidden_names(&out_dir)
                .iter()
                .any(|n| n.contains(".staging-") || n.contains(".old-") || n.contains(".tmp-")),
        );
    }
    eprintln!(
        "{kills} kills ({mid_training} after training began, {left_temporaries} leaving a staging folder or \
         temporary behind)"
    );
    assert!(
        mid_training > 0,
        "no kill landed during training ({kills} kills)"
    );

    let (a, b) = (straight.path().join("out"), out_dir);
    assert_eq!(
        records(&b.join("metrics.jsonl")),
        records(&a.join("metrics.jsonl"))
    );
    for file in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "best/adapter_model.safetensors",
        "checkpoint/trainable.safetensors",
        "checkpoint/optimizer.safetensors",
    ] {
        assert_eq!(
            std::fs::read(b.join(file)).unwrap(),
            std::fs::read(a.join(file)).unwrap(),
            "{file} differs from the uninterrupted run's"
        );
    }
    assert_eq!(hidden_names(&b), Vec::<String>::new());
}
