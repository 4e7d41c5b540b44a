//! The `peft-ia3` binary (the whole `peft` command with this crate linked) trains IA3 from an experiment file,
//! and its `inspect` and `logits` commands read the adapter it wrote and HF PEFT's IA3 adapters.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use peft_core::adapter_io::{load_adapter, CONFIG_FILE, WEIGHTS_FILE};
use peft_testing::{fixture, ids_of, init_loaded, logits, read_json, root, tiny};
use serde_json::Value;

/// Runs `peft-ia3` from the repository root (the tiny experiment names its model relative to it).
fn peft_ia3(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft-ia3"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the peft-ia3 binary runs")
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok_json(out: &Output) -> Value {
    serde_json::from_str(&ok_stdout(out)).expect("stdout is one JSON object")
}

/// HF PEFT's trainable count for the default IA3 config on the tiny GPT-2, from its fixture.
fn hf_trainable_count() -> u64 {
    read_json(&fixture("adapters/hf-tiny-gpt2-ia3/logits.json"))["trainable_parameters"]
        .as_u64()
        .unwrap()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// `[[id, logit], ...]` of `peft logits` as pairs.
fn top_k(json: &Value) -> Vec<(usize, f32)> {
    json["top_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_u64().unwrap() as usize,
                p[1].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

#[test]
fn peft_ia3_trains_the_tiny_experiment_and_reads_the_adapter_back() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let experiment = "examples/ia3/tiny-ia3.toml";
    let stdout = ok_stdout(&peft_ia3(&[
        "train",
        experiment,
        "--output-dir",
        out_dir.to_str().unwrap(),
    ]));
    let line = stdout
        .lines()
        .find(|l| l.starts_with("loss: "))
        .unwrap_or_else(|| panic!("no before -> after line in {stdout}"));
    let losses: Vec<f64> = line
        .trim_start_matches("loss: ")
        .split(" -> ")
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        losses[1] < losses[0] * 0.5,
        "held-out loss did not fall: {line}"
    );

    // The adapter folder is HF PEFT's IA3 format, with the resolved module lists filled in.
    let adapter = out_dir.join("adapter");
    let config = read_json(&adapter.join(CONFIG_FILE));
    assert_eq!(config["peft_type"], "IA3");
    assert_eq!(strings(&config["target_modules"]), ["c_attn", "mlp.c_proj"]);
    assert_eq!(strings(&config["feedforward_modules"]), ["mlp.c_proj"]);
    assert_eq!(config["fan_in_fan_out"], true);
    let tensors =
        candle_core::safetensors::load(adapter.join(WEIGHTS_FILE), &candle_core::Device::Cpu)
            .unwrap();
    let keys: BTreeSet<&str> = tensors.keys().map(String::as_str).collect();
    let expected: BTreeSet<String> = (0..2)
        .flat_map(|i| {
            [
                format!("base_model.model.transformer.h.{i}.attn.c_attn.ia3_l"),
                format!("base_model.model.transformer.h.{i}.mlp.c_proj.ia3_l"),
            ]
        })
        .collect();
    assert_eq!(keys, expected.iter().map(String::as_str).collect());
    let count: usize = tensors.values().map(|t| t.elem_count()).sum();
    assert_eq!(count as u64, hf_trainable_count());

    // `inspect` loads it (and counts a fresh one from the experiment file the same way).
    let adapter_arg = adapter.to_str().unwrap();
    let json = ok_json(&peft_ia3(&[
        "inspect",
        "--model",
        "fixtures/tiny-gpt2",
        "--adapter",
        adapter_arg,
    ]));
    assert_eq!(json["method"], "IA3");
    assert_eq!(
        json["trainable_parameters"].as_u64().unwrap(),
        hf_trainable_count()
    );
    let json = ok_json(&peft_ia3(&[
        "inspect",
        "--model",
        "fixtures/tiny-gpt2",
        "--experiment",
        experiment,
    ]));
    assert_eq!(
        json["trainable_parameters"].as_u64().unwrap(),
        hf_trainable_count()
    );

    // `logits` with the adapter gives what the library computes with it, and not the frozen model's.
    let ids = [5u32, 17, 42, 8];
    let ids_arg = "5,17,42,8";
    let with = top_k(&ok_json(&peft_ia3(&[
        "logits",
        "--model",
        "fixtures/tiny-gpt2",
        "--adapter",
        adapter_arg,
        "--ids",
        ids_arg,
    ])));
    let without = top_k(&ok_json(&peft_ia3(&[
        "logits",
        "--model",
        "fixtures/tiny-gpt2",
        "--ids",
        ids_arg,
    ])));
    peft_ia3_example::register();
    let loaded = tiny("tiny-gpt2");
    let in_process = load_adapter(&adapter, &mut init_loaded(&loaded, 0))
        .unwrap()
        .adapter;
    let reference = logits(loaded.model.as_ref(), in_process.as_ref(), &ids);
    assert_eq!(with.len(), 20);
    for (id, logit) in &with {
        assert!(
            (logit - reference[*id]).abs() < 1e-5,
            "id {id}: {logit} vs {}",
            reference[*id]
        );
    }
    let moved = with
        .iter()
        .zip(&without)
        .map(|(a, b)| (a.1 - b.1).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-2,
        "the trained adapter barely changes the logits ({moved})"
    );
}

#[test]
fn peft_ia3_logits_with_an_hf_ia3_adapter_match_hf_peft() {
    let dir = fixture("adapters/hf-tiny-llama-ia3");
    let reference = read_json(&dir.join("logits.json"));
    let case = &reference["cases"][0];
    let ids: Vec<String> = ids_of(case).iter().map(u32::to_string).collect();
    let json = ok_json(&peft_ia3(&[
        "logits",
        "--model",
        "fixtures/tiny-llama",
        "--adapter",
        dir.to_str().unwrap(),
        "--ids",
        &ids.join(","),
        "--top-k",
        "10",
    ]));
    let full: Vec<f32> = case["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let mut order: Vec<usize> = (0..full.len()).collect();
    order.sort_by(|&a, &b| full[b].total_cmp(&full[a]));
    for (rank, (id, logit)) in top_k(&json).into_iter().enumerate() {
        assert!(
            (logit - full[id]).abs() < 1e-4,
            "id {id}: {logit} vs HF {}",
            full[id]
        );
        assert_eq!(id, order[rank], "rank {rank}");
    }
}

#[test]
fn the_shipped_smollm2_experiment_parses_and_builds() {
    // Checks the SST-2 experiment without training: `inspect --experiment` parses it and builds IA3 on SmolLM2.
    let Some(gguf) = peft_testing::zoo_model_path("smollm2-135m", "PEFT_SMOLLM2_GGUF") else {
        return;
    };
    let exp = Path::new("examples/ia3/sst2-ia3.toml");
    let json = ok_json(&peft_ia3(&[
        "inspect",
        "--model",
        gguf.to_str().unwrap(),
        "--experiment",
        exp.to_str().unwrap(),
    ]));
    assert_eq!(json["method"], "IA3");
    let hf = read_json(&fixture("adapters/hf-smollm2-ia3/logits.json"));
    assert_eq!(json["trainable_parameters"], hf["trainable_parameters"]);
}
