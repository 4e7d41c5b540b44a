//! `peft compare` end to end on the tiny GPT-2 fixture and a toy task: the results folder is complete, the
//! same grid reproduces the same metrics, a grid killed with SIGKILL and restarted ends with the same table,
//! budgets size methods, and bad grids fail before any training, naming the line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fixture, peft, stable_table, write_task};

/// A grid of four rows (zero-shot once, prompt tuning, LoRA, full fine-tuning x two seeds) on the tiny GPT-2.
fn write_grid(dir: &Path, extra_compare: &str) -> PathBuf {
    write_task(dir);
    let grid = format!(
        r#"
[compare]
title = "toy grid"
models = ["{model}"]
tasks = ["toy.toml"]
seeds = [1, 2]
metrics = ["accuracy", "matthews"]
output_dir = "results"
{extra_compare}

[training]
max_steps = 40
batch_size = 8
learning_rate = 0.1
log_every = 5

[[methods]]
name = "zero-shot"
baseline = "zero-shot"

[[methods]]
name = "prompt"
config = {{ peft_type = "PROMPT_TUNING", num_virtual_tokens = 8 }}
training = {{ learning_rate = 0.3 }}

[[methods]]
name = "lora"
config = {{ peft_type = "LORA", r = 4, lora_alpha = 8 }}
training = {{ learning_rate = 0.05 }}

[[methods]]
name = "full"
baseline = "full"
training = {{ learning_rate = 0.01 }}
"#,
        model = fixture("tiny-gpt2"),
    );
    let path = dir.join("grid.toml");
    std::fs::write(&path, grid).unwrap();
    path
}

