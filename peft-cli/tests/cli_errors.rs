//! Bad input gets a clear error naming the problem, with nothing on stdout and no partial output folder: bad
//! experiment files, missing or corrupt models, mismatched adapters, prompts too long, a LoRA target the
//! model lacks, and a one-process command started as one of several processes.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fails_with, fixture, ok_json, run_peft, toy_run, toy_train_rows, PROMPT};

#[test]
fn bad_experiments_fail_before_training_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let run = |exp: &Path| run_peft(&["train", exp.to_str().unwrap()]);

    let exp = toy_run(
        p,
        "peft_type = \"PROMPT_TUNNING\"\nnum_virtual_tokens = 4",
        &toy_train_rows(),
    );
    fails_with(&run(&exp), &["PROMPT_TUNNING", "PROMPT_TUNING"]);

    let exp = toy_run(
        p,
        "peft_type = \"PROMPT_TUNING\"\nnum_virtual_token = 4",
        &toy_train_rows(),
    );
    fails_with(&run(&exp), &["num_virtual_token", "num_virtual_tokens"]);

    let text = std::fs::read_to_string(toy_run(p, PROMPT, &toy_train_rows())).unwrap();
    std::fs::write(
        p.join("typo.toml"),
        text.replace("batch_size", "bacth_size"),
    )
    .unwrap();
    fails_with(&run(&p.join("typo.toml")), &["bacth_size"]);

    let exp = toy_run(p, PROMPT, "sentence\tlabel\n");
    fails_with(&run(&exp), &["no examples", "train.tsv"]);

    let exp = toy_run(p, PROMPT, "sentence\tlabel\nw1 w2\t0\nw3 w4\t7\n");
    fails_with(&run(&exp), &["7", "label"]);
    assert!(
        !p.join("out").exists(),
        "a failed run left an output folder"
    );
}

#[test]
fn bad_models_adapters_and_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        &run_peft(&["logits", "--model", "/no/such/model.gguf", "--ids", "1"]),
        &["/no/such/model.gguf"],
    );

    let corrupt = dir.path().join("broken.gguf");
    std::fs::write(&corrupt, b"GGUF but not really").unwrap();
    fails_with(
        &run_peft(&["logits", "--model", corrupt.to_str().unwrap(), "--ids", "1"]),
        &["broken.gguf"],
    );

    let folder = dir.path().join("model");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(fixture("tiny-gpt2/config.json"), folder.join("config.json")).unwrap();
    std::fs::write(folder.join("model.safetensors"), b"truncated").unwrap();
    fails_with(
        &run_peft(&["logits", "--model", folder.to_str().unwrap(), "--ids", "1"]),
        &["model.safetensors"],
    );

    // An adapter made for another model: both shapes are named.
    let out = run_peft(&[
        "logits",
        "--model",
        &fixture("tiny-gpt2"),
        "--adapter",
        &fixture("adapters/hf-smollm2-text"),
        "--ids",
        "1,2",
    ]);
    fails_with(&out, &["576", "32"]);

    // Another base model's name with fitting shapes is only a warning.
    let out = run_peft(&[
        "logits",
        "--model",
        &fixture("tiny-gpt2"),
        "--adapter",
        &fixture("adapters/hf-tiny-llama-random"),
        "--ids",
        "1,2",
    ]);
    ok_json(&out);
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains("warning") && warning.contains("`tiny-llama`"),
        "{warning}"
    );

    // No tokenizer.json: --text is refused, --ids works.
    fails_with(
        &run_peft(&[
            "logits",
            "--model",
            &fixture("tiny-llama"),
            "--text",
            "hello",
        ]),
        &["tokenizer.json", "--ids"],
    );

    // A prompt longer than the context (64 positions).
    let long: Vec<String> = (0..70).map(|i| (i % 90).to_string()).collect();
    fails_with(
        &run_peft(&[
            "logits",
            "--model",
            &fixture("tiny-gpt2"),
            "--ids",
            &long.join(","),
        ]),
        &["context", "64"],
    );
    let sixty: Vec<String> = (0..62).map(|i| (i % 90).to_string()).collect();
    let out = run_peft(&[
        "logits",
        "--model",
        &fixture("tiny-gpt2"),
        "--adapter",
        &fixture("adapters/hf-tiny-gpt2-random"),
        "--ids",
        &sixty.join(","),
    ]);
    fails_with(&out, &["5 positions", "context of 64"]);

    fails_with(
        &run_peft(&["logits", "--model", &fixture("tiny-gpt2"), "--ids", "1,500"]),
        &["500", "vocabulary"],
    );
    fails_with(
        &run_peft(&["fetch", "no-such-model"]),
        &["no-such-model", "smollm2-135m"],
    );
}

