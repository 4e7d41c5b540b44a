//! Catalogue cases: adapters. An all-NaN adapter used to load and run with exit 0 (`generate` repeating token
//! 0); a config whose size said 1e9 beside a file of 5 rows made the process ask for about 128 GB; every
//! `adapter_config.json` error blamed `peft_type`. Each bad folder is now refused before anything is computed
//! or allocated for it, naming the field, tensor or file; a NaN adapter loads only with `--allow-non-finite`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use crate::common::{fixture, peft, run_peft, toy_experiment, toy_train_rows, PROMPT};
use crate::refused;

/// A copy of the fixture adapter `name` in a fresh folder (`<tmp>/adapter`), its config edited by `edit` and
/// its tensors by `tensors`.
fn adapter_with(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
    tensors: impl FnOnce(&mut HashMap<String, Tensor>),
) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("adapter");
    std::fs::create_dir(&dir).unwrap();
    let source = PathBuf::from(fixture(&format!("adapters/{name}")));
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("adapter_config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let mut weights =
        candle_core::safetensors::load(source.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    tensors(&mut weights);
    candle_core::safetensors::save(&weights, dir.join("adapter_model.safetensors")).unwrap();
    (root, dir)
}

/// The prompt-tuning adapter of the tiny GPT-2 (4 virtual tokens) with every value NaN.
fn nan_adapter() -> (tempfile::TempDir, PathBuf) {
    adapter_with(
        "ours-tiny-gpt2",
        |_| {},
        |tensors| {
            for t in tensors.values_mut() {
                *t = (t.ones_like().unwrap() * f64::NAN).unwrap();
            }
        },
    )
}

/// `peft logits --model tiny-gpt2 --adapter <adapter> --ids 1,2` with `extra` arguments.
fn logits(adapter: &Path, extra: &[&str]) -> Output {
    let adapter = adapter.display().to_string();
    let model = fixture("tiny-gpt2");
    let args = [
        &[
            "logits",
            "--model",
            &model,
            "--adapter",
            &adapter,
            "--ids",
            "1,2",
        ][..],
        extra,
    ]
    .concat();
    run_peft(&args)
}

/// `peft generate --model tiny-gpt2 --prompt "w1 w2" --max-new-tokens 3` with `extra` arguments.
fn generate(extra: &[&str]) -> Output {
    let model = fixture("tiny-gpt2");
    let args = [
        &[
            "generate",
            "--model",
            &model,
            "--prompt",
            "w1 w2",
            "--max-new-tokens",
            "3",
        ][..],
        extra,
    ]
    .concat();
    run_peft(&args)
}

/// Asserts that the NaN adapter was let through: no refusal, and the override's warning.
fn let_through(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("refusing to load"), "{err}");
    assert!(err.contains("warning: --allow-non-finite"), "{err}");
}

/// The key words of a non-finite refusal.
const NON_FINITE: &[&str] = &[
    "refusing to load the adapter",
    "`prompt_embeddings` holds 128 non-finite values (NaN or infinite) of 128",
    "--allow-non-finite",
];

#[test]
fn nan_adapter_is_refused_by_eval_unless_allowed() {
    let (root, adapter) = nan_adapter();
    let exp = toy_experiment(
        root.path(),
        "exp.toml",
        PROMPT,
        "classification",
        &toy_train_rows(),
        "progress = false",
    );
    let eval = |extra: &[&str]| {
        let args = [
            &[
                "eval",
                exp.to_str().unwrap(),
                "--adapter",
                adapter.to_str().unwrap(),
            ][..],
            extra,
        ]
        .concat();
        peft(&args, root.path())
    };
    refused(&eval(&[]), NON_FINITE, &[]);
    let_through(&eval(&["--allow-non-finite"]));
}

#[test]
fn nan_adapter_is_refused_by_logits_unless_allowed() {
    let (_root, adapter) = nan_adapter();
    refused(&logits(&adapter, &[]), NON_FINITE, &[]);
    let_through(&logits(&adapter, &["--allow-non-finite"]));
}

#[test]
fn nan_adapter_is_refused_by_generate_unless_allowed() {
    let (_root, adapter) = nan_adapter();
    let adapter = adapter.display().to_string();
    refused(&generate(&["--adapter", &adapter]), NON_FINITE, &[]);
    let allowed = generate(&["--adapter", &adapter, "--allow-non-finite"]);
    let_through(&allowed);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}

/// Runs `peft logits` on `adapter` with its address space capped at 2 GiB (far below what the config's size
/// would ask for), returning its output and how long it took.
fn logits_in_small_memory(adapter: &Path) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 2097152 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_peft"))
        .args(["logits", "--model", &fixture("tiny-gpt2"), "--adapter"])
        .arg(adapter)
        .args(["--ids", "1,2"])
        .output()
        .unwrap();
    (out, start.elapsed())
}

