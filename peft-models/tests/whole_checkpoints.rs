//! A model loads whole or not at all: the Hugging Face fixtures of every architecture, their configs or
//! tensors edited one way at a time, are refused where config and tensors disagree (layer counts, sizes, norm
//! epsilons, integer tensors, tensors left unused), and still load, with the same outputs, where the extra
//! tensors are the buffers and tied copies real checkpoints hold (the allow-lists).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use peft_core::hooks::NoHooks;
use peft_core::model::Batch;
use peft_models::folder::load_folder;
use peft_models::LoadedModel;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

/// A copy of fixture `name` (its files, not its sub-folders), config edited by `edit`, tensors by `tensors`.
fn edited(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
    tensors: impl FnOnce(&mut HashMap<String, Tensor>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture(name);
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let weights_path = dir.path().join("model.safetensors");
    let mut weights = candle_core::safetensors::load(&weights_path, &Device::Cpu).unwrap();
    tensors(&mut weights);
    candle_core::safetensors::save(&weights, &weights_path).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    match load_folder(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The final states (and logits, where the model has a head) of a short batch.
fn outputs(loaded: &LoadedModel) -> Vec<f32> {
    let model = loaded.model.as_ref();
    let dev = model.device().clone();
    let mut batch = Batch::single(&[2, 5, 9], &dev).unwrap();
    if model.spec().is_encoder_decoder {
        let decoder = Tensor::new(&[[0u32, 7]], &dev).unwrap();
        batch = batch.with_decoder_input_ids(decoder).unwrap();
    }
    let hidden = model.forward(&batch, &NoHooks).unwrap().hidden;
    let out = match model.lm_head() {
        Some(_) => model.logits(&hidden).unwrap(),
        None => hidden,
    };
    out.flatten_all().unwrap().to_vec1().unwrap()
}

const ARCHITECTURES: [(&str, &str, &str); 5] = [
    ("tiny-gpt2", "n_layer", "layer_norm_epsilon"),
    ("tiny-llama", "num_hidden_layers", "rms_norm_eps"),
    ("tiny-opt", "num_hidden_layers", ""),
    ("tiny-bert", "num_hidden_layers", "layer_norm_eps"),
    ("tiny-t5", "num_layers", "layer_norm_epsilon"),
];

#[test]
fn a_config_with_fewer_or_more_layers_than_the_checkpoint_is_refused() {
    for (name, key, _) in ARCHITECTURES {
        for layers in [1u64, 3, 1_000_000_000_000] {
            let dir = edited(name, |c| c[key] = layers.into(), |_| {});
            let err = load_err(dir.path());
            assert!(
                err.contains(&format!("`{key}` = {layers}"))
                    && err.contains("holds 2 layers")
                    && err.contains("config.json"),
                "{name}: {err}"
            );
        }
    }
    let dir = edited("tiny-t5", |c| c["num_decoder_layers"] = 1.into(), |_| {});
    let err = load_err(dir.path());
    assert!(
        err.contains("`num_decoder_layers` = 1") && err.contains("decoder.block"),
        "{err}"
    );
}

#[test]
fn zero_or_absurd_sizes_are_refused_by_key() {
    let cases = [
        ("tiny-gpt2", "n_head", 0u64),
        ("tiny-gpt2", "n_positions", 1 << 40),
        ("tiny-llama", "vocab_size", 0),
        ("tiny-llama", "num_attention_heads", 0),
        ("tiny-llama", "max_position_embeddings", u64::MAX),
        ("tiny-opt", "ffn_dim", 0),
        ("tiny-opt", "max_position_embeddings", u64::MAX),
        ("tiny-bert", "intermediate_size", 1 << 40),
        ("tiny-t5", "d_model", 1 << 40),
    ];
    for (name, key, value) in cases {
        let dir = edited(name, |c| c[key] = value.into(), |_| {});
        let err = load_err(dir.path());
        assert!(
            err.contains(key) && err.contains("config.json"),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_zero_or_negative_norm_epsilon_is_refused_by_key() {
    for (name, _, eps_key) in ARCHITECTURES {
        if eps_key.is_empty() {
            continue; // OPT's epsilon is fixed, not in its config
        }
        for eps in [-1e-5, 0.0] {
            let dir = edited(name, |c| c[eps_key] = eps.into(), |_| {});
            let err = load_err(dir.path());
            assert!(
                err.contains(&format!("`{eps_key}`")) && err.contains("above 0"),
                "{name}: {err}"
            );
        }
    }
}

#[test]
fn an_integer_tensor_read_as_weights_is_refused_with_its_dtype() {
    for dtype in [DType::I32, DType::I64, DType::U8] {
        let name = "model.layers.1.mlp.up_proj.weight";
        let dir = edited(
            "tiny-llama",
            |_| {},
            |w| {
                let t = w[name].to_dtype(dtype).unwrap();
                w.insert(name.into(), t);
            },
        );
        let err = load_err(dir.path());
        assert!(
            err.contains(name) && err.contains(&format!("{dtype:?}")),
            "{err}"
        );
    }
}

#[test]
fn a_tensor_the_model_does_not_use_is_refused_by_name() {
    let dir = edited(
        "tiny-opt",
        |_| {},
        |w| {
            for i in 0..7 {
                let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
                w.insert(format!("model.decoder.extra_{i}.weight"), t);
            }
        },
    );
    let err = load_err(dir.path());
    assert!(
        err.contains("7 tensor(s)")
            && err.contains("model.decoder.extra_0.weight")
            && err.contains("and 2 more"),
        "{err}"
    );
    // An untied config's checkpoint holds `lm_head.weight`; the same tensor under a tied config is the
    // allowed copy, but an untied head's absence is a missing tensor, and a bias the config says is absent
    // (`enable_bias = false`) is unused.
    let dir = edited("tiny-opt", |c| c["enable_bias"] = false.into(), |_| {});
    let err = load_err(dir.path());
    assert!(
        err.contains("does not use") && err.contains(".bias"),
        "{err}"
    );
}

#[test]
fn buffers_and_tied_copies_real_checkpoints_hold_load_and_change_nothing() {
    let zeros = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, &Device::Cpu).unwrap();
    type Extra = Vec<(&'static str, Tensor)>;
    let cases: Vec<(&str, Extra)> = vec![
        (
            "tiny-gpt2",
            vec![
                (
                    "transformer.h.0.attn.bias",
                    zeros(&[1, 1, 64, 64], DType::F32),
                ),
                (
                    "transformer.h.1.attn.bias",
                    zeros(&[1, 1, 64, 64], DType::U8),
                ),
                ("transformer.h.1.attn.masked_bias", zeros(&[], DType::F32)),
                ("lm_head.weight", zeros(&[100, 32], DType::F32)),
            ],
        ),
        (
            "tiny-llama",
            vec![
                (
                    "model.layers.0.self_attn.rotary_emb.inv_freq",
                    zeros(&[4], DType::F32),
                ),
                (
                    "model.layers.1.self_attn.rotary_emb.inv_freq",
                    zeros(&[4], DType::F32),
                ),
            ],
        ),
        (
            "tiny-bert",
            vec![
                ("embeddings.position_ids", zeros(&[1, 64], DType::I64)),
                ("cls.predictions.bias", zeros(&[100], DType::F32)),
                ("classifier.weight", zeros(&[2, 32], DType::F32)),
            ],
        ),
        (
            "tiny-t5",
            vec![
                (
                    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
                    zeros(&[32, 4], DType::F32),
                ),
                ("encoder.embed_tokens.weight", zeros(&[100, 32], DType::F32)),
            ],
        ),
    ];
    for (name, extra) in cases {
        let plain = outputs(&load_folder(&fixture(name), &Device::Cpu).unwrap());
        let dir = edited(
            name,
            |_| {},
            |w| w.extend(extra.into_iter().map(|(n, t)| (n.to_string(), t))),
        );
        let loaded = load_folder(dir.path(), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{name} with its buffers: {e}"));
        assert_eq!(outputs(&loaded), plain, "{name}");
    }
}

#[test]
fn a_tied_llama_head_copy_is_allowed_only_where_the_config_ties() {
    let dir = edited(
        "tiny-llama",
        |c| c["tie_word_embeddings"] = true.into(),
        |_| {},
    );
    // The checkpoint's `lm_head.weight` is the tied copy transformers ignores.
    assert!(load_folder(dir.path(), &Device::Cpu).is_ok());
    let dir = edited(
        "tiny-gpt2",
        |_| {},
        |w| {
            let t = Tensor::zeros((100, 32), DType::F32, &Device::Cpu).unwrap();
            w.insert("model.lm_head.weight".into(), t);
        },
    );
    assert!(load_err(dir.path()).contains("model.lm_head.weight"));
}
