//! The real GGUF models loaded with their weights kept quantized (`LoadOptions::keep_quantized`) against the
//! same files dequantized to f32: the same weights (bit for bit, llama.cpp's dequantization), so the logits
//! differ only by the summation order of the block-by-block products. Also what the quantized base holds and
//! refuses. Needs the zoo's `smollm2-135m` and `gemma3-270m` (skipped, saying so, without them).

use std::path::Path;

use candle_core::{Device, Tensor};
use peft_core::hooks::NoHooks;
use peft_core::model::Batch;
use peft_models::gguf::load_gguf_with;
use peft_models::{LoadOptions, LoadedModel};

/// Texts of a few dozen tokens each, with non-ASCII and digits.
const TEXTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog, then rests under the old oak tree.",
    "Parameter-efficient fine-tuning keeps 99.9% of the weights frozen: 135M parameters, 0.1% trained.",
    "Le modèle gèle ses poids ; seul l'adaptateur apprend. 東京は大きい。",
];

/// Largest |logit difference| allowed between the two paths: the logits are of order 10-30 and each is a sum
/// of hundreds of products, so summation order moves them by about 1e-5; 1e-3 leaves room and still catches
/// a wrong row, block or scale (which moves them by 1 or more).
const TOLERANCE: f32 = 1e-3;

fn load(path: &Path, keep_quantized: bool) -> LoadedModel {
    let options = LoadOptions {
        keep_quantized,
        ..Default::default()
    };
    load_gguf_with(path, &Device::Cpu, options).unwrap()
}

fn logits(loaded: &LoadedModel, text: &str) -> Tensor {
    let ids = loaded
        .tokenizer
        .as_ref()
        .unwrap()
        .encode(text, true)
        .unwrap()
        .get_ids()
        .to_vec();
    let batch = Batch::single(&ids, &Device::Cpu).unwrap();
    let model = loaded.model.as_ref();
    let out = model.forward(&batch, &NoHooks).unwrap();
    model.logits(&out.hidden).unwrap()
}

/// Compares the two loads of `path`; returns the largest logit difference over [`TEXTS`].
fn compare(name: &str, path: &Path, formats: &[&str]) -> f32 {
    let dense = load(path, false);
    let quantized = load(path, true);
    let storage = &quantized.model.spec().weight_storage;
    for f in formats {
        assert!(
            storage.contains_key(*f),
            "{name}: no {f} weights kept: {storage:?}"
        );
    }
    assert_eq!(
        dense.model.spec().num_parameters,
        quantized.model.spec().num_parameters,
        "{name}: both loads count every parameter"
    );
    let dense_bytes: usize = dense
        .model
        .spec()
        .weight_storage
        .values()
        .map(|s| s.bytes)
        .sum();
    let quantized_bytes: usize = storage.values().map(|s| s.bytes).sum();
    assert!(
        quantized_bytes * 3 < dense_bytes,
        "{name}: {quantized_bytes} quantized bytes against {dense_bytes} in f32"
    );
    let mut worst = 0f32;
    for text in TEXTS {
        let (a, b) = (logits(&dense, text), logits(&quantized, text));
        let diff = peft_core::compare::max_abs_diff(&a, &b).unwrap();
        worst = worst.max(diff);
    }
    println!(
        "{name}: max |logit diff| quantized vs f32 {worst:e}; weights {quantized_bytes} bytes against {dense_bytes}"
    );
    worst
}

#[test]
fn smollm2_quantized_logits_equal_the_f32_paths() {
    let Some(path) = peft_testing::zoo_model_path("smollm2-135m", "PEFT_SMOLLM2_GGUF") else {
        return;
    };
    let worst = compare("smollm2-135m", &path, &["q4_1", "q8_0"]);
    assert!(worst < TOLERANCE, "smollm2-135m: logits differ by {worst}");
}

#[test]
fn gemma3_quantized_logits_equal_the_f32_paths() {
    let Some(path) = peft_testing::zoo_model_path("gemma3-270m", "PEFT_GEMMA3_GGUF") else {
        return;
    };
    let worst = compare("gemma3-270m", &path, &["q4_k", "q5_0", "q6_k", "q8_0"]);
    assert!(worst < TOLERANCE, "gemma3-270m: logits differ by {worst}");
}

#[test]
fn a_quantized_base_refuses_merging_and_full_fine_tuning() {
    let Some(path) = peft_testing::zoo_model_path("smollm2-135m", "PEFT_SMOLLM2_GGUF") else {
        return;
    };
    let mut quantized = load(&path, true);
    let site = quantized
        .model
        .spec()
        .sites_with_any_role(&[peft_core::spec::Role::Query])[0];
    let layer = quantized.model.frozen_linear_mut(site).unwrap();
    let (out, inp) = layer.dims();
    let zeros = Tensor::zeros((out, inp), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = layer.add_to_weight(&zeros).unwrap_err().to_string();
    assert!(err.contains("quantized") && err.contains("f32"), "{err}");

    let options = LoadOptions {
        keep_quantized: true,
        trainable_weights: true,
        ..Default::default()
    };
    let err = load_gguf_with(&path, &Device::Cpu, options)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("full fine-tuning"), "{err}");
}
