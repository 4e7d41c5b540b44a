//! `peft convert` as a user runs it: HF PEFT's PiSSA adapter on the tiny LLaMA, written as plain LoRA of rank 2r,
//! gives HF PEFT's logits through `peft logits` on the unchanged base, and wrong inputs are refused.

mod common;

use common::{fails_with, fixture, id_list, ok_json, read_json, run_peft};

#[test]
fn a_pissa_adapter_converts_to_plain_lora_with_the_same_logits() {
    let out = tempfile::tempdir().unwrap();
    let converted = out.path().join("converted");
    let converted = converted.to_str().unwrap();
    let reply = ok_json(&convert(
        &fixture("adapters/hf-tiny-llama-pissa"),
        converted,
    ));
    assert_eq!(
        (reply["r"].as_u64(), reply["lora_alpha"].as_f64()),
        (Some(4), Some(8.0))
    );
    assert_eq!(reply["from_init"], "pissa");
    let config = read_json(&format!("{converted}/adapter_config.json"));
    assert_eq!(config["init_lora_weights"], true);

    let reference = read_json(&fixture("adapters/hf-tiny-llama-pissa/logits.json"));
    for case in reference["cases"].as_array().unwrap() {
        let ids = id_list(&case["input_ids"]);
        let json = ok_json(&run_peft(&[
            "logits",
            "--model",
            &fixture("tiny-llama"),
            "--adapter",
            converted,
            "--ids",
            &ids,
            "--top-k",
            "5",
        ]));
        let hf: Vec<f64> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for pair in json["top_k"].as_array().unwrap() {
            let (id, logit) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap(),
            );
            assert!(
                (logit - hf[id]).abs() < 1e-4,
                "id {id}: converted {logit}, HF PEFT's PiSSA model {}",
                hf[id]
            );
        }
    }
}

/// `peft convert` of the fixture adapter `adapter` on the tiny LLaMA into `out`.
fn convert(adapter: &str, out: &str) -> std::process::Output {
    let tiny = fixture("tiny-llama");
    run_peft(&[
        "convert",
        "--model",
        &tiny,
        "--adapter",
        adapter,
        "--out",
        out,
    ])
}

#[test]
fn plain_adapters_and_the_input_folder_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("x");
    let target_str = target.to_str().unwrap();
    let lora = fixture("adapters/hf-tiny-llama-lora");
    fails_with(&convert(&lora, target_str), &["plain LoRA already"]);
    assert!(!target.exists(), "nothing written for a refused conversion");
    let prefix = fixture("adapters/hf-tiny-llama-prefix");
    fails_with(
        &convert(&prefix, target_str),
        &["PREFIX_TUNING", "only LoRA adapters"],
    );
    let pissa = fixture("adapters/hf-tiny-llama-pissa");
    fails_with(&convert(&pissa, &pissa), &["the adapter folder itself"]);
}