#[test]
fn a_grid_writes_its_results_reproducibly_and_resumes_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let grid = write_grid(dir.path(), "");
    let out = peft(&["compare", grid.to_str().unwrap()], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = dir.path().join("results");
    for f in [
        "report.md",
        "runs.csv",
        "grid.toml",
        "plan.json",
        "loss-tiny-gpt2-toy.svg",
        "loss-tiny-gpt2-toy.png",
        "accuracy-vs-params-tiny-gpt2-toy.png",
        "accuracy-vs-step-time-tiny-gpt2-toy.svg",
        "runs/tiny-gpt2.toy.lora.s2/result.json",
        "runs/tiny-gpt2.toy.lora.s2/metrics.jsonl",
        "runs/tiny-gpt2.toy.lora.s2/adapter/adapter_model.safetensors",
    ] {
        let p = results.join(f);
        assert!(
            p.is_file() && p.metadata().unwrap().len() > 0,
            "missing {f}"
        );
    }
    let table = stable_table(&results);
    assert_eq!(table.len(), 1 + 1 + 3 * 2, "{table:?}");
    let col = |name: &str| table[0].iter().position(|h| h == name).unwrap();
    let acc = |method: &str, seed: &str| -> f64 {
        let row = table
            .iter()
            .find(|r| r[col("method")] == method && r[col("seed")] == seed)
            .unwrap();
        row[col("accuracy")].parse().unwrap()
    };
    // The toy task is learnable: every trained method beats the frozen model, and full fine-tuning trains
    // every weight of the model.
    for seed in ["1", "2"] {
        for m in ["prompt", "lora", "full"] {
            assert!(
                acc(m, seed) > acc("zero-shot", "1"),
                "{m} seed {seed}: {table:?}"
            );
        }
    }
    let full = table.iter().find(|r| r[col("method")] == "full").unwrap();
    assert_eq!(full[col("trainable_params")], full[col("total_params")]);
    let report = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(
        report.contains("| lora |") && report.contains(" ± "),
        "{report}"
    );
    // Intervals and paired comparisons with zero-shot and the best row on the headline metric.
    assert!(
        report.contains("trained rows beat zero-shot on accuracy")
            && report.contains("| vs zero-shot | vs best |")
            && report.contains("| best |")
            && report.contains("McNemar"),
        "{report}"
    );
    let lora_line = report.lines().find(|l| l.starts_with("| lora |")).unwrap();
    assert!(
        lora_line.contains(" ± ") && lora_line.contains("], ") || lora_line.contains("] |"),
        "{lora_line}"
    );

    // The same grid in another folder: the same metrics, step for step the same losses.
    let again = tempfile::tempdir().unwrap();
    let grid2 = write_grid(again.path(), "");
    let out = peft(&["compare", grid2.to_str().unwrap()], again.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table2 = stable_table(&again.path().join("results"));
    assert_eq!(table, table2);

    // Killed (SIGKILL) once the second cell has finished, then restarted: finished cells are reused, the
    // rest rerun, and the final table is the uninterrupted one.
    let killed = tempfile::tempdir().unwrap();
    let grid3 = write_grid(killed.path(), "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(["compare", grid3.to_str().unwrap()])
        .current_dir(killed.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let runs = killed.path().join("results/runs");
    let started = Instant::now();
    loop {
        let done = std::fs::read_dir(&runs)
            .map(|d| {
                d.filter(|e| e.as_ref().unwrap().path().join("result.json").is_file())
                    .count()
            })
            .unwrap_or(0);
        if done >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the grid made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.path().join("results/runs.csv").exists(),
        "a killed grid must not report"
    );
    let out = peft(&["compare", grid3.to_str().unwrap()], killed.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.matches("finished earlier, reused").count() >= 2,
        "{log}"
    );
    assert_eq!(stable_table(&killed.path().join("results")), table);
}

#[test]
fn jobs_run_cells_side_by_side_on_a_share_of_the_cores_and_the_report_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let grid = write_grid(dir.path(), "");
    let out = peft(
        &["compare", "--jobs", "2", grid.to_str().unwrap()],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = dir.path().join("results/runs");
    let cores = std::thread::available_parallelism().unwrap().get();
    let threads = match std::env::var("RAYON_NUM_THREADS") {
        Ok(n) => n.parse().unwrap(),
        Err(_) => (cores / 2).max(1),
    };
    let mut spans = Vec::new();
    for entry in std::fs::read_dir(&runs).unwrap() {
        let path = entry.unwrap().path().join("result.json");
        let result: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let e = &result["execution"];
        assert_eq!(e["cells_at_once"], 2, "{}", path.display());
        assert_eq!(e["threads"], threads, "{}", path.display());
        spans.push((
            e["started_unix_s"].as_f64().unwrap(),
            e["finished_unix_s"].as_f64().unwrap(),
        ));
    }
    assert_eq!(spans.len(), 7);
    // Two processes at a time: some cell started before another had finished.
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        spans.windows(2).any(|w| w[1].0 < w[0].1),
        "no two cells overlapped: {spans:?}"
    );
    let report = std::fs::read_to_string(dir.path().join("results/report.md")).unwrap();
    let each = if threads == 1 {
        "1 thread each".to_string()
    } else {
        format!("{threads} threads each")
    };
    assert!(
        report.contains(&format!("Cells ran with {each}, 2 at a time.")),
        "{report}"
    );
}

/// Two toy tasks, general text for forgetting, zero-shot and LoRA over two seeds.
fn write_two_task_grid(dir: &Path) -> PathBuf {
    write_task(dir);
    let toy = std::fs::read_to_string(dir.join("toy.toml")).unwrap();
    std::fs::write(
        dir.join("toy-b.toml"),
        toy.replace("name = \"toy\"", "name = \"toy-b\""),
    )
    .unwrap();
    std::fs::write(
        dir.join("general.toml"),
        "name = \"general\"\nmetric = \"perplexity\"\n[task]\nkind = \"causal-lm\"\nblock_size = 8\n\n\
         [data.train]\npath = \"dev.tsv\"\ntext = \"sentence\"\n\n[data.eval]\npath = \"dev.tsv\"\ntext = \"sentence\"\n",
    )
    .unwrap();
    let grid = format!(
        r#"
[compare]
models = ["{model}"]
tasks = ["toy.toml", "toy-b.toml"]
seeds = [1, 2]
output_dir = "results"
forgetting_text = "general.toml"

[training]
max_steps = 20
batch_size = 8
learning_rate = 0.05

[[methods]]
name = "zero-shot"
baseline = "zero-shot"

[[methods]]
name = "lora"
config = {{ peft_type = "LORA", r = 4, lora_alpha = 8 }}
"#,
        model = fixture("tiny-gpt2"),
    );
    let path = dir.join("grid.toml");
    std::fs::write(&path, grid).unwrap();
    path
}

#[test]
fn a_grid_over_two_tasks_writes_a_leaderboard_forgetting_and_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let grid = write_two_task_grid(dir.path());
    let out = peft(&["compare", grid.to_str().unwrap()], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = dir.path().join("results");
    let report = std::fs::read_to_string(results.join("report.md")).unwrap();
    assert!(
        report.contains("## Leaderboard: tiny-gpt2 across 2 tasks")
            && report.contains("| # | method | trainable parameters | mean rank |")
            && report.contains("leaderboard-tiny-gpt2.svg"),
        "{report}"
    );
    assert!(results.join("leaderboard-tiny-gpt2.svg").is_file());
    // Every run kept its 16 dev outcomes; the LoRA runs measured forgetting on the general text, before
    // equal across seeds (the frozen model), after not (a trained adapter).
    let read = |id: &str| -> serde_json::Value {
        let text =
            std::fs::read_to_string(results.join("runs").join(id).join("result.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let zero = read("tiny-gpt2.toy.zero-shot.s1");
    assert_eq!(
        zero["dev_outcomes"]["predictions"]
            .as_array()
            .unwrap()
            .len(),
        16
    );
    assert!(zero["forgetting"].is_null());
    let (a, b) = (
        read("tiny-gpt2.toy.lora.s1"),
        read("tiny-gpt2.toy-b.lora.s2"),
    );
    assert_eq!(a["dev_outcomes"]["labels"].as_array().unwrap().len(), 16);
    let before = |v: &serde_json::Value| v["forgetting"]["loss_before"].as_f64().unwrap();
    let after = |v: &serde_json::Value| v["forgetting"]["loss_after"].as_f64().unwrap();
    assert_eq!(before(&a), before(&b));
    assert!(before(&a) > 0.0 && after(&a) != before(&a), "{a}");
    assert!(a["rss_p99_bytes"].as_u64().unwrap() > 0);
    assert!(
        report.contains("| forgetting |") && report.contains("RSS p99"),
        "{report}"
    );
}

#[test]
fn an_encoder_without_an_lm_head_is_compared_with_the_majority_class_pairwise() {
    let dir = tempfile::tempdir().unwrap();
    write_task(dir.path());
    let toy = std::fs::read_to_string(dir.path().join("toy.toml")).unwrap();
    std::fs::write(
        dir.path().join("toy.toml"),
        toy.replace(
            "kind = \"classification\"",
            "kind = \"classification-head\"",
        ),
    )
    .unwrap();
    // The tiny BERT with the tiny GPT-2's word-level tokenizer (both have the same 100 words).
    let model = dir.path().join("tiny-bert");
    std::fs::create_dir(&model).unwrap();
    for (from, file) in [
        ("tiny-bert", "config.json"),
        ("tiny-bert", "model.safetensors"),
        ("tiny-gpt2", "tokenizer.json"),
    ] {
        std::fs::copy(Path::new(&fixture(from)).join(file), model.join(file)).unwrap();
    }
    let grid = format!(
        r#"
[compare]
models = ["{model}"]
tasks = ["toy.toml"]
seeds = [1]
metrics = ["accuracy", "macro_f1"]
output_dir = "results"

[training]
max_steps = 10
batch_size = 8
learning_rate = 0.01

[[methods]]
name = "majority"
baseline = "zero-shot"

[[methods]]
name = "probe"
baseline = "linear-probe"
"#,
        model = model.display(),
    );
    std::fs::write(dir.path().join("grid.toml"), grid).unwrap();
    let out = peft(&["compare", "grid.toml"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = dir.path().join("results");
    let text = std::fs::read_to_string(results.join("runs/tiny-bert.toy.majority.s1/result.json"))
        .unwrap();
    let zero: serde_json::Value = serde_json::from_str(&text).unwrap();
    // The toy dev set is balanced (8 of each class), the training set too: the majority class (the first
    // of the tie) is right on half the examples, every prediction the same class, and no loss.
    let predictions = zero["dev_outcomes"]["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 16);
    assert!(predictions.iter().all(|p| *p == predictions[0]));
    assert_eq!(zero["metrics"]["accuracy"].as_f64(), Some(0.5));
    assert!(zero["metrics"].get("loss").is_none(), "{zero}");
    // So the probe gets a paired comparison with it.
    let report = std::fs::read_to_string(results.join("report.md")).unwrap();
    let probe = report.lines().find(|l| l.starts_with("| probe |")).unwrap();
    assert!(probe.contains("McNemar"), "{report}");
}

#[test]
fn a_budget_sizes_each_method_and_reports_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let grid = write_grid(dir.path(), "param_budget = 2000");
    let out = peft(
        &["compare", "--dry-run", grid.to_str().unwrap()],
        dir.path(),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    // The tiny GPT-2 has hidden size 32: prompt tuning reaches 2,000 with 62 or 63 tokens; LoRA on c_attn
    // (2 layers, 32 -> 96) trains 2 x 128 r parameters, so r = 8 gives 2,048.
    let line = |m: &str| {
        log.lines()
            .find(|l| l.contains(&format!(".{m}.s1:")))
            .unwrap_or_else(|| panic!("{log}"))
            .to_string()
    };
    assert!(
        line("prompt").contains("1984 trainable parameters, num_virtual_tokens = 62 for"),
        "{log}"
    );
    assert!(
        line("lora").contains("2048 trainable parameters, r = 8 for the budget"),
        "{log}"
    );
    assert!(!line("full").contains("budget"), "{log}");
    assert!(
        !dir.path().join("results").exists(),
        "a dry run writes nothing"
    );
}

#[test]
fn bad_grids_fail_before_training_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(write_grid(dir.path(), "")).unwrap();
    let check = |text: String, needles: &[&str]| {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = peft(&["compare", path.to_str().unwrap()], dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        for n in needles {
            assert!(err.contains(n), "expected {n:?} in: {err}");
        }
        assert!(
            !dir.path().join("results").exists(),
            "nothing may be written: {err}"
        );
    };
    let line_of = |needle: &str| 1 + good.lines().position(|l| l.contains(needle)).unwrap();
    check(
        good.replace("\"PROMPT_TUNING\"", "\"PROMPT_TUNNING\""),
        &[
            "PROMPT_TUNNING",
            &format!("line {}", line_of("PROMPT_TUNING")),
        ],
    );
    check(
        good.replace("\"accuracy\", \"matthews\"", "\"accuracy\", \"bleu\""),
        &[
            "unknown metric `bleu`",
            &format!("line {}", line_of("metrics =")),
        ],
    );
    let model = fixture("tiny-gpt2");
    check(
        good.replace(&model, "/no/such/model"),
        &["/no/such/model", &format!("line {}", line_of("models ="))],
    );
    check(
        good.replace("baseline = \"full\"", "baseline = \"fulll\""),
        &[
            "unknown baseline `fulll`",
            &format!("line {}", line_of("baseline = \"full\"")),
        ],
    );
    // A task field that the data does not have, and a label outside the verbalizer.
    std::fs::write(
        dir.path().join("toy.toml"),
        std::fs::read_to_string(dir.path().join("toy.toml"))
            .unwrap()
            .replacen("text = \"sentence\"", "text = \"sentense\"", 1),
    )
    .unwrap();
    check(good.clone(), &["sentense"]);
    write_task(dir.path());
    let dev = std::fs::read_to_string(dir.path().join("train.tsv")).unwrap();
    std::fs::write(dir.path().join("train.tsv"), format!("{dev}w5 w6 w7\t2\n")).unwrap();
    check(good, &["label \"2\" is not in the verbalizer", "(line 66)"]);
}
