//! The commands that run a model without training it, as a user runs them: the exact JSON of `peft logits`
//! (with and without adapters, merged or not, decoder-only and encoder-decoder) and `peft embed` against the
//! reference libraries, `peft generate`, and `peft inspect`'s parameter counts.

mod common;

use common::{fails_with, fixture, id_list, ok_json, read_json, run_peft};
use serde_json::Value;

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
    let ids = id_list(&case["input_ids"][0]);
    let out = run_peft(&[
        "logits",
        "--model",
        &fixture("tiny-gpt2"),
        "--ids",
        &ids,
        "--top-k",
        "7",
    ]);
    let json = ok_json(&out);
    assert_eq!(json["input_ids"], case["input_ids"][0]);
    check_top_k(&json, &last_row(&case["logits"][0]), 7);

    // --text goes through the folder's tokenizer.json; the default is 20 logits.
    let json = ok_json(&run_peft(&[
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
    let ids = id_list(&case["input_ids"]);
    let out = run_peft(&[
        "logits",
        "--model",
        &fixture("tiny-llama"),
        "--adapter",
        &dir,
        "--ids",
        &ids,
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
        return;
    };
    let reference = read_json(&fixture("smollm2/logits.json"));
    for case in reference["cases"].as_array().unwrap().iter().take(3) {
        let text = case["text"].as_str().unwrap();
        let json = ok_json(&run_peft(&["logits", "--model", &gguf, "--text", text]));
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
    peft_testing::zoo_model_path("smollm2-135m", "PEFT_SMOLLM2_GGUF")
        .map(|p| p.to_string_lossy().into_owned())
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
    let plain = ok_json(&run_peft(&args));
    let mut merged_args = args.to_vec();
    merged_args.push("--merge");
    let merged = ok_json(&run_peft(&merged_args));
    let (a, b) = (&plain["top_k"], &merged["top_k"]);
    for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
        assert_eq!(x[0], y[0], "merging changed the ranking");
        let d = (x[1].as_f64().unwrap() - y[1].as_f64().unwrap()).abs();
        assert!(d < 1e-4, "merged logits differ by {d}");
    }
    let prompt = fixture("adapters/hf-tiny-gpt2-random");
    fails_with(
        &run_peft(&[
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
fn seq2seq_logits_take_decoder_ids_and_match_transformers() {
    let model = fixture("tiny-t5");
    let refs = read_json(&format!("{model}/logits.json"));
    let case = &refs["cases"][0];
    let ids = id_list(&case["input_ids"][0]);
    let dec = id_list(&case["decoder_input_ids"][0]);
    let json = ok_json(&run_peft(&[
        "logits",
        "--model",
        &model,
        "--ids",
        &ids,
        "--decoder-ids",
        &dec,
        "--top-k",
        "5",
    ]));
    assert_eq!(json["decoder_input_ids"], case["decoder_input_ids"][0]);
    check_top_k(&json, &last_row(&case["logits"][0]), 5);
    // A decoder-only model refuses decoder ids by name.
    let out = run_peft(&[
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
        let json = ok_json(&run_peft(&[
            "embed",
            "--model",
            "minilm-l6",
            "--text",
            text,
        ]));
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
    let a = run_peft(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let text = String::from_utf8_lossy(&a.stdout).into_owned();
    assert!(
        text.starts_with("w1 w2 w3") && text.trim().len() > "w1 w2 w3".len(),
        "{text}"
    );
    assert_eq!(run_peft(&args).stdout, a.stdout);
    let sampled = run_peft(
        &[
            &args[..],
            &["--temperature", "1.5", "--top-p", "0.9", "--seed", "3"],
        ]
        .concat(),
    );
    assert!(sampled.status.success());
}

#[test]
fn inspect_counts_parameters_like_transformers() {
    let json = ok_json(&run_peft(&["inspect", "--model", &fixture("tiny-gpt2")]));
    assert_eq!(
        json["total_parameters"],
        read_json(&fixture("tiny-gpt2/logits.json"))["num_parameters"]
    );
    assert_eq!(json["architecture"], "gpt2");
    let json = ok_json(&run_peft(&[
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
fn generate_batches_prompts_and_mixes_adapters_as_each_prompt_alone() {
    let model = fixture("tiny-gpt2");
    let adapters = [
        fixture("adapters/hf-tiny-gpt2-lora"),
        fixture("adapters/hf-tiny-gpt2-prefix"),
        fixture("adapters/hf-tiny-gpt2-p-tuning-mlp"),
    ];
    let prompts = ["w1 w2 w3", "w7", "w4 w5 w6 w7 w8"];
    let generate = |extra: &[&str]| {
        let out = run_peft(
            &[
                &["generate", "--model", &model, "--max-new-tokens", "5"][..],
                extra,
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Each prompt alone with its adapter, through the cache and through the uncached reference path.
    let mut alone = String::new();
    for (prompt, adapter) in prompts.iter().zip(&adapters) {
        let cached = generate(&["--adapter", adapter, "--prompt", prompt]);
        let uncached = generate(&["--adapter", adapter, "--prompt", prompt, "--no-cache"]);
        assert_eq!(cached, uncached, "{adapter}: cached and uncached differ");
        alone.push_str(&cached);
    }
    // One left-padded batch whose rows use LoRA, prefix tuning and P-tuning.
    let mut mixed_args = Vec::new();
    for (prompt, adapter) in prompts.iter().zip(&adapters) {
        mixed_args.extend(["--adapter", adapter.as_str(), "--prompt", prompt]);
    }
    assert_eq!(generate(&mixed_args), alone);
    let sequential = [&mixed_args[..], &["--sequential"]].concat();
    assert_eq!(generate(&sequential), alone);
    // Two adapters for three prompts is neither one for all nor one each.
    let out = run_peft(&[
        "generate",
        "--model",
        &model,
        "--adapter",
        &adapters[0],
        "--adapter",
        &adapters[1],
        "--prompt",
        "w1",
        "--prompt",
        "w2",
        "--prompt",
        "w3",
    ]);
    fails_with(&out, &["2 --adapter folders for 3 --prompt texts"]);
}
