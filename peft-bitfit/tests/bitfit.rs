//! BitFit on the seeded tiny models: which biases the targets choose (counted against the model's own bias
//! tensors), that the adapter starts as the frozen model, that training through the shared trainer moves only
//! the biases and lowers the loss, and that the saved adapter (HF parameter names) loads back exactly.

use std::collections::{BTreeSet, HashMap};

use candle_core::{Device, Tensor};
use peft_bitfit::{BitFit, BitFitConfig, BitFitTargets};
use peft_core::adapter_io::{load_adapter, CONFIG_FILE, WEIGHTS_FILE};
use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::SiteKind;
use peft_core::PeftError;
use peft_testing::{init, toy_classification_task};
use peft_train::generate::last_logits;
use peft_train::task::{Task, Tuned};
use peft_train::train::{TrainConfig, Trainer};

fn modules(names: &[&str]) -> BitFitTargets {
    BitFitTargets::Modules(names.iter().map(|s| s.to_string()).collect())
}

fn build(model: &dyn BaseModel, targets: BitFitTargets) -> Box<dyn Adapter> {
    BitFitConfig::new(targets)
        .build(&mut init(model, 0))
        .unwrap()
}

fn keys(adapter: &dyn Adapter) -> Vec<String> {
    adapter.trainable().into_iter().map(|(k, _)| k).collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

/// The frozen model's own bias tensors, by HF name.
fn frozen_biases(model: &dyn BaseModel) -> HashMap<String, Tensor> {
    model
        .parameters()
        .into_iter()
        .filter(|(n, _)| n.ends_with(".bias"))
        .collect()
}

#[test]
fn all_trains_every_gpt2_bias_from_its_frozen_value() {
    let model = peft_models::tiny::gpt2(1);
    let adapter = build(&model, BitFitTargets::All);
    let frozen = frozen_biases(&model);
    let ours: BTreeSet<String> = keys(adapter.as_ref()).into_iter().collect();
    assert_eq!(ours, frozen.keys().cloned().collect::<BTreeSet<_>>());
    // 2 layers x (ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj) + ln_f.
    assert_eq!(ours.len(), 2 * 6 + 1);
    let expected: usize = frozen.values().map(|t| t.elem_count()).sum();
    assert_eq!(adapter.num_trainable(), expected);
    for (key, var) in adapter.trainable() {
        assert_eq!(
            max_diff(var.as_tensor(), &frozen[&key]),
            0.0,
            "{key} does not start frozen"
        );
    }
    let bitfit = BitFit::new(BitFitConfig::default(), &model).unwrap();
    assert!(bitfit.notes().is_empty(), "{:?}", bitfit.notes());
}

#[test]
fn all_on_llama_adds_a_zero_bias_at_every_linear_site_and_says_so() {
    let model = peft_models::tiny::llama(1);
    assert!(frozen_biases(&model).is_empty(), "tiny LLaMA has no biases");
    let bitfit = BitFit::new(BitFitConfig::default(), &model).unwrap();
    // Every projection's bias has as many entries as its frozen weight has rows.
    let linear: Vec<(String, usize)> = model
        .spec()
        .iter_sites()
        .filter(|(_, s)| matches!(s.kind, SiteKind::Linear { .. }))
        .map(|(id, s)| {
            let rows = model.frozen_linear(id).unwrap().out_features();
            (format!("{}.bias", s.name), rows)
        })
        .collect();
    assert_eq!(linear.len(), 2 * 7);
    assert_eq!(
        bitfit.keys(),
        linear.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()
    );
    assert_eq!(
        bitfit.num_trainable(),
        linear.iter().map(|(_, n)| n).sum::<usize>()
    );
    for (key, var) in bitfit.trainable() {
        let values: Vec<f32> = var.to_vec1().unwrap();
        assert!(values.iter().all(|&v| v == 0.0), "{key} is not zero");
    }
    assert_eq!(bitfit.notes().len(), 1);
    assert!(
        bitfit.notes()[0].contains("14 site(s)")
            && bitfit.notes()[0].contains("model.layers.1.mlp.down_proj.bias"),
        "{:?}",
        bitfit.notes()
    );

    // Without add_missing_biases there is nothing to train: refused with what to do.
    let mut cfg = BitFitConfig {
        add_missing_biases: false,
        ..BitFitConfig::default()
    };
    let err = cfg.build(&mut init(&model, 0)).err().unwrap().to_string();
    assert!(err.contains("add_missing_biases = true"), "{err}");
    cfg.targets = modules(&["q_proj"]);
    let err = cfg.build(&mut init(&model, 0)).err().unwrap().to_string();
    assert!(
        err.contains("model.layers.0.self_attn.q_proj") && err.contains("add_missing_biases"),
        "{err}"
    );
}

#[test]
fn the_untrained_adapter_is_the_frozen_model() {
    let ids = [3u32, 14, 15, 92, 65, 35];
    for model in [
        Box::new(peft_models::tiny::gpt2(2)) as Box<dyn BaseModel>,
        Box::new(peft_models::tiny::llama(2)),
    ] {
        let plain = last_logits(model.as_ref(), &NoHooks, &ids).unwrap();
        // Norm sites too: an RMS norm named explicitly gets a zero bias.
        let norms = if model.spec().architecture == "llama" {
            modules(&["input_layernorm", "model.norm"])
        } else {
            modules(&["ln_1", "ln_f"])
        };
        for targets in [BitFitTargets::All, BitFitTargets::Paper, norms] {
            let adapter = build(model.as_ref(), targets.clone());
            let ours = last_logits(model.as_ref(), adapter.as_ref(), &ids).unwrap();
            let diff = max_diff(&plain, &ours);
            assert!(
                diff < 1e-5,
                "{} {targets:?}: untrained BitFit changes the logits by {diff}",
                model.spec().architecture
            );
        }
    }
}

#[test]
fn the_paper_preset_trains_query_and_second_mlp_biases() {
    let gpt2 = peft_models::tiny::gpt2(0);
    let bitfit = BitFit::new(BitFitConfig::new(BitFitTargets::Paper), &gpt2).unwrap();
    assert_eq!(
        bitfit.keys(),
        [
            "transformer.h.0.attn.c_attn.bias",
            "transformer.h.0.mlp.c_fc.bias",
            "transformer.h.1.attn.c_attn.bias",
            "transformer.h.1.mlp.c_fc.bias"
        ]
    );
    let frozen = frozen_biases(&gpt2);
    let expected: usize = bitfit.keys().iter().map(|k| frozen[*k].elem_count()).sum();
    assert_eq!(bitfit.num_trainable(), expected);
    assert_eq!(expected, 2 * (3 * 32 + 4 * 32));
    assert!(
        bitfit.notes().iter().any(|n| n.contains("fuses")),
        "{:?}",
        bitfit.notes()
    );
    // The preset is the same as naming its modules.
    let named = BitFit::new(BitFitConfig::new(modules(&["c_attn", "mlp.c_fc"])), &gpt2).unwrap();
    assert_eq!(named.keys(), bitfit.keys());

    let llama = peft_models::tiny::llama(0);
    let bitfit = BitFit::new(BitFitConfig::new(BitFitTargets::Paper), &llama).unwrap();
    assert_eq!(
        bitfit.keys(),
        [
            "model.layers.0.self_attn.q_proj.bias",
            "model.layers.0.mlp.gate_proj.bias",
            "model.layers.0.mlp.up_proj.bias",
            "model.layers.1.self_attn.q_proj.bias",
            "model.layers.1.mlp.gate_proj.bias",
            "model.layers.1.mlp.up_proj.bias"
        ]
    );
    // q_proj: heads x head_dim outputs; gate_proj and up_proj: intermediate outputs.
    let spec = llama.spec();
    assert_eq!(
        bitfit.num_trainable(),
        2 * (spec.num_heads * spec.head_dim + 2 * 64)
    );
    assert!(
        bitfit.notes()[0].contains("6 site(s)"),
        "{:?}",
        bitfit.notes()
    );
}

#[test]
fn module_names_match_short_names_and_suffixes() {
    let gpt2 = peft_models::tiny::gpt2(0);
    let adapter = build(&gpt2, modules(&["c_proj"]));
    assert_eq!(
        keys(adapter.as_ref()),
        [
            "transformer.h.0.attn.c_proj.bias",
            "transformer.h.0.mlp.c_proj.bias",
            "transformer.h.1.attn.c_proj.bias",
            "transformer.h.1.mlp.c_proj.bias"
        ]
    );
    let adapter = build(&gpt2, modules(&["h.1.ln_2", "ln_f"]));
    assert_eq!(
        keys(adapter.as_ref()),
        ["transformer.h.1.ln_2.bias", "transformer.ln_f.bias"]
    );
    assert_eq!(adapter.num_trainable(), 2 * 32);
}

#[test]
fn an_unknown_target_lists_the_candidates() {
    let gpt2 = peft_models::tiny::gpt2(0);
    let err = BitFitConfig::new(modules(&["c_attn", "q_proj"]))
        .build(&mut init(&gpt2, 0))
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, PeftError::Config(_)), "{msg}");
    for expected in [
        "`q_proj`",
        "c_attn",
        "ln_1",
        "c_fc",
        "attn.c_proj",
        "mlp.c_proj",
        "ln_f",
    ] {
        assert!(msg.contains(expected), "{expected} missing from: {msg}");
    }
    // Layer indices are not offered as parents.
    assert!(!msg.contains("0.ln_1"), "{msg}");
    let llama = peft_models::tiny::llama(0);
    let msg = BitFitConfig::new(modules(&["c_attn"]))
        .build(&mut init(&llama, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("q_proj")
            && msg.contains("down_proj")
            && msg.contains("post_attention_layernorm"),
        "{msg}"
    );
    let msg = BitFitConfig::new(modules(&[]))
        .build(&mut init(&llama, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("empty") && msg.contains("q_proj"), "{msg}");
}

#[test]
fn targets_read_and_write_as_a_name_or_a_list() {
    let read = |json: &str| serde_json::from_str::<Box<dyn PeftMethod>>(json);
    let cfg = read(r#"{"peft_type": "BITFIT"}"#).unwrap();
    let saved = serde_json::to_value(&cfg).unwrap();
    assert_eq!(saved["targets"], "all");
    assert_eq!(saved["add_missing_biases"], true);
    assert_eq!(saved["peft_type"], "BITFIT");
    let cfg = read(r#"{"peft_type": "BITFIT", "targets": "paper", "add_missing_biases": false}"#)
        .unwrap();
    let saved = serde_json::to_value(&cfg).unwrap();
    assert_eq!(saved["targets"], "paper");
    assert_eq!(saved["add_missing_biases"], false);
    let cfg = read(r#"{"peft_type": "BITFIT", "targets": ["c_attn"]}"#).unwrap();
    assert_eq!(
        serde_json::to_value(&cfg).unwrap()["targets"],
        serde_json::json!(["c_attn"])
    );
    let err = read(r#"{"peft_type": "BITFIT", "targets": "c_attn"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"all\", \"paper\" or a list"), "{err}");
}

#[test]
fn training_moves_only_the_biases_lowers_the_loss_and_reloads_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let task = toy_classification_task(16);
    for model in [
        Box::new(peft_models::tiny::gpt2(4)) as Box<dyn BaseModel>,
        Box::new(peft_models::tiny::llama(4)),
    ] {
        let arch = model.spec().architecture.clone();
        let adapter = build(model.as_ref(), BitFitTargets::All);
        let frozen_before: Vec<(String, Tensor)> = model
            .parameters()
            .into_iter()
            .map(|(n, t)| (n, t.copy().unwrap()))
            .collect();
        let before: Vec<Tensor> = adapter
            .trainable()
            .iter()
            .map(|(_, v)| v.as_tensor().copy().unwrap())
            .collect();

        // Every bias gets a gradient; no frozen tensor does.
        let loss = task
            .loss(model.as_ref(), &Tuned::of(adapter.as_ref()), &[0, 1, 2, 3])
            .unwrap()
            .loss;
        let grads = loss.backward().unwrap();
        for (name, var) in adapter.trainable() {
            assert!(
                grads.get(var.as_tensor()).is_some(),
                "{arch}: {name} has no gradient"
            );
        }
        for (name, t) in model.parameters() {
            assert!(
                grads.get(&t).is_none(),
                "{arch}: frozen {name} received a gradient"
            );
        }

        let out = dir.path().join(&arch);
        let config = TrainConfig {
            max_steps: 20,
            batch_size: 4,
            learning_rate: 0.05,
            warmup_steps: 2,
            eval_every: 10,
            output_dir: out.clone(),
            progress: false,
            ..TrainConfig::default()
        };
        let report = Trainer::new(model.as_ref(), adapter.as_ref(), &task, config)
            .run()
            .unwrap();
        let first = report.losses[..3].iter().sum::<f64>() / 3.0;
        let last = report.losses[report.losses.len() - 3..].iter().sum::<f64>() / 3.0;
        assert!(
            last < first * 0.8,
            "{arch}: loss did not fall: {first} -> {last}"
        );
        for ((name, var), b) in adapter.trainable().iter().zip(&before) {
            assert!(
                max_diff(var.as_tensor(), b) > 0.0,
                "{arch}: {name} did not move"
            );
        }
        for ((name, b), (_, a)) in frozen_before.iter().zip(model.parameters()) {
            assert_eq!(max_diff(b, &a), 0.0, "{arch}: frozen {name} moved");
        }

        // The trainer's saved adapter: HF parameter names, the BITFIT config, identical logits on reload.
        let saved = out.join("adapter");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(saved.join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(config["peft_type"], "BITFIT");
        assert_eq!(config["targets"], "all");
        assert_eq!(config["inference_mode"], true);
        let tensors =
            candle_core::safetensors::load(saved.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        let file_keys: BTreeSet<&String> = tensors.keys().collect();
        let names = keys(adapter.as_ref());
        assert_eq!(file_keys, names.iter().collect::<BTreeSet<_>>());
        let frozen = frozen_biases(model.as_ref());
        for key in &names {
            let module = key.strip_suffix(".bias").unwrap();
            assert!(
                model.spec().find_site(module).is_some(),
                "{key} names no module"
            );
            if arch == "gpt2" {
                assert!(
                    frozen.contains_key(key),
                    "{key} is not a GPT-2 parameter name"
                );
            }
        }
        let loaded = load_adapter(&saved, &mut init(model.as_ref(), 0)).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let ids = [3u32, 9, 4, 5];
        let a = last_logits(model.as_ref(), adapter.as_ref(), &ids).unwrap();
        let b = last_logits(model.as_ref(), loaded.adapter.as_ref(), &ids).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0, "{arch}: reloaded logits differ");
        let plain = last_logits(model.as_ref(), &NoHooks, &ids).unwrap();
        assert!(
            max_diff(&a, &plain) > 1e-3,
            "{arch}: training changed nothing"
        );
    }
}

#[test]
fn a_file_for_other_sites_or_shapes_is_refused_by_name() {
    let gpt2 = peft_models::tiny::gpt2(0);
    let adapter = build(&gpt2, BitFitTargets::Paper);
    let mut tensors: HashMap<String, Tensor> = adapter.tensors().unwrap().into_iter().collect();
    let key = "transformer.h.0.mlp.c_fc.bias".to_string();
    tensors.insert(
        key.clone(),
        Tensor::zeros(48, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let err = adapter.load_tensors(&tensors).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PeftError::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&key) && msg.contains("[128]") && msg.contains("[48]"),
        "{msg}"
    );
    tensors.remove(&key);
    let msg = adapter.load_tensors(&tensors).unwrap_err().to_string();
    assert!(msg.contains("lacks") && msg.contains(&key), "{msg}");
    tensors.insert(
        "transformer.ln_f.bias".into(),
        Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = adapter.load_tensors(&tensors).unwrap_err().to_string();
    assert!(msg.contains("transformer.ln_f.bias"), "{msg}");
}

#[test]
fn layers_to_transform_keeps_the_chosen_layers_and_sizes_by_top_layers() {
    let model = peft_models::tiny::gpt2(0);
    let spec = model.spec();
    let only_top = BitFitConfig {
        layers_to_transform: Some(vec![spec.num_layers - 1]),
        ..BitFitConfig::new(BitFitTargets::All)
    };
    let adapter = only_top.build(&mut peft_testing::init(&model, 0)).unwrap();
    let top = format!(".h.{}.", spec.num_layers - 1);
    let got = keys(adapter.as_ref());
    assert!(
        !got.is_empty() && got.iter().all(|k| k.contains(&top)),
        "{got:?}"
    );
    // The size knob counts top layers: one layer is what the list above chose; every layer is `all`
    // without the final norm (a site outside any layer).
    let sized = BitFitConfig::new(BitFitTargets::All)
        .with_size(1, spec)
        .unwrap()
        .build(&mut peft_testing::init(&model, 0))
        .unwrap();
    assert_eq!(keys(sized.as_ref()), got);
    let every = BitFitConfig::new(BitFitTargets::All)
        .with_size(spec.num_layers + 5, spec)
        .unwrap()
        .build(&mut peft_testing::init(&model, 0))
        .unwrap();
    let all = build(&model, BitFitTargets::All);
    assert!(every.num_trainable() < all.num_trainable());
    assert!(keys(all.as_ref())
        .iter()
        .any(|k| k.starts_with("transformer.ln_f")));
    let bad = BitFitConfig {
        layers_to_transform: Some(vec![spec.num_layers]),
        ..BitFitConfig::new(BitFitTargets::All)
    };
    let err = bad
        .build(&mut peft_testing::init(&model, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&format!("layer {}", spec.num_layers)), "{err}");
}
