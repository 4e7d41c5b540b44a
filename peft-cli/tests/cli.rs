//! The `peft` binary as a user runs it: the exact JSON of `peft logits`, adapters, training end to end on a
//! tiny model, and a clear error with no partial output for each kind of bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::toy_train_rows;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(rel: &str) -> String {
    root()
        .join("fixtures")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

fn peft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .output()
        .expect("the peft binary runs")
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

/// Asserts a failure whose message contains every `needle`, with nothing on stdout.
fn fails_with(out: &Output, needles: &[&str]) {
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

fn read_json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks `peft logits` output against full reference logits of the last position.
fn check_top_k(json: &Value, reference: &[f64], k: usize) {
    let top = json["top_k"].as_array().unwrap();
    assert_eq!(top.len(), k);
    let mut order: Vec<usize> = (0..reference.len()).collect();
    order.sort_by(|&a, &b| reference[b].total_cmp(&reference[a]));
    for (i, pair) in top.iter().enumerate() {
        let (id, logit) = (
            pair[0].as_u64().unwrap() as usize,
            pair[1].as_f64().unwrap(),
        );
        assert!(
            (logit - reference[id]).abs() < 1e-4,
            "id {id}: {logit} vs {}",
            reference[id]
        );
        assert_eq!(id, order[i], "rank {i}");
        if i > 0 {
            assert!(
                top[i - 1][1].as_f64().unwrap() >= logit,
                "not sorted by logit"
            );
        }
    }
}

fn last_row(v: &Value) -> Vec<f64> {
    let rows = v.as_array().unwrap();
    rows.last()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn logits_prints_the_documented_json_and_matches_transformers() {
    let reference = read_json(&fixture("tiny-gpt2/logits.json"));
    let case = &reference["cases"][0];
    assert_eq!(case["name"], "single");
    let ids: Vec<String> = case["input_ids"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let out = peft(&[
        "logits",
        "--model",
        &fixture("tiny-gpt2"),
        "--ids",
        &ids.join(","),
        "--top-k",
        "7",
    ]);
    let json = ok_json(&out);
    assert_eq!(json["input_ids"], case["input_ids"][0]);
    check_top_k(&json, &last_row(&case["logits"][0]), 7);

    // --text goes through the folder's tokenizer.json; the default is 20 logits.
    let json = ok_json(&peft(&[
        "logits",
        "--model",
        &fixture("tiny-gpt2"),
        "--text",
        "w5 w17 w42",
    ]));
    assert_eq!(json["input_ids"], serde_json::json!([5, 17, 42]));
    assert_eq!(json["top_k"].as_array().unwrap().len(), 20);
}

#[test]
fn logits_with_an_hf_peft_adapter_match_hf_peft() {
    let dir = fixture("adapters/hf-tiny-llama-random");
    let reference = read_json(&format!("{dir}/logits.json"));
    let case = &reference["cases"][0];
    let ids: Vec<String> = case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let out = peft(&[
        "logits",
        "--model",
        &fixture("tiny-llama"),
        "--adapter",
        &dir,
        "--ids",
        &ids.join(","),
    ]);
    let json = ok_json(&out);
    // Virtual tokens are not listed among the input ids.
    assert_eq!(json["input_ids"], case["input_ids"]);
    let full: Vec<f64> = case["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    check_top_k(&json, &full, 20);
}

#[test]
fn smollm2_logits_from_the_gguf_match_transformers() {
    let Some(gguf) = peft_models_cached_smollm2() else {
        eprintln!("skipping: SmolLM2-135M is not in the zoo cache (run `peft fetch smollm2-135m`)");
        return;
    };
    let reference = read_json(&fixture("smollm2/logits.json"));
    for case in reference["cases"].as_array().unwrap().iter().take(3) {
        let text = case["text"].as_str().unwrap();
        let json = ok_json(&peft(&["logits", "--model", &gguf, "--text", text]));
        assert_eq!(
            json["input_ids"], case["input_ids"],
            "input ids of {text:?}"
        );
        for (ours, theirs) in json["top_k"]
            .as_array()
            .unwrap()
            .iter()
            .zip(case["top"].as_array().unwrap())
        {
            let diff = (ours[1].as_f64().unwrap() - theirs[1].as_f64().unwrap()).abs();
            assert!(diff < 1e-3, "{text:?}: {ours} vs {theirs}");
            // Ids must agree except between near-ties.
            if ours[0] != theirs[0] {
                assert!(diff < 1e-3, "{text:?}: different ids {ours} vs {theirs}");
            }
        }
    }
}

/// The SmolLM2 GGUF, from `PEFT_SMOLLM2_GGUF` or the zoo cache.
fn peft_models_cached_smollm2() -> Option<String> {
    peft_models::zoo::local_path("smollm2-135m", "PEFT_SMOLLM2_GGUF")
        .map(|p| p.to_string_lossy().into_owned())
}

#[test]
fn inspect_counts_parameters_like_transformers() {
    let json = ok_json(&peft(&["inspect", "--model", &fixture("tiny-gpt2")]));
    assert_eq!(
        json["total_parameters"],
        read_json(&fixture("tiny-gpt2/logits.json"))["num_parameters"]
    );
    assert_eq!(json["architecture"], "gpt2");
    let json = ok_json(&peft(&[
        "inspect",
        "--model",
        &fixture("tiny-llama"),
        "--adapter",
        &fixture("adapters/hf-tiny-llama-random"),
    ]));
    assert_eq!(json["trainable_parameters"], 5 * 32);
    assert_eq!(json["method"], "PROMPT_TUNING");
    assert!(json["adapter_file_bytes"].as_u64().unwrap() > 5 * 32 * 4);
}

#[test]
fn generate_is_greedy_and_repeatable() {
    let args = [
        "generate",
        "--model",
        &fixture("tiny-gpt2"),
        "--prompt",
        "w1 w2 w3",
        "--max-new-tokens",
        "4",
    ];
    let a = peft(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let text = String::from_utf8_lossy(&a.stdout).into_owned();
    assert!(
        text.starts_with("w1 w2 w3") && text.trim().len() > "w1 w2 w3".len(),
        "{text}"
    );
    assert_eq!(peft(&args).stdout, a.stdout);
    let sampled = peft(
        &[
            &args[..],
            &["--temperature", "1.5", "--top-p", "0.9", "--seed", "3"],
        ]
        .concat(),
    );
    assert!(sampled.status.success());
}

/// Writes a toy classification task on the tiny GPT-2 (label w1 when the sentence holds w9) and its
/// experiment file; returns the experiment path.
fn toy_experiment(dir: &Path, method: &str, train_rows: &str) -> PathBuf {
    toy_experiment_of_kind(dir, method, train_rows, "classification")
}

/// The toy experiment with another task kind (`classification-head`).
fn toy_experiment_of_kind(dir: &Path, method: &str, train_rows: &str, kind: &str) -> PathBuf {
    let training = format!(
        "max_steps = 100\nbatch_size = 8\nlearning_rate = 0.3\neval_every = 20\nprogress = false\noutput_dir = \"{}\"",
        dir.join("out").display()
    );
    common::toy_experiment(dir, "exp.toml", method, kind, train_rows, &training)
}

const PROMPT: &str = "peft_type = \"PROMPT_TUNING\"\nnum_virtual_tokens = 8";

#[test]
fn train_runs_end_to_end_and_writes_complete_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let exp = toy_experiment(dir.path(), PROMPT, &toy_train_rows());
    let out = peft(&["train", exp.to_str().unwrap()]);
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
    let metrics = ok_json(&peft(&[
        "eval",
        exp.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ]));
    assert!((metrics["accuracy"].as_f64().unwrap() - final_acc).abs() < 1e-9);
}

#[test]
fn bad_experiments_fail_before_training_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let run = |exp: &Path| peft(&["train", exp.to_str().unwrap()]);

    let exp = toy_experiment(
        p,
        "peft_type = \"PROMPT_TUNNING\"\nnum_virtual_tokens = 4",
        &toy_train_rows(),
    );
    fails_with(&run(&exp), &["PROMPT_TUNNING", "PROMPT_TUNING"]);

    let exp = toy_experiment(
        p,
        "peft_type = \"PROMPT_TUNING\"\nnum_virtual_token = 4",
        &toy_train_rows(),
    );
    fails_with(&run(&exp), &["num_virtual_token", "num_virtual_tokens"]);

    let text = std::fs::read_to_string(toy_experiment(p, PROMPT, &toy_train_rows())).unwrap();
    std::fs::write(
        p.join("typo.toml"),
        text.replace("batch_size", "bacth_size"),
    )
    .unwrap();
    fails_with(&run(&p.join("typo.toml")), &["bacth_size"]);

    let exp = toy_experiment(p, PROMPT, "sentence\tlabel\n");
    fails_with(&run(&exp), &["no examples", "train.tsv"]);

    let exp = toy_experiment(p, PROMPT, "sentence\tlabel\nw1 w2\t0\nw3 w4\t7\n");
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
        &peft(&["logits", "--model", "/no/such/model.gguf", "--ids", "1"]),
        &["/no/such/model.gguf"],
    );

    let corrupt = dir.path().join("broken.gguf");
    std::fs::write(&corrupt, b"GGUF but not really").unwrap();
    fails_with(
        &peft(&["logits", "--model", corrupt.to_str().unwrap(), "--ids", "1"]),
        &["broken.gguf"],
    );

    let folder = dir.path().join("model");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        root().join("fixtures/tiny-gpt2/config.json"),
        folder.join("config.json"),
    )
    .unwrap();
    std::fs::write(folder.join("model.safetensors"), b"truncated").unwrap();
    fails_with(
        &peft(&["logits", "--model", folder.to_str().unwrap(), "--ids", "1"]),
        &["model.safetensors"],
    );

    // An adapter made for another model: both shapes are named.
    let out = peft(&[
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
    let out = peft(&[
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
        &peft(&[
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
        &peft(&[
            "logits",
            "--model",
            &fixture("tiny-gpt2"),
            "--ids",
            &long.join(","),
        ]),
        &["context", "64"],
    );
    let sixty: Vec<String> = (0..62).map(|i| (i % 90).to_string()).collect();
    let out = peft(&[
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
        &peft(&["logits", "--model", &fixture("tiny-gpt2"), "--ids", "1,500"]),
        &["500", "vocabulary"],
    );
    fails_with(
        &peft(&["fetch", "no-such-model"]),
        &["no-such-model", "smollm2-135m"],
    );
}

#[test]
fn causal_lm_training_lowers_held_out_perplexity() {
    let dir = tempfile::tempdir().unwrap();
    // A corpus with a fixed cycle of words: learnable, and the held-out file follows the same pattern.
    let cycle: Vec<String> = (0..12).map(|i| format!("w{}", 10 + (i * 7) % 12)).collect();
    let line = cycle.join(" ");
    let doc = |n: usize| -> String {
        (0..n)
            .map(|_| format!("{{\"text\": \"{line}\"}}\n"))
            .collect()
    };
    std::fs::write(dir.path().join("train.jsonl"), doc(40)).unwrap();
    std::fs::write(dir.path().join("dev.jsonl"), doc(8)).unwrap();
    let exp = format!(
        r#"
[model]
name = "{model}"
[method]
peft_type = "PROMPT_TUNING"
num_virtual_tokens = 8
[task]
kind = "causal-lm"
block_size = 24
[data.train]
path = "train.jsonl"
text = "text"
[data.eval]
path = "dev.jsonl"
text = "text"
[training]
max_steps = 150
batch_size = 4
learning_rate = 0.3
progress = false
output_dir = "{out}"
"#,
        model = fixture("tiny-gpt2"),
        out = dir.path().join("out").display()
    );
    std::fs::write(dir.path().join("exp.toml"), exp).unwrap();
    let out = peft(&["train", dir.path().join("exp.toml").to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("loss: "))
        .expect("a before -> after line");
    let parts: Vec<f64> = line
        .trim_start_matches("loss: ")
        .split(" -> ")
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        parts[1] < parts[0] * 0.8,
        "held-out loss did not fall: {line}"
    );
    assert!(stdout.contains("perplexity"), "{stdout}");
}

#[test]
fn p_tuning_v2_trains_a_classification_head_that_is_saved_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let method = "peft_type = \"PREFIX_TUNING\"\nnum_virtual_tokens = 4";
    let exp = toy_experiment_of_kind(dir.path(), method, &toy_train_rows(), "classification-head");
    let text = std::fs::read_to_string(&exp)
        .unwrap()
        .replace("learning_rate = 0.3", "learning_rate = 0.05");
    std::fs::write(&exp, text).unwrap();
    let out = peft(&["train", exp.to_str().unwrap()]);
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
    let inspect = ok_json(&peft(&[
        "inspect",
        "--model",
        &fixture("tiny-gpt2"),
        "--adapter",
        adapter.to_str().unwrap(),
    ]));
    // 4 virtual tokens x 2 layers x (key + value) x 32, plus the [2, 32] head.
    assert_eq!(inspect["trainable_parameters"], 4 * 2 * 2 * 32 + 2 * 32);
    let metrics = ok_json(&peft(&[
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
    let exp = toy_experiment(dir.path(), stack, &toy_train_rows());
    let text = std::fs::read_to_string(&exp)
        .unwrap()
        .replace("max_steps = 100", "max_steps = 10")
        .replace("learning_rate = 0.3", "learning_rate = 0.05");
    std::fs::write(&exp, &text).unwrap();
    let inspect = ok_json(&peft(&[
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
    let out = peft(&["train", exp.to_str().unwrap(), "--no-baseline"]);
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
        &peft(&["train", exp.to_str().unwrap()]),
        &["adapters[1]", "unknown key `rr`"],
    );
}

#[test]
fn merged_lora_logits_equal_unmerged_and_unmergeable_methods_say_so() {
    let adapter = fixture("adapters/hf-tiny-gpt2-lora");
    let args = [
        "logits",
        "--model",
        &fixture("tiny-gpt2"),
        "--adapter",
        &adapter,
        "--ids",
        "5,17,42,8",
    ];
    let plain = ok_json(&peft(&args));
    let mut merged_args = args.to_vec();
    merged_args.push("--merge");
    let merged = ok_json(&peft(&merged_args));
    let (a, b) = (&plain["top_k"], &merged["top_k"]);
    for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
        assert_eq!(x[0], y[0], "merging changed the ranking");
        let d = (x[1].as_f64().unwrap() - y[1].as_f64().unwrap()).abs();
        assert!(d < 1e-4, "merged logits differ by {d}");
    }
    let prompt = fixture("adapters/hf-tiny-gpt2-random");
    fails_with(
        &peft(&[
            "logits",
            "--model",
            &fixture("tiny-gpt2"),
            "--adapter",
            &prompt,
            "--ids",
            "5,17",
            "--merge",
        ]),
        &["PROMPT_TUNING adapters cannot be merged"],
    );
}

#[test]
fn a_lora_target_the_model_lacks_is_named_with_the_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let lora = "peft_type = \"LORA\"\nr = 4\ntarget_modules = [\"q_proj\"]";
    let exp = toy_experiment(dir.path(), lora, &toy_train_rows());
    fails_with(
        &peft(&["train", exp.to_str().unwrap()]),
        &["q_proj", "c_attn"],
    );
    assert!(
        !dir.path().join("out").exists(),
        "a failed run left outputs"
    );
}

#[test]
fn seq2seq_logits_take_decoder_ids_and_match_transformers() {
    let model = fixture("tiny-t5");
    let refs = read_json(&format!("{model}/logits.json"));
    let case = &refs["cases"][0];
    let ids: Vec<String> = case["input_ids"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let dec: Vec<String> = case["decoder_input_ids"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let json = ok_json(&peft(&[
        "logits",
        "--model",
        &model,
        "--ids",
        &ids.join(","),
        "--decoder-ids",
        &dec.join(","),
        "--top-k",
        "5",
    ]));
    assert_eq!(json["decoder_input_ids"], case["decoder_input_ids"][0]);
    check_top_k(&json, &last_row(&case["logits"][0]), 5);
    // A decoder-only model refuses decoder ids by name.
    let out = peft(&[
        "logits",
        "--model",
        &fixture("tiny-gpt2"),
        "--ids",
        "1,2",
        "--decoder-ids",
        "0",
    ]);
    fails_with(&out, &["--decoder-ids", "gpt2"]);
}

#[test]
fn embed_matches_sentence_transformers_on_minilm() {
    if peft_models::zoo::cached_path("minilm-l6").is_none() {
        eprintln!("skipped: all-MiniLM-L6-v2 is not cached (run `peft fetch minilm-l6`)");
        return;
    }
    let refs = read_json(&fixture("minilm/embeddings.json"));
    for case in refs["cases"].as_array().unwrap().iter().take(3) {
        let text = case["text"].as_str().unwrap();
        let json = ok_json(&peft(&["embed", "--model", "minilm-l6", "--text", text]));
        assert_eq!(json["input_ids"], case["input_ids"], "{text}");
        let ours: Vec<f64> = json["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let theirs: Vec<f64> = case["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let cosine: f64 = ours.iter().zip(&theirs).map(|(a, b)| a * b).sum();
        assert!(cosine > 0.99999, "{text}: cosine {cosine}");
    }
}

#[test]
fn token_classification_trains_a_per_token_head() {
    // Tag A for words w0..w49, B for w50..w99: a per-token rule the head learns.
    let dir = tempfile::tempdir().unwrap();
    let rows = |n: usize, seed: usize| -> String {
        (0..n)
            .map(|i| {
                let words: Vec<String> = (0..5)
                    .map(|t| format!("w{}", (seed + i * 7 + t * 13) % 100))
                    .collect();
                let tags: Vec<&str> = words
                    .iter()
                    .map(|w| {
                        if w[1..].parse::<u32>().unwrap() < 50 {
                            "A"
                        } else {
                            "B"
                        }
                    })
                    .collect();
                serde_json::json!({"words": words, "tags": tags}).to_string() + "\n"
            })
            .collect()
    };
    std::fs::write(dir.path().join("train.jsonl"), rows(64, 0)).unwrap();
    // Dev rows reorder training words (a word's tag cannot be guessed from an unseen word).
    std::fs::write(dir.path().join("dev.jsonl"), rows(16, 7 * 40)).unwrap();
    let exp = format!(
        r#"
[model]
name = "{model}"

[method]
peft_type = "LORA"
r = 4
lora_alpha = 8

[task]
kind = "token-classification"
labels = ["A", "B"]

[data.train]
path = "train.jsonl"
text = "words"
label = "tags"

[data.eval]
path = "dev.jsonl"
text = "words"
label = "tags"

[training]
max_steps = 200
batch_size = 8
learning_rate = 0.01
progress = false
output_dir = "{out}"
"#,
        model = fixture("tiny-gpt2"),
        out = dir.path().join("out").display(),
    );
    let path = dir.path().join("exp.toml");
    std::fs::write(&path, exp).unwrap();
    let out = peft(&["train", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("dev after"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let accuracy: f64 = line
        .split("accuracy ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(accuracy > 0.9, "{line}");
    let config = read_json(
        &dir.path()
            .join("out/adapter/adapter_config.json")
            .to_string_lossy(),
    );
    assert_eq!(config["task_type"], "TOKEN_CLS");
    let eval = ok_json(&peft(&[
        "eval",
        path.to_str().unwrap(),
        "--adapter",
        &dir.path().join("out/adapter").to_string_lossy(),
    ]));
    assert!(eval["accuracy"].as_f64().unwrap() > 0.9, "{eval}");
}

#[test]
fn seq2seq_trains_end_to_end_and_generates() {
    // The tiny T5 fixture with the tiny GPT-2's word-level tokenizer (w0..w99 = ids 0..99; w1 is T5's eos).
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("t5");
    std::fs::create_dir(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(&fixture("tiny-t5")).join(f), model.join(f)).unwrap();
    }
    std::fs::copy(
        Path::new(&fixture("tiny-gpt2")).join("tokenizer.json"),
        model.join("tokenizer.json"),
    )
    .unwrap();
    // Three words, one from each of the bands w3..w9, w10..w16, w17..w23, in any order; the target lists them
    // band by band (a task T5's position-free cross-attention can learn).
    let rows = |n: usize, seed: u64| -> String {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = String::from("source\ttarget\n");
        for _ in 0..n {
            let bands: Vec<u32> = (0..3).map(|b| 3 + 7 * b + rng.random_range(0..7)).collect();
            let mut source = bands.clone();
            source.swap(0, rng.random_range(0..3));
            let words = |ids: &[u32]| {
                ids.iter()
                    .map(|i| format!("w{i}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            out += &format!("{}\t{}\n", words(&source), words(&bands));
        }
        out
    };
    std::fs::write(dir.path().join("train.tsv"), rows(256, 1)).unwrap();
    std::fs::write(dir.path().join("dev.tsv"), rows(32, 2)).unwrap();
    let exp = format!(
        r#"
[model]
name = "{model}"

[method]
peft_type = "LORA"
r = 8
lora_alpha = 16
target_modules = "all-linear"

[task]
kind = "seq2seq"

[data.train]
path = "train.tsv"
text = "source"
label = "target"

[data.eval]
path = "dev.tsv"
text = "source"
label = "target"

[training]
max_steps = 300
batch_size = 16
learning_rate = 0.01
progress = false
output_dir = "{out}"
"#,
        model = model.display(),
        out = dir.path().join("out").display(),
    );
    let path = dir.path().join("exp.toml");
    std::fs::write(&path, exp).unwrap();
    let out = peft(&["train", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metric = |prefix: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{stdout}"));
        line.split("exact_match ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap()
            .parse()
            .unwrap()
    };
    let (before, after) = (metric("dev before"), metric("dev after"));
    assert!(
        before < 0.1 && after > 0.5,
        "exact match {before} -> {after}\n{stdout}"
    );
    let config = read_json(
        &dir.path()
            .join("out/adapter/adapter_config.json")
            .to_string_lossy(),
    );
    assert_eq!(config["task_type"], "SEQ_2_SEQ_LM");
    let generated = peft(&[
        "generate",
        "--model",
        &model.to_string_lossy(),
        "--adapter",
        &dir.path().join("out/adapter").to_string_lossy(),
        "--prompt",
        "w12 w5 w20",
    ]);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&generated.stdout).trim(),
        "w5 w12 w20"
    );
}

#[test]
fn several_processes_need_the_mpi_build_and_one_process_commands_refuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let exp = toy_experiment(dir.path(), PROMPT, &toy_train_rows());
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
