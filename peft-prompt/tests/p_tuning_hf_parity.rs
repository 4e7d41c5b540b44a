//! P-tuning interoperates with HF PEFT in both directions, on fixtures written by `scripts/reference/p_tuning.py`:
//! adapters HF PEFT saved load here with HF's logits, our encoder computes torch's output from torch's weights
//! (MLP and LSTM) with HF PEFT's trainable-parameter count, and adapters trained here load in HF PEFT with our
//! logits.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-prompt --test p_tuning_hf_parity` rewrites the `ours-*p-tuning*`
//! adapters (then run the script's `ours` mode to refresh `hf_logits.json`).

use std::path::{Path, PathBuf};

use candle_core::Device;
use peft_core::adapter_io::{load_adapter, save_adapter};
use peft_core::generate::last_logits;
use peft_core::hooks::Hooks;
use peft_core::method::{Adapter, InitCtx, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::task::{CausalLm, LmExample};
use peft_core::train::{TrainConfig, Trainer};
use peft_models::LoadedModel;
use peft_prompt::{PromptEncoderConfig, PromptEncoderReparameterizationType as Kind};
use rand::SeedableRng;
use serde_json::Value;

const TINY: [&str; 2] = ["tiny-gpt2", "tiny-llama"];
const KINDS: [&str; 2] = ["mlp", "lstm"];

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn tiny(name: &str) -> LoadedModel {
    peft_models::load_folder(&fixture(name), &Device::Cpu).unwrap()
}

fn init(loaded: &LoadedModel, seed: u64) -> InitCtx<'_> {
    InitCtx {
        model: loaded.model.as_ref(),
        tokenizer: loaded.tokenizer.as_ref(),
        rng: rand::rngs::StdRng::seed_from_u64(seed),
    }
}

