//! `peft train` on the task kinds beyond classification, each learning a toy rule: causal language modelling
//! (held-out perplexity falls), token classification (a per-token head) and seq2seq on the tiny T5 (then
//! `peft generate` with the trained adapter).

mod common;

use std::path::Path;

use common::{fixture, ok_json, read_json, run_peft};

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
    let out = run_peft(&["train", dir.path().join("exp.toml").to_str().unwrap()]);
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
    let out = run_peft(&["train", path.to_str().unwrap()]);
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
    let eval = ok_json(&run_peft(&[
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
    let out = run_peft(&["train", path.to_str().unwrap()]);
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
    let generated = run_peft(&[
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