/// Asserts a clean refusal of a size that the weights file cannot hold, fast and within the memory cap.
fn size_refused(adapter: &Path, needles: &[&str]) {
    let (out, took) = logits_in_small_memory(adapter);
    refused(&out, needles, &[]);
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_billion_virtual_tokens_beside_a_five_row_file_is_refused_before_allocating() {
    let (_root, adapter) = adapter_with(
        "hf-tiny-gpt2-random",
        |c| c["num_virtual_tokens"] = 1_000_000_000u64.into(),
        |_| {},
    );
    size_refused(
        &adapter,
        &[
            "adapter_config.json",
            "`num_virtual_tokens` = 1000000000",
            "prompt_embeddings [5, 32]",
        ],
    );
}

#[test]
fn a_lora_rank_of_a_billion_is_refused_before_allocating() {
    let (_root, adapter) = adapter_with(
        "ours-tiny-gpt2-lora",
        |c| c["r"] = 1_000_000_000u64.into(),
        |_| {},
    );
    size_refused(
        &adapter,
        &[
            "`r` = 1000000000",
            "the largest: base_model.model.transformer.h.0.mlp.c_fc.bias [128]",
        ],
    );
}

#[test]
fn a_prefix_of_a_billion_tokens_is_refused_before_allocating() {
    let (_root, adapter) = adapter_with(
        "ours-tiny-gpt2-prefix",
        |c| c["num_virtual_tokens"] = 1_000_000_000u64.into(),
        |_| {},
    );
    size_refused(
        &adapter,
        &[
            "`num_virtual_tokens` = 1000000000",
            "prompt_embeddings [3, 128]",
        ],
    );
}

#[test]
fn an_unknown_peft_type_is_named_with_the_known_ones() {
    let (_root, adapter) = adapter_with(
        "ours-tiny-gpt2-lora",
        |c| c["peft_type"] = "LORAX".into(),
        |_| {},
    );
    refused(
        &logits(&adapter, &[]),
        &[
            "`peft_type` = \"LORAX\" is not a method this build knows",
            "LORA,",
            "PROMPT_TUNING",
            "PREFIX_TUNING",
        ],
        &[],
    );
}

#[test]
fn a_field_of_the_wrong_type_is_named_without_blaming_peft_type() {
    let (_root, adapter) = adapter_with("ours-tiny-gpt2-lora", |c| c["r"] = "four".into(), |_| {});
    let out = logits(&adapter, &[]);
    refused(
        &out,
        &["adapter_config.json", "`r`: invalid type: string \"four\""],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("peft_type"), "{err}");
}

#[test]
fn an_unused_tensor_in_the_file_is_refused_by_name() {
    let (_root, adapter) = adapter_with(
        "ours-tiny-gpt2",
        |_| {},
        |tensors| {
            let extra = Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap();
            tensors.insert("base_model.model.extra.weight".into(), extra);
        },
    );
    refused(
        &logits(&adapter, &[]),
        &[
            "adapter_model.safetensors",
            "does not use: base_model.model.extra.weight",
        ],
        &[],
    );
}

#[test]
fn a_missing_weights_file_is_refused_by_name() {
    let (_root, adapter) = adapter_with("ours-tiny-gpt2", |_| {}, |_| {});
    std::fs::remove_file(adapter.join("adapter_model.safetensors")).unwrap();
    let out = logits(&adapter, &[]);
    refused(&out, &["adapter_model.safetensors", "missing"], &[]);
    // An I/O-like error says its cause once.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("missing").count(), 1, "{err}");
}

#[test]
fn generate_with_a_nan_temperature_is_refused_by_flag() {
    refused(
        &generate(&["--temperature", "NaN"]),
        &["--temperature NaN"],
        &[],
    );
}

#[test]
fn generate_with_a_negative_or_infinite_temperature_is_refused_by_flag() {
    for value in ["-1", "inf"] {
        let flag = format!("--temperature={value}");
        let said = format!("--temperature {value} is not a sampling temperature");
        refused(&generate(&[&flag]), &[&said], &[]);
    }
}

#[test]
fn generate_with_top_p_outside_zero_to_one_is_refused_by_flag() {
    for value in ["0", "1.5", "NaN"] {
        refused(
            &generate(&["--temperature", "1", "--top-p", value]),
            &["--top-p", "(0, 1]"],
            &[],
        );
    }
}

#[test]
fn generate_with_an_absurd_max_new_tokens_is_refused_by_flag() {
    let model = fixture("tiny-gpt2");
    for value in ["1000000000000", "65"] {
        let out = run_peft(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            "w1",
            "--max-new-tokens",
            value,
        ]);
        refused(&out, &["--max-new-tokens", value], &[]);
    }
}