fn ids_of(case: &Value) -> Vec<u32> {
    case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// Max |ours - reference| over the full-vocabulary last-position logits.
fn full_logits_diff(model: &dyn BaseModel, hooks: &dyn Hooks, case: &Value) -> f32 {
    let ours: Vec<f32> = last_logits(model, hooks, &ids_of(case))
        .unwrap()
        .to_vec1()
        .unwrap();
    let reference = case["logits"].as_array().unwrap();
    assert_eq!(ours.len(), reference.len());
    ours.iter()
        .zip(reference)
        .map(|(a, b)| (a - b.as_f64().unwrap() as f32).abs())
        .fold(0.0, f32::max)
}

/// Max |ours - reference| over a top-20 reference; the top-1 token must agree.
fn top_logits_diff(model: &dyn BaseModel, hooks: &dyn Hooks, case: &Value) -> f32 {
    let ours: Vec<f32> = last_logits(model, hooks, &ids_of(case))
        .unwrap()
        .to_vec1()
        .unwrap();
    let top = case["top"].as_array().unwrap();
    let best = (0..ours.len())
        .max_by(|&a, &b| ours[a].total_cmp(&ours[b]))
        .unwrap();
    assert_eq!(
        best as u64,
        top[0][0].as_u64().unwrap(),
        "different top-1 token"
    );
    top.iter()
        .map(|p| (ours[p[0].as_u64().unwrap() as usize] - p[1].as_f64().unwrap() as f32).abs())
        .fold(0.0, f32::max)
}

#[test]
fn hf_p_tuning_adapters_load_with_equal_logits_on_tiny_models() {
    for name in TINY {
        let loaded = tiny(name);
        for kind in KINDS {
            let dir = fixture(&format!("adapters/hf-{name}-p-tuning-{kind}"));
            let adapter = load_adapter(&dir, &mut init(&loaded, 0)).unwrap();
            assert!(adapter.warnings.is_empty(), "{:?}", adapter.warnings);
            for case in read_json(&dir.join("logits.json"))["cases"]
                .as_array()
                .unwrap()
            {
                let diff = full_logits_diff(loaded.model.as_ref(), adapter.adapter.as_ref(), case);
                eprintln!("{name} {kind}: HF adapter, max |logit diff| {diff:.2e}");
                assert!(diff < 1e-4, "{name} {kind}: max |logit diff| {diff}");
            }
        }
    }
}

/// Our encoder, given the weights of HF PEFT's (its torch state dict), computes the output HF PEFT saved, has
/// HF PEFT's trainable-parameter count and, as a training adapter, gives HF's logits.
#[test]
fn our_encoder_equals_torch_on_the_same_weights() {
    for name in TINY {
        let loaded = tiny(name);
        for kind in KINDS {
            let dir = fixture(&format!("adapters/hf-{name}-p-tuning-{kind}"));
            let mut cfg: PromptEncoderConfig = serde_json::from_str(
                &std::fs::read_to_string(dir.join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            cfg.common.inference_mode = false;
            let adapter = cfg.build(&mut init(&loaded, 0)).unwrap();
            let reference = read_json(&dir.join("logits.json"));
            assert_eq!(
                adapter.num_trainable() as u64,
                reference["trainable_params"].as_u64().unwrap(),
                "{name} {kind}: trainable parameters differ from HF PEFT's"
            );
            let state =
                candle_core::safetensors::load(dir.join("encoder.safetensors"), &Device::Cpu)
                    .unwrap();
            let mut ours: Vec<String> = adapter.trainable().into_iter().map(|(n, _)| n).collect();
            let mut torch: Vec<String> = state.keys().cloned().collect();
            ours.sort();
            torch.sort();
            assert_eq!(
                ours, torch,
                "{name} {kind}: parameter names differ from torch's"
            );
            adapter.load_tensors(&state).unwrap();

            let saved =
                candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
                    .unwrap();
            let output = &adapter.tensors().unwrap()[0].1;
            let diff =
                peft_core::compare::max_abs_diff(output, &saved["prompt_embeddings"]).unwrap();
            eprintln!("{name} {kind}: encoder output vs torch, max |diff| {diff:.2e}");
            assert!(
                diff < 1e-5,
                "{name} {kind}: encoder output differs from torch's by {diff}"
            );
            for case in reference["cases"].as_array().unwrap() {
                let diff = full_logits_diff(loaded.model.as_ref(), adapter.as_ref(), case);
                assert!(
                    diff < 1e-4,
                    "{name} {kind}: training-mode logits differ by {diff}"
                );
            }
        }
    }
}

fn kind_of(kind: &str) -> Kind {
    match kind {
        "mlp" => Kind::Mlp,
        _ => Kind::Lstm,
    }
}

/// Our adapter for a tiny fixture model (seed 7, 4 virtual tokens, LSTM hidden 16), after 5 steps of
/// causal-LM training through the shared trainer.
fn our_trained_adapter(loaded: &LoadedModel, name: &str, kind: &str) -> Box<dyn Adapter> {
    let mut cfg = PromptEncoderConfig::new(4, kind_of(kind));
    cfg.common.base_model_name_or_path = Some(name.to_string());
    if kind == "lstm" {
        cfg.encoder_hidden_size = Some(16);
    }
    let adapter = cfg.build(&mut init(loaded, 7)).unwrap();
    let seqs: Vec<LmExample> = [
        [5u32, 6, 7, 8, 9, 10],
        [11, 12, 13, 14, 15, 16],
        [20, 21, 20, 21, 20, 21],
    ]
    .iter()
    .map(|s| LmExample {
        input_ids: s.to_vec(),
        labels: s.iter().map(|&i| i as i64).collect(),
    })
    .collect();
    let task = CausalLm::new(seqs.clone(), seqs, 0).unwrap();
    let out = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        max_steps: 5,
        batch_size: 2,
        learning_rate: 0.01,
        output_dir: out.path().to_path_buf(),
        progress: false,
        ..TrainConfig::default()
    };
    let report = Trainer::new(loaded.model.as_ref(), adapter.as_ref(), &task, config)
        .run()
        .unwrap();
    assert!(report.losses.iter().all(|l| l.is_finite()));
    adapter
}

#[test]
fn our_p_tuning_adapters_load_in_hf_peft_with_equal_logits() {
    let write = std::env::var_os("PEFT_WRITE_FIXTURES").is_some();
    for name in TINY {
        let loaded = tiny(name);
        for kind in KINDS {
            let dir = fixture(&format!("adapters/ours-{name}-p-tuning-{kind}"));
            let fresh = our_trained_adapter(&loaded, name, kind);
            if write {
                save_adapter(&dir, fresh.as_ref(), loaded.model.spec()).unwrap();
                eprintln!("wrote {}", dir.display());
                continue;
            }
            // The committed adapter is what this code writes today (so HF PEFT's logits are about our output).
            let committed = load_adapter(&dir, &mut init(&loaded, 0)).unwrap().adapter;
            let (a, b) = (
                &fresh.tensors().unwrap()[0].1,
                &committed.tensors().unwrap()[0].1,
            );
            let drift = peft_core::compare::max_abs_diff(a, b).unwrap();
            assert!(
                drift < 1e-5,
                "{name} {kind}: training today differs from the committed adapter by {drift}"
            );
            let hf = read_json(&dir.join("hf_logits.json"));
            assert_eq!(hf["peft_loaded"], true);
            for case in hf["cases"].as_array().unwrap() {
                let diff = full_logits_diff(loaded.model.as_ref(), committed.as_ref(), case);
                eprintln!("{name} {kind}: our adapter in HF PEFT, max |logit diff| {diff:.2e}");
                assert!(
                    diff < 1e-4,
                    "{name} {kind}: max |logit diff| vs HF PEFT {diff}"
                );
            }
        }
    }
}

/// The SmolLM2 GGUF, from `PEFT_SMOLLM2_GGUF` or the zoo cache.
fn smollm2() -> Option<LoadedModel> {
    match peft_models::zoo::local_path("smollm2-135m", "PEFT_SMOLLM2_GGUF") {
        Some(p) if p.is_file() => Some(peft_models::gguf::load_gguf(&p, &Device::Cpu).unwrap()),
        _ => {
            eprintln!(
                "skipping: SmolLM2-135M is not in the zoo cache (run `peft fetch smollm2-135m`)"
            );
            None
        }
    }
}

#[test]
fn smollm2_hf_p_tuning_adapter_matches_and_counts_agree() {
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/hf-smollm2-p-tuning-mlp");
    let adapter = load_adapter(&dir, &mut init(&loaded, 0)).unwrap();
    let reference = read_json(&dir.join("logits.json"));
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let ids = tokenizer
            .encode(case["text"].as_str().unwrap(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, ids_of(case), "input ids differ for {:?}", case["text"]);
        let diff = top_logits_diff(loaded.model.as_ref(), adapter.adapter.as_ref(), case);
        eprintln!("smollm2 HF adapter: max |top-20 logit diff| {diff:.2e}");
        assert!(
            diff < 1e-3,
            "max |logit diff| {diff} for {:?}",
            case["text"]
        );
    }
    // The same config, built for training here, has HF PEFT's trainable-parameter count.
    let ours = PromptEncoderConfig::new(8, Kind::Mlp)
        .build(&mut init(&loaded, 0))
        .unwrap();
    assert_eq!(
        ours.num_trainable() as u64,
        reference["trainable_params"].as_u64().unwrap()
    );
}

/// Texts of the SmolLM2 causal-LM toy task our SmolLM2 adapter is trained on.
const SMOL_TRAIN: [&str; 4] = [
    "Review: a gripping film.\nSentiment: positive",
    "Review: dull and long.\nSentiment: negative",
    "Review: wonderful acting.\nSentiment: positive",
    "Review: I left early.\nSentiment: negative",
];

#[test]
fn smollm2_adapter_trained_here_loads_in_hf_peft() {
    let dir = fixture("adapters/ours-smollm2-p-tuning-mlp");
    let Some(loaded) = smollm2() else { return };
    if std::env::var_os("PEFT_WRITE_FIXTURES").is_some() {
        let mut cfg = PromptEncoderConfig::new(8, Kind::Mlp);
        cfg.common.base_model_name_or_path = Some("SmolLM2-135M-Instruct.Q4_1.gguf".into());
        let adapter = cfg.build(&mut init(&loaded, 7)).unwrap();
        let tokenizer = loaded.tokenizer.as_ref().unwrap();
        let seqs: Vec<LmExample> = SMOL_TRAIN
            .iter()
            .map(|t| {
                let ids = tokenizer.encode(*t, true).unwrap().get_ids().to_vec();
                LmExample {
                    labels: ids.iter().map(|&i| i as i64).collect(),
                    input_ids: ids,
                }
            })
            .collect();
        let task = CausalLm::new(seqs.clone(), seqs, 0).unwrap();
        let out = tempfile::tempdir().unwrap();
        let config = TrainConfig {
            max_steps: 3,
            batch_size: 2,
            learning_rate: 1e-3,
            output_dir: out.path().to_path_buf(),
            progress: false,
            ..TrainConfig::default()
        };
        Trainer::new(loaded.model.as_ref(), adapter.as_ref(), &task, config)
            .run()
            .unwrap();
        save_adapter(&dir, adapter.as_ref(), loaded.model.spec()).unwrap();
        eprintln!("wrote {}", dir.display());
        return;
    }
    let adapter = load_adapter(&dir, &mut init(&loaded, 0)).unwrap();
    let hf = read_json(&dir.join("hf_logits.json"));
    assert_eq!(hf["peft_loaded"], true);
    for case in hf["cases"].as_array().unwrap() {
        let diff = top_logits_diff(loaded.model.as_ref(), adapter.adapter.as_ref(), case);
        eprintln!("smollm2 our adapter in HF PEFT: max |top-20 logit diff| {diff:.2e}");
        assert!(diff < 1e-3, "max |logit diff| vs HF PEFT {diff}");
    }
}
