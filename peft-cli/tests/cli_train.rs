//! `peft train` end to end on the toy classification task and the tiny GPT-2: complete outputs with no
//! temporaries left, the trained adapter evaluating the same through `peft eval`, a trained classification
//! head saved and reloaded, a stack of methods, and plain progress lines when stderr is not a terminal.

mod common;

use common::{
    fails_with, fixture, ok_json, read_json, run_peft, toy_experiment, toy_run, toy_run_of_kind,
    toy_train_rows, PROMPT,
};

#[test]
fn train_runs_end_to_end_and_writes_complete_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let exp = toy_run(dir.path(), PROMPT, &toy_train_rows());
    let out = run_peft(&["train", exp.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("dev before training (zero-shot, frozen model): accuracy"),
        "{stdout}"
    );
    assert!(stdout.contains("dev after 100 steps: accuracy"), "{stdout}");
    let after = stdout
        .lines()
        .find(|l| l.starts_with("accuracy: "))
        .expect("a before -> after line");
    let final_acc: f64 = after.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(final_acc >= 0.8, "the toy task was not learned: {after}");
    for f in [
        "metrics.jsonl",
        "adapter/adapter_model.safetensors",
        "best/adapter_config.json",
        "checkpoint/trainer_state.json",
    ] {
        assert!(dir.path().join("out").join(f).is_file(), "missing {f}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
    // The trained adapter evaluates to the same accuracy through `peft eval`.
    let adapter = dir.path().join("out/adapter");
    let metrics = ok_json(&run_peft(&[
        "eval",
        exp.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ]));
    assert!((metrics["accuracy"].as_f64().unwrap() - final_acc).abs() < 1e-9);
}

#[test]
fn p_tuning_v2_trains_a_classification_head_that_is_saved_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let method = "peft_type = \"PREFIX_TUNING\"\nnum_virtual_tokens = 4";
    let exp = toy_run_of_kind(dir.path(), method, &toy_train_rows(), "classification-head");
    let text = std::fs::read_to_string(&exp)
        .unwrap()
        .replace("learning_rate = 0.3", "learning_rate = 0.05");
    std::fs::write(&exp, text).unwrap();
    let out = run_peft(&["train", exp.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The baseline of a head task is the verbalizer's zero-shot accuracy.
    assert!(
        stdout.contains("dev before training (zero-shot, frozen model)"),
        "{stdout}"
    );
    let after = stdout
        .lines()
        .find(|l| l.starts_with("accuracy: "))
        .expect("a before -> after line");
    let final_acc: f64 = after.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        final_acc >= 0.8,
        "the toy task was not learned with a head: {after}"
    );
    let adapter = dir.path().join("out/adapter");
    let config = read_json(adapter.join("adapter_config.json").to_str().unwrap());
    assert_eq!(config["task_type"], "SEQ_CLS");
    let inspect = ok_json(&run_peft(&[
        "inspect",
        "--model",
        &fixture("tiny-gpt2"),
        "--adapter",
        adapter.to_str().unwrap(),
    ]));
    // 4 virtual tokens x 2 layers x (key + value) x 32, plus the [2, 32] head.
    assert_eq!(inspect["trainable_parameters"], 4 * 2 * 2 * 32 + 2 * 32);
    let metrics = ok_json(&run_peft(&[
        "eval",
        exp.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ]));
    assert!((metrics["accuracy"].as_f64().unwrap() - final_acc).abs() < 1e-9);
}

#[test]
fn a_stack_of_methods_trains_and_its_members_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let stack = "peft_type = \"STACK\"\n\n[[method.adapters]]\npeft_type = \"PROMPT_TUNING\"\n\
                 num_virtual_tokens = 4\n\n[[method.adapters]]\npeft_type = \"LORA\"\nr = 2";
    let exp = toy_run(dir.path(), stack, &toy_train_rows());
    let text = std::fs::read_to_string(&exp)
        .unwrap()
        .replace("max_steps = 100", "max_steps = 10")
        .replace("learning_rate = 0.3", "learning_rate = 0.05");
    std::fs::write(&exp, &text).unwrap();
    let inspect = ok_json(&run_peft(&[
        "inspect",
        "--model",
        &fixture("tiny-gpt2"),
        "--experiment",
        exp.to_str().unwrap(),
    ]));
    // Prompt 4 x 32, plus LoRA r=2 on both layers' c_attn (32 -> 96): 2 x (2 x 32 + 96 x 2).
    assert_eq!(
        inspect["trainable_parameters"],
        4 * 32 + 2 * (2 * 32 + 96 * 2)
    );
    let out = run_peft(&["train", exp.to_str().unwrap(), "--no-baseline"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = read_json(
        dir.path()
            .join("out/adapter/adapter_config.json")
            .to_str()
            .unwrap(),
    );
    assert_eq!(saved["peft_type"], "STACK");
    assert_eq!(saved["adapters"][1]["peft_type"], "LORA");
    // A typo inside a member is refused by name before anything runs.
    std::fs::write(&exp, text.replace("r = 2", "rr = 2")).unwrap();
    fails_with(
        &run_peft(&["train", exp.to_str().unwrap()]),
        &["adapters[1]", "unknown key `rr`"],
    );
}

#[test]
fn train_prints_plain_progress_lines_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let training = format!(
        "max_steps = 4\nlog_every = 2\nbatch_size = 8\nlearning_rate = 0.3\noutput_dir = \"{}\"",
        dir.path().join("out").display()
    );
    let exp = toy_experiment(
        dir.path(),
        "exp.toml",
        PROMPT,
        "classification",
        &toy_train_rows(),
        &training,
    );
    // The test captures stderr, so it is no terminal: the bar is hidden and the plain lines stand in.
    let out = run_peft(&["train", exp.to_str().unwrap(), "--no-baseline"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("step ") && l.contains(" tok/s "))
        .collect();
    assert_eq!(lines.len(), 2, "one line per training record: {stderr}");
    let log = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r.get("loss").is_some())
        .collect();
    assert_eq!(records.len(), 2, "{log}");
    for (line, record) in lines.iter().zip(&records) {
        let step = record["step"].as_u64().unwrap();
        // The line shows the record's own loss and tokens/s.
        let head = format!(
            "step {step}/4  loss {:.4}  {:.0} tok/s  elapsed ",
            record["loss"].as_f64().unwrap(),
            record["tokens_per_s"].as_f64().unwrap()
        );
        assert!(line.starts_with(&head), "{line:?} should start {head:?}");
        assert!(line.contains("  left ~"), "no time left in {line:?}");
    }
    assert!(lines[1].ends_with("left ~0s"), "{}", lines[1]);
}
