//! `peft merge` as a user runs it, on the fixtures `scripts/reference/merge.py` writes: a TIES merge of two
//! LoRA adapters with rank patterns equals HF PEFT's `add_weighted_adapter` and says what it wrote; a merged
//! adapter loads in `peft logits` with the logits it should have; wrong inputs are refused, writing nothing.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::{fails_with, fixture, ok_json, read_json, run_peft};

fn input(name: &str) -> String {
    fixture(&format!("merge/inputs/{name}"))
}

fn tensors(dir: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{dir}/adapter_model.safetensors"), &Device::Cpu)
        .unwrap()
}

#[test]
fn a_ties_merge_equals_hf_peft_and_says_what_it_wrote() {
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join("ties");
    let merged = merged.to_str().unwrap();
    let (a, b) = (input("gpt2-a"), input("gpt2-b"));
    let reply = ok_json(&run_peft(&[
        "merge",
        "--adapter",
        &a,
        "--adapter",
        &b,
        "--weights",
        "0.6,0.4",
        "--combination",
        "ties",
        "--density",
        "0.5",
        "--majority-sign-method",
        "total",
        "--out",
        merged,
    ]));
    assert_eq!(reply["combination"], "ties");
    assert_eq!(reply["r"], 2);
    assert_eq!(
        reply["modules"], 6,
        "c_attn, attn.c_proj and c_fc of two layers: {reply}"
    );
    assert_eq!(reply["merged"], merged);
    // attn.c_proj keeps rank 1 under r = 2: the pattern HF PEFT leaves out (issue 3737).
    assert_eq!(
        reply["rank_pattern"].as_object().unwrap().len(),
        2,
        "{reply}"
    );

    let config = read_json(&format!("{merged}/adapter_config.json"));
    assert_eq!(
        (config["peft_type"].as_str(), config["r"].as_u64()),
        (Some("LORA"), Some(2))
    );
    let ours = tensors(merged);
    let hf = tensors(&fixture("merge/hf/ties"));
    assert_eq!(ours.len(), hf.len());
    for (key, t) in &hf {
        let diff = peft_core::compare::max_abs_diff(&ours[key], t).unwrap();
        assert!(diff < 1e-4, "{key}: ours and HF PEFT's differ by {diff}");
    }
}

/// `peft logits` of `adapter` on the tiny GPT-2: `[[id, logit], ...]`.
fn top_logits(adapter: &str) -> Vec<(u64, f64)> {
    let reply = ok_json(&run_peft(&[
        "logits",
        "--model",
        &fixture("tiny-gpt2"),
        "--adapter",
        adapter,
        "--ids",
        "5,17,42,8",
        "--top-k",
        "5",
    ]));
    reply["top_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn a_merged_adapter_loads_with_the_logits_of_what_it_merged() {
    // One adapter at weight 1 is that adapter again (rank 1 and 2 modules, alpha 4 folded into the factors).
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join("same");
    let merged = merged.to_str().unwrap();
    let a = input("gpt2-a");
    let reply = ok_json(&run_peft(&[
        "merge",
        "--adapter",
        &a,
        "--weights",
        "1",
        "--out",
        merged,
    ]));
    assert_eq!(
        reply["combination"], "linear",
        "one adapter is reweighted linearly"
    );
    let (ours, original) = (top_logits(merged), top_logits(&a));
    for ((id, x), (id2, y)) in ours.iter().zip(&original) {
        assert_eq!(id, id2);
        assert!((x - y).abs() < 1e-4, "id {id}: merged {x}, original {y}");
    }
}

#[test]
fn wrong_inputs_are_refused_and_nothing_is_written() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("m");
    let target_str = target.to_str().unwrap();
    let (a, c) = (input("gpt2-a"), input("gpt2-c"));
    let merge = |extra: &[&str]| {
        let mut args = vec![
            "merge",
            "--adapter",
            &a,
            "--adapter",
            &c,
            "--out",
            target_str,
        ];
        args.extend_from_slice(extra);
        run_peft(&args)
    };
    fails_with(
        &merge(&["--weights", "0.5,0.5", "--combination", "linear"]),
        &[
            "linear needs adapters of one rank",
            "gpt2-c: 3",
            "use cat or an SVD combination",
        ],
    );
    fails_with(
        &merge(&["--weights", "0.5,0.5", "--combination", "sum"]),
        &["unknown combination \"sum\"", "dare_ties"],
    );
    fails_with(
        &merge(&["--weights", "0.5", "--combination", "cat"]),
        &["1 weight(s) for 2 adapter(s)"],
    );
    fails_with(
        &merge(&[
            "--weights",
            "0.5,0.5",
            "--combination",
            "ties_svd",
            "--density",
            "1.5",
        ]),
        &["ties_svd needs a density in (0, 1]", "1.5"],
    );
    fails_with(
        &merge(&[
            "--weights",
            "0.5,-0.5",
            "--combination",
            "svd",
            "--majority-sign-method",
            "most",
        ]),
        &["unknown majority sign method \"most\""],
    );
    assert!(!target.exists(), "nothing written for refused merges");
    // A negative first weight is a value, not an option.
    let reply = ok_json(&merge(&["--weights", "-0.5,1", "--combination", "cat"]));
    assert_eq!(reply["r"], 5);
    assert_eq!(reply["weights"], serde_json::json!([-0.5, 1.0]));
}
