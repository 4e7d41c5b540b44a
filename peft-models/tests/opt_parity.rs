//! Parity of OPT with Hugging Face transformers: the committed fixtures (written by
//! `scripts/reference/opt_model.py`) hold tiny `OPTForCausalLM` folders (pre-norm; post-norm with
//! `project_in` / `project_out`; untied, bias-free, non-affine norms) and the float32 logits transformers
//! computes for them: plain, right-padded, left-padded, and with a key/value prefix given as past key values. The
//! folders are loaded with `load_folder` and the logits must agree within 1e-4 at every position that attends
//! to at least one key. Padded positions are compared too (transformers gives them position -1, and so do we);
//! only a query row that sees no key at all (the leading pads of a left-padded row) is left out, since there
//! transformers' eager softmax spreads over every key, future ones included, and the row is meaningless.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use peft_core::hooks::{Hooks, NoHooks};
use peft_core::model::Batch;
use peft_models::folder::load_folder;
use peft_testing::nested_tensor;
use peft_testing::RecordedPrefix;
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn load(name: &str) -> (peft_models::LoadedModel, Value) {
    peft_testing::fixture_model(name, "logits.json", "opt_model.py")
}

/// The largest absolute differences of one case: over the real tokens, and over every position that sees a key
/// (padding included).
struct CaseDiff {
    real: f32,
    seen: f32,
}

/// Compares `ours` and `expected` `[batch, seq, vocab]` position by position.
fn case_diff(ours: &Tensor, expected: &Tensor, mask: &[Vec<f32>], prefix: usize) -> CaseDiff {
    let diff = (ours - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max(2)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut out = CaseDiff {
        real: 0.0,
        seen: 0.0,
    };
    for (row, m) in diff.iter().zip(mask) {
        let mut sees_a_key = prefix > 0;
        for (t, d) in row.iter().enumerate() {
            sees_a_key |= m[t] == 1.0;
            if m[t] == 1.0 {
                out.real = out.real.max(*d);
            }
            if sees_a_key {
                out.seen = out.seen.max(*d);
            }
        }
    }
    out
}

/// Checks every case of a fixture; returns the largest absolute logit difference.
fn check(name: &str) -> f32 {
    let (loaded, record) = load(name);
    let model = loaded.model.as_ref();
    assert_eq!(model.spec().architecture, "opt");
    let mut worst = 0f32;
    let cases = record["cases"].as_array().expect("cases");
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "single",
            "right_padded_batch",
            "left_padded_batch",
            "batch_with_kv_prefix"
        ]
    );
    for case in cases {
        let case_name = case["name"].as_str().unwrap();
        let ids = nested_tensor(&case["input_ids"])
            .to_dtype(DType::U32)
            .unwrap();
        let mut mask = nested_tensor(&case["attention_mask"]);
        let expected = nested_tensor(&case["logits"]);
        let mut prefix_len = 0;
        let hooks: Box<dyn Hooks> = match case.get("prefix").filter(|p| !p.is_null()) {
            Some(prefix) => {
                let p = prefix["len"].as_u64().unwrap() as usize;
                prefix_len = p;
                let keys = nested_tensor(&prefix["key"]);
                let values = nested_tensor(&prefix["value"]);
                // HF's mask covers prefix and tokens; the batch carries the tokens' part, the model adds the
                // prefix (all ones in the fixture, as HF PEFT does).
                let width = mask.dim(1).unwrap();
                let prefix_mask = mask
                    .narrow(1, 0, p)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                assert!(prefix_mask.iter().all(|&m| m == 1.0));
                mask = mask.narrow(1, p, width - p).unwrap();
                Box::new(RecordedPrefix::new(&keys, &values))
            }
            None => Box::new(NoHooks),
        };
        let rows = mask.to_vec2::<f32>().unwrap();
        let batch = Batch::new(ids, mask).unwrap();
        let out = model.forward(&batch, hooks.as_ref()).unwrap();
        assert_eq!(out.virtual_tokens, 0);
        let logits = model.logits(&out.hidden).unwrap();
        assert_eq!(
            logits.dims(),
            expected.dims(),
            "{name}/{case_name}: logits shape"
        );
        let diff = case_diff(&logits, &expected, &rows, prefix_len);
        println!(
            "{name}/{case_name}: max |logit diff| real tokens {:.3e}, every position that sees a key {:.3e}",
            diff.real, diff.seen
        );
        assert!(
            diff.real < TOLERANCE && diff.seen < TOLERANCE,
            "{name}/{case_name}: logits differ from transformers by {} (real tokens) / {} (every position)",
            diff.real,
            diff.seen
        );
        worst = worst.max(diff.seen);
    }
    worst
}

#[test]
fn pre_ln_opt_matches_transformers() {
    let worst = check("tiny-opt");
    println!("tiny-opt: worst {worst:.3e}");
}

#[test]
fn post_ln_opt_with_projections_matches_transformers() {
    let worst = check("tiny-opt/post-ln-proj");
    println!("tiny-opt/post-ln-proj: worst {worst:.3e}");
}

#[test]
fn untied_bias_free_opt_matches_transformers() {
    let worst = check("tiny-opt/untied-no-bias");
    println!("tiny-opt/untied-no-bias: worst {worst:.3e}");
}

#[test]
fn folders_carry_spec_tokenizer_eos_and_parameter_count() {
    for (name, width, sites) in [
        ("tiny-opt", 32, 17),
        ("tiny-opt/post-ln-proj", 16, 18),
        ("tiny-opt/untied-no-bias", 32, 16),
    ] {
        let (loaded, record) = load(name);
        let spec = loaded.model.spec();
        assert_eq!(
            (
                spec.architecture.as_str(),
                spec.num_layers,
                spec.hidden_size,
                spec.num_heads,
                spec.num_kv_heads,
                spec.head_dim,
                spec.vocab_size,
                spec.max_positions,
            ),
            ("opt", 2, width, 4, 4, 8, 100, 64),
            "{name}"
        );
        assert_eq!(spec.sites.len(), sites, "{name}");
        assert!(spec.name_or_path.ends_with(name), "{name}");
        assert_eq!(loaded.eos_token_id, Some(2), "{name}");
        // transformers' num_parameters() counts a tied head once, as the spec does.
        let expected = record["num_parameters"].as_u64().expect("num_parameters") as usize;
        assert_eq!(spec.num_parameters, expected, "{name}");
    }
    let (loaded, _) = load("tiny-opt");
    let tokenizer = loaded.tokenizer.expect("tiny-opt has a tokenizer.json");
    assert_eq!(
        tokenizer.encode("w5 w17", false).unwrap().get_ids(),
        &[5, 17]
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny-opt/post-ln-proj");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu)
        .expect("the fixture's weights");
    let missing = "model.decoder.project_out.weight";
    assert!(tensors.remove(missing).is_some());
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let err = load_folder(dir.path(), &Device::Cpu)
        .err()
        .expect("a checkpoint without project_out does not load")
        .to_string();
    assert!(err.contains(missing), "{err}");
}