#[test]
fn a_lora_target_the_model_lacks_is_named_with_the_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let lora = "peft_type = \"LORA\"\nr = 4\ntarget_modules = [\"q_proj\"]";
    let exp = toy_run(dir.path(), lora, &toy_train_rows());
    fails_with(
        &run_peft(&["train", exp.to_str().unwrap()]),
        &["q_proj", "c_attn"],
    );
    assert!(
        !dir.path().join("out").exists(),
        "a failed run left outputs"
    );
}

#[test]
fn several_processes_need_the_mpi_build_and_one_process_commands_refuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let exp = toy_run(dir.path(), PROMPT, &toy_train_rows());
    // What `mpirun -np 2` puts in each process's environment (Open MPI's name for the job size).
    let as_rank_of_two = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_peft"))
            .args(args)
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .output()
            .unwrap()
    };
    fails_with(
        &as_rank_of_two(&["inspect", "--model", &fixture("tiny-gpt2")]),
        &["`peft inspect` runs in one process", "one of 2"],
    );
    #[cfg(not(feature = "mpi"))]
    {
        fails_with(
            &as_rank_of_two(&["train", exp.to_str().unwrap()]),
            &["one of 2 processes", "without MPI", "--features mpi"],
        );
        assert!(
            !dir.path().join("out").exists(),
            "a refused run wrote output"
        );
    }
    let _ = exp;
}

#[test]
fn a_hub_dataset_is_read_from_the_cache_and_an_uncached_one_is_refused_before_the_model_loads() {
    use peft_train::data::testing::{write_parquet, Column};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let hub = p.join("hf-cache");
    let endpoint = peft_train::data::testing::refusing_endpoint();
    let exp = toy_run(p, PROMPT, &toy_train_rows());
    let text = std::fs::read_to_string(&exp).unwrap().replace(
        "[data.train]\npath = \"train.tsv\"",
        "[data.train]\nhub = \"org/toy\"\nconfig = \"default\"\nsplit = \"train\"",
    );
    std::fs::write(&exp, text.replace("max_steps = 100", "max_steps = 2")).unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_peft"))
            .args(["train", exp.to_str().unwrap(), "--no-baseline"])
            .env("HF_HUB_CACHE", &hub)
            .env("HF_ENDPOINT", &endpoint)
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap()
    };
    let start = std::time::Instant::now();
    fails_with(
        &run(),
        &[
            "org/toy (config default, split train) is not in the local Hugging Face cache",
            "peft fetch org/toy --config default",
        ],
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    assert!(
        !p.join("out").exists(),
        "a refused run left an output folder"
    );

    // The same rows as a Parquet file where `datasets`' push_to_hub puts a default config's split.
    let split = hub.join("datasets--org--toy/snapshots/0123abc/data");
    std::fs::create_dir_all(&split).unwrap();
    let rows: Vec<(String, i64)> = toy_train_rows()
        .lines()
        .skip(1)
        .map(|l| {
            let (s, label) = l.split_once('\t').unwrap();
            (s.to_string(), label.trim().parse().unwrap())
        })
        .collect();
    write_parquet(
        &split.join("train-00000-of-00001.parquet"),
        &[
            (
                "sentence",
                Column::Text(rows.iter().map(|r| r.0.clone()).collect()),
            ),
            ("label", Column::Int(rows.iter().map(|r| r.1).collect())),
        ],
    );
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{} training examples", rows.len())),
        "{err}"
    );
}
