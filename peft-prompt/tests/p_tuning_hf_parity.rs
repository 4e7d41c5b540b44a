//! P-tuning interoperates with HF PEFT in both directions, on fixtures written by `scripts/reference/p_tuning.py`:
//! adapters HF PEFT saved load here with HF's logits, our encoder computes torch's output from torch's weights
//! (MLP and LSTM) with HF PEFT's trainable-parameter count, and adapters trained here load in HF PEFT with our
//! logits.
//!
//! `PEFT_WRITE_FIXTURES=1 cargo test -p peft-prompt --test p_tuning_hf_parity` rewrites the `ours-*p-tuning*`
//! adapters (then run the script's `ours` mode to refresh `hf_logits.json`).

use candle_core::Device;
use peft_core::adapter_io::load_adapter;
use peft_core::method::{Adapter, PeftMethod};
use peft_models::LoadedModel;
use peft_prompt::{PromptEncoderConfig, PromptEncoderReparameterizationType as Kind};
use peft_testing::{
    fixture, full_logits_diff, hf_fixture, hf_logits, init_loaded, ours_fixture, read_json,
    smollm2, text_cases_top_diffs, text_lm_task, tiny, top_logits_diff, toy_trained, train,
    write_fixture, writing_fixtures,
};

const TINY: [&str; 2] = ["tiny-gpt2", "tiny-llama"];
const KINDS: [&str; 2] = ["mlp", "lstm"];

#[test]
fn hf_p_tuning_adapters_load_with_equal_logits_on_tiny_models() {
    for name in TINY {
        let loaded = tiny(name);
        for kind in KINDS {
            let dir = fixture(&format!("adapters/hf-{name}-p-tuning-{kind}"));
            let (adapter, reference) = hf_fixture(&dir, &mut init_loaded(&loaded, 0));
            for case in reference["cases"].as_array().unwrap() {
                let diff = full_logits_diff(loaded.model.as_ref(), adapter.as_ref(), case);
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
            let adapter = cfg.build(&mut init_loaded(&loaded, 0)).unwrap();
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
    let (adapter, report) = toy_trained(loaded, &cfg, 0.01);
    assert!(report.losses.iter().all(|l| l.is_finite()));
    adapter
}

#[test]
fn our_p_tuning_adapters_load_in_hf_peft_with_equal_logits() {
    for name in TINY {
        let loaded = tiny(name);
        for kind in KINDS {
            let dir = fixture(&format!("adapters/ours-{name}-p-tuning-{kind}"));
            let fresh = our_trained_adapter(&loaded, name, kind);
            // The committed adapter is what this code writes today (so HF PEFT's logits are about our output).
            let Some(committed) = ours_fixture(&dir, fresh.as_ref(), init_loaded(&loaded, 0))
            else {
                continue;
            };
            for case in hf_logits(&dir)["cases"].as_array().unwrap() {
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

#[test]
fn smollm2_hf_p_tuning_adapter_matches_and_counts_agree() {
    let Some(loaded) = smollm2() else { return };
    let dir = fixture("adapters/hf-smollm2-p-tuning-mlp");
    let adapter = load_adapter(&dir, &mut init_loaded(&loaded, 0)).unwrap();
    let reference = read_json(&dir.join("logits.json"));
    for (text, diff) in text_cases_top_diffs(&loaded, adapter.adapter.as_ref(), &reference) {
        eprintln!("smollm2 HF adapter: max |top-20 logit diff| {diff:.2e}");
        assert!(diff < 1e-3, "max |logit diff| {diff} for {text:?}");
    }
    // The same config, built for training here, has HF PEFT's trainable-parameter count.
    let ours = PromptEncoderConfig::new(8, Kind::Mlp)
        .build(&mut init_loaded(&loaded, 0))
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
    if writing_fixtures() {
        let mut cfg = PromptEncoderConfig::new(8, Kind::Mlp);
        cfg.common.base_model_name_or_path = Some("SmolLM2-135M-Instruct.Q4_1.gguf".into());
        let adapter = cfg.build(&mut init_loaded(&loaded, 7)).unwrap();
        let task = text_lm_task(loaded.tokenizer.as_ref().unwrap(), &SMOL_TRAIN);
        train(loaded.model.as_ref(), adapter.as_ref(), &task, 3, 2, 1e-3);
        write_fixture(&dir, adapter.as_ref(), loaded.model.as_ref());
        return;
    }
    let adapter = load_adapter(&dir, &mut init_loaded(&loaded, 0)).unwrap();
    for case in hf_logits(&dir)["cases"].as_array().unwrap() {
        let diff = top_logits_diff(loaded.model.as_ref(), adapter.adapter.as_ref(), case);
        eprintln!("smollm2 our adapter in HF PEFT: max |top-20 logit diff| {diff:.2e}");
        assert!(diff < 1e-3, "max |logit diff| vs HF PEFT {diff}");
    }
}
