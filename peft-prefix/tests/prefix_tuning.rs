//! Prefix tuning and P-tuning v2 on the seeded tiny models: HF PEFT's layout of the flat prefix, the config
//! fields filled from the model (grouped-query attention included), initialisation, folding the projection,
//! gradients, training through the shared trainer, and the errors.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use peft_core::adapter_io::{load_adapter, save_adapter, CONFIG_FILE};
use peft_core::head::WithClassifier;
use peft_core::hooks::{positions_taken, Ctx, Hooks, KvPrefix, NoHooks};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::{BaseModel, Batch};
use peft_core::spec::ModelSpec;
use peft_core::PeftError;
use peft_prefix::{PrefixInit, PrefixTuningConfig, PROMPT_KEY};
use peft_testing::{init, seeded_tiny_models, toy_lm_task, WithSpec};
use peft_train::generate::last_logits;
use peft_train::train::{TrainConfig, Trainer};

fn build(model: &dyn BaseModel, cfg: &PrefixTuningConfig, seed: u64) -> Box<dyn Adapter> {
    cfg.build(&mut init(model, seed)).unwrap()
}

fn rows_of(adapter: &dyn Adapter) -> Tensor {
    let tensors = adapter.tensors().unwrap();
    assert_eq!(tensors.len(), 1);
    assert_eq!(tensors[0].0, PROMPT_KEY);
    tensors[0].1.clone()
}

fn names(adapter: &dyn Adapter) -> Vec<String> {
    adapter.trainable().into_iter().map(|(n, _)| n).collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

fn ctx(batch: usize) -> Ctx {
    Ctx::new(Tensor::ones((batch, 3), DType::F32, &Device::Cpu).unwrap())
}

fn prefix(adapter: &dyn Adapter, layer: usize, batch: usize) -> KvPrefix {
    adapter
        .attention_prefix(layer, &ctx(batch))
        .unwrap()
        .unwrap()
}

fn padded_batch() -> Batch {
    let ids = Tensor::new(&[[5u32, 6, 7, 8, 9], [11, 12, 13, 0, 0]], &Device::Cpu).unwrap();
    let mask = Tensor::new(
        &[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]],
        &Device::Cpu,
    )
    .unwrap();
    Batch::new(ids, mask).unwrap()
}

/// Full logits `[2, vocab]` at each row's last real token of [`padded_batch`].
fn padded_logits(model: &dyn BaseModel, hooks: &dyn Hooks) -> Tensor {
    peft_core::grad::no_grad(|| {
        let out = model.forward(&padded_batch(), hooks).unwrap();
        let rows = [
            out.hidden.i((0, out.virtual_tokens + 4)).unwrap(),
            out.hidden.i((1, out.virtual_tokens + 2)).unwrap(),
        ];
        model.logits(&Tensor::stack(&rows, 0).unwrap()).unwrap()
    })
}

/// Value `code(t, slot, h, d)` of a hand-made flat prefix: unique per virtual token, layer slot, head, dim.
fn code(t: usize, slot: usize, h: usize, d: usize) -> f32 {
    (t * 10_000 + slot * 1000 + h * 100 + d) as f32
}

#[test]
fn a_hand_made_flat_prefix_lands_in_hf_peft_layer_key_value_head_slots() {
    for model in seeded_tiny_models(3) {
        let spec = model.spec().clone();
        let (heads, dim, layers, n) = (spec.num_kv_heads, spec.head_dim, spec.num_layers, 3);
        let adapter = build(model.as_ref(), &PrefixTuningConfig::p_tuning_v2(n), 0);
        // HF PEFT's view: [nvt, num_layers * 2, heads, head_dim], flattened per virtual token.
        let mut flat = Vec::new();
        for t in 0..n {
            for slot in 0..layers * 2 {
                for h in 0..heads {
                    for d in 0..dim {
                        flat.push(code(t, slot, h, d));
                    }
                }
            }
        }
        let flat = Tensor::from_vec(flat, (n, layers * 2 * heads * dim), &Device::Cpu).unwrap();
        adapter
            .load_tensors(&HashMap::from([(PROMPT_KEY.to_string(), flat)]))
            .unwrap();
        for layer in 0..layers {
            let p = prefix(adapter.as_ref(), layer, 2);
            assert_eq!(p.key.dims(), &[2, heads, n, dim]);
            assert_eq!(p.value.dims(), &[2, heads, n, dim]);
            let key = p.key.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let value = p.value.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for b in 0..2 {
                for h in 0..heads {
                    for t in 0..n {
                        for d in 0..dim {
                            let i = ((b * heads + h) * n + t) * dim + d;
                            assert_eq!(key[i], code(t, 2 * layer, h, d), "key b{b} h{h} t{t} d{d}");
                            assert_eq!(value[i], code(t, 2 * layer + 1, h, d), "value");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn config_fields_are_filled_from_the_model_as_hf_peft_fills_them() {
    let dir = tempfile::tempdir().unwrap();
    // GPT-2: the hidden size and all heads; tiny LLaMA (4 heads sharing 2 key/value heads of 8): width 16.
    for (model, token_dim, heads) in [
        (
            Box::new(peft_models::tiny::gpt2(1)) as Box<dyn BaseModel>,
            32,
            4,
        ),
        (Box::new(peft_models::tiny::llama(1)), 16, 2),
    ] {
        let adapter = build(model.as_ref(), &PrefixTuningConfig::new(4), 0);
        let path = dir.path().join(&model.spec().architecture);
        save_adapter(&path, adapter.as_ref(), model.spec()).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(config["peft_type"], "PREFIX_TUNING");
        assert_eq!(config["task_type"], "CAUSAL_LM");
        assert_eq!(config["num_virtual_tokens"], 4);
        assert_eq!(config["token_dim"], token_dim);
        assert_eq!(config["num_attention_heads"], heads);
        assert_eq!(config["num_layers"], 2);
        assert_eq!(config["num_transformer_submodules"], 1);
        assert_eq!(config["encoder_hidden_size"], token_dim);
        assert_eq!(config["prefix_projection"], false);
        assert_eq!(config["inference_mode"], true);
        assert!(config["modules_to_save"].is_null());
        assert_eq!(rows_of(adapter.as_ref()).dims(), &[4, 2 * 2 * token_dim]);
        assert_eq!(adapter.num_trainable(), 4 * 2 * 2 * token_dim);
        // The adapter's prefix occupies positions in front of the prompt.
        assert_eq!(
            positions_taken(adapter.as_ref(), model.spec().hidden_size, &Device::Cpu).unwrap(),
            4
        );
    }
    // Defaults of an HF config that names only the required field; P-tuning v2 is prefix tuning unprojected.
    let parsed: PrefixTuningConfig = serde_json::from_str(r#"{"num_virtual_tokens": 7}"#).unwrap();
    assert_eq!(parsed, PrefixTuningConfig::p_tuning_v2(7));
    assert!(!parsed.prefix_projection && parsed.encoder_hidden_size.is_none());
    assert!(PrefixTuningConfig::new(3).is_prompt_learning());
}

#[test]
fn the_projection_has_hf_peft_parameter_names_and_counts() {
    let model = peft_models::tiny::llama(1);
    let cfg = PrefixTuningConfig::with_projection(3, Some(24));
    let adapter = build(&model, &cfg, 0);
    assert_eq!(
        names(adapter.as_ref()),
        [
            "prompt_encoder.embedding.weight",
            "prompt_encoder.transform.0.weight",
            "prompt_encoder.transform.0.bias",
            "prompt_encoder.transform.2.weight",
            "prompt_encoder.transform.2.bias"
        ]
    );
    let shapes: Vec<Vec<usize>> = adapter
        .trainable()
        .iter()
        .map(|(_, v)| v.dims().to_vec())
        .collect();
    assert_eq!(
        shapes,
        [vec![3, 16], vec![24, 16], vec![24], vec![64, 24], vec![64]]
    );
    let resolved = cfg.resolved_for(model.spec()).unwrap();
    assert_eq!(adapter.num_trainable(), resolved.trainable_parameters());
    // What is saved is the folded prefix, one flat row per virtual token.
    assert_eq!(rows_of(adapter.as_ref()).dims(), &[3, 64]);
    // encoder_hidden_size defaults to the prefix width.
    let default = PrefixTuningConfig::with_projection(3, None)
        .resolved_for(model.spec())
        .unwrap();
    assert_eq!(default.encoder_hidden_size, Some(16));
}

#[test]
fn initialisation_is_seeded_and_follows_pytorch() {
    let model = peft_models::tiny::gpt2(1);
    let folded = |seed| rows_of(build(&model, &PrefixTuningConfig::new(30), seed).as_ref());
    let a = folded(5).flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(
        a,
        folded(5).flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert_ne!(
        a,
        folded(6).flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let (mean, var) = moments(&a);
    assert!(
        mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
        "embedding N(0, 1): mean {mean}, var {var}"
    );

    let projected = build(
        &model,
        &PrefixTuningConfig::with_projection(30, Some(48)),
        5,
    );
    for (name, var) in projected.trainable() {
        let values = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (mean, var) = moments(&values);
        if name.ends_with("embedding.weight") {
            assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.1, "{name}");
            continue;
        }
        // nn.Linear: uniform in +-1/sqrt(fan_in) for weight and bias; fan_in is 32 then 48.
        let fan_in = if name.contains("transform.0") {
            32.
        } else {
            48.
        };
        let bound = 1.0 / f32::sqrt(fan_in);
        assert!(
            values.iter().all(|v| v.abs() <= bound),
            "{name} outside +-{bound}"
        );
        let uniform_var = bound * bound / 3.0;
        assert!(
            (var - uniform_var).abs() < 0.25 * uniform_var,
            "{name}: var {var}, uniform {uniform_var}"
        );
    }

    // init_weights = "zero": the prefix starts at zero, with or without projection.
    for mut cfg in [
        PrefixTuningConfig::new(3),
        PrefixTuningConfig::with_projection(3, None),
    ] {
        cfg.init_weights = Some(PrefixInit::Zero);
        let rows = rows_of(build(&model, &cfg, 0).as_ref());
        assert_eq!(
            rows.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
    let zero: PrefixTuningConfig =
        serde_json::from_str(r#"{"num_virtual_tokens": 2, "init_weights": "zero"}"#).unwrap();
    assert_eq!(zero.init_weights, Some(PrefixInit::Zero));
}

fn moments(values: &[f32]) -> (f32, f32) {
    let n = values.len() as f32;
    let mean = values.iter().sum::<f32>() / n;
    (
        mean,
        values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n,
    )
}

#[test]
fn folding_the_projection_equals_running_it() {
    let dir = tempfile::tempdir().unwrap();
    for model in seeded_tiny_models(3) {
        let cfg = PrefixTuningConfig::with_projection(3, Some(20));
        let projected = build(model.as_ref(), &cfg, 11);
        // The folded rows, cut per layer, are the projection run for that layer.
        let folded_cfg = PrefixTuningConfig::new(3);
        let folded = build(model.as_ref(), &folded_cfg, 0);
        folded
            .load_tensors(&HashMap::from([(
                PROMPT_KEY.to_string(),
                rows_of(projected.as_ref()),
            )]))
            .unwrap();
        for layer in 0..model.spec().num_layers {
            let (a, b) = (
                prefix(projected.as_ref(), layer, 2),
                prefix(folded.as_ref(), layer, 2),
            );
            assert!(max_diff(&a.key, &b.key) < 1e-6);
            assert!(max_diff(&a.value, &b.value) < 1e-6);
            assert!(
                a.key
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.1
            );
        }
        // Saved and loaded through HF PEFT's format: the config says inference, so the adapter loads folded.
        let path = dir.path().join(&model.spec().architecture);
        save_adapter(&path, projected.as_ref(), model.spec()).unwrap();
        let loaded = load_adapter(&path, &mut init(model.as_ref(), 0))
            .unwrap()
            .adapter;
        assert_eq!(names(loaded.as_ref()), [PROMPT_KEY]);
        let ids = [3u32, 1, 4, 1, 5, 9];
        let before = last_logits(model.as_ref(), projected.as_ref(), &ids).unwrap();
        let after = last_logits(model.as_ref(), loaded.as_ref(), &ids).unwrap();
        assert!(max_diff(&before, &after) < 1e-5);
        assert!(
            max_diff(
                &padded_logits(model.as_ref(), projected.as_ref()),
                &padded_logits(model.as_ref(), loaded.as_ref())
            ) < 1e-5
        );
        // A folded tensor given to an adapter built for training switches it to the folded form.
        let training = build(model.as_ref(), &cfg, 12);
        assert_eq!(training.trainable().len(), 5);
        training
            .load_tensors(&HashMap::from([(
                PROMPT_KEY.to_string(),
                rows_of(projected.as_ref()),
            )]))
            .unwrap();
        assert_eq!(names(training.as_ref()), [PROMPT_KEY]);
        let switched = last_logits(model.as_ref(), training.as_ref(), &ids).unwrap();
        assert!(max_diff(&before, &switched) < 1e-5);
    }
}

#[test]
fn the_prefix_changes_the_prediction_and_padding_does_not_leak() {
    for model in seeded_tiny_models(3) {
        let adapter = build(model.as_ref(), &PrefixTuningConfig::new(4), 2);
        let ids = [5u32, 6, 7];
        let plain = last_logits(model.as_ref(), &NoHooks, &ids).unwrap();
        let prefixed = last_logits(model.as_ref(), adapter.as_ref(), &ids).unwrap();
        assert!(max_diff(&plain, &prefixed) > 1e-3);
        // Padded rows give the logits of the same rows alone.
        let padded = padded_logits(model.as_ref(), adapter.as_ref());
        let alone = [
            last_logits(model.as_ref(), adapter.as_ref(), &[5, 6, 7, 8, 9]).unwrap(),
            last_logits(model.as_ref(), adapter.as_ref(), &[11, 12, 13]).unwrap(),
        ];
        assert!(max_diff(&padded, &Tensor::stack(&alone, 0).unwrap()) < 1e-5);
    }
}

#[test]
fn gradients_reach_the_prefix_parameters_only() {
    for model in seeded_tiny_models(3) {
        for cfg in [
            PrefixTuningConfig::p_tuning_v2(3),
            PrefixTuningConfig::with_projection(3, Some(8)),
        ] {
            let adapter = build(model.as_ref(), &cfg, 4);
            let out = model.forward(&padded_batch(), adapter.as_ref()).unwrap();
            let loss = model
                .logits(&out.hidden)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            for (name, var) in adapter.trainable() {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name}: no gradient"));
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(norm > 0.0, "{name}: zero gradient");
            }
            for (name, p) in model.parameters() {
                assert!(grads.get(&p).is_none(), "frozen {name} got a gradient");
            }
            // Under no_grad the prefix keeps no graph.
            let detached = peft_core::grad::no_grad(|| prefix(adapter.as_ref(), 0, 1));
            assert!(!detached.key.track_op() && !detached.value.track_op());
        }
    }
}

#[test]
fn the_shared_trainer_lowers_the_loss_with_and_without_projection() {
    let model = peft_models::tiny::llama(5);
    for cfg in [
        PrefixTuningConfig::p_tuning_v2(4),
        PrefixTuningConfig::with_projection(4, Some(16)),
    ] {
        let adapter = build(&model, &cfg, 1);
        let out = tempfile::tempdir().unwrap();
        let config = TrainConfig {
            max_steps: 30,
            batch_size: 3,
            learning_rate: 0.02,
            output_dir: out.path().to_path_buf(),
            progress: false,
            ..TrainConfig::default()
        };
        let report = Trainer::new(&model, adapter.as_ref(), &toy_lm_task(), config)
            .run()
            .unwrap();
        let (first, last) = (report.losses[0], *report.losses.last().unwrap());
        assert!(
            last < first * 0.9,
            "projection {}: loss {first} -> {last}",
            cfg.prefix_projection
        );
        // The trainer saved the adapter in HF PEFT's form: folded, loading with the trained logits.
        let saved = load_adapter(&out.path().join("adapter"), &mut init(&model, 0))
            .unwrap()
            .adapter;
        let ids = [5u32, 6, 7];
        assert!(
            max_diff(
                &last_logits(&model, adapter.as_ref(), &ids).unwrap(),
                &last_logits(&model, saved.as_ref(), &ids).unwrap()
            ) < 1e-5
        );
    }
}

#[test]
fn a_classification_head_wraps_the_prefix() {
    let model = peft_models::tiny::gpt2(2);
    let inner = build(&model, &PrefixTuningConfig::p_tuning_v2(3), 0);
    let plain = last_logits(&model, inner.as_ref(), &[1, 2, 3]).unwrap();
    let wrapped = WithClassifier::new(inner, 2, &mut init(&model, 0)).unwrap();
    assert_eq!(wrapped.num_trainable(), 3 * 2 * 2 * 32 + 2 * 32);
    assert!(names(&wrapped).contains(&PROMPT_KEY.to_string()));
    let through = last_logits(&model, &wrapped, &[1, 2, 3]).unwrap();
    assert_eq!(max_diff(&plain, &through), 0.0);
}

/// The tiny LLaMA under a spec of our choosing, to reach the attention checks.
fn with_spec(change: impl Fn(&mut ModelSpec)) -> WithSpec {
    let inner = peft_models::tiny::llama(0);
    let mut spec = inner.spec().clone();
    change(&mut spec);
    WithSpec::new(Box::new(inner), spec)
}

fn build_err(model: &dyn BaseModel, cfg: &PrefixTuningConfig) -> PeftError {
    cfg.build(&mut init(model, 0)).err().expect("an error")
}

#[test]
fn errors_say_what_is_wrong() {
    let llama = peft_models::tiny::llama(0);
    let err = build_err(&llama, &PrefixTuningConfig::new(0));
    assert!(matches!(err, PeftError::Config(_)) && err.to_string().contains("num_virtual_tokens"));

    let mut cfg = PrefixTuningConfig::new(2);
    cfg.modules_to_save = Some(vec!["score".into()]);
    let err = build_err(&llama, &cfg);
    assert!(err.to_string().contains("modules_to_save"), "{err}");

    // Models whose attention cannot take a prefix.
    for (change, says) in [
        (
            Box::new(|s: &mut ModelSpec| s.num_layers = 0) as Box<dyn Fn(&mut ModelSpec)>,
            "no layers",
        ),
        (
            Box::new(|s: &mut ModelSpec| s.num_kv_heads = 0),
            "key/value heads",
        ),
        (Box::new(|s: &mut ModelSpec| s.head_dim = 0), "dimension 0"),
        (
            Box::new(|s: &mut ModelSpec| s.head_dim = 4),
            "model.layers.0.self_attn.k_proj gives keys of width 16",
        ),
        (
            Box::new(|s: &mut ModelSpec| s.num_kv_heads = 3),
            "cannot share 3",
        ),
    ] {
        let err = build_err(&with_spec(change), &PrefixTuningConfig::new(2));
        let text = err.to_string();
        assert!(
            text.contains("cannot take a key/value prefix") && text.contains(says),
            "{text}"
        );
    }

    // A config sized for another model: an adapter for GPT-2 (width 32, 4 heads) on the GQA LLaMA (16, 2).
    let gpt2 = peft_models::tiny::gpt2(0);
    let for_gpt2 = PrefixTuningConfig::new(2)
        .resolved_for(gpt2.spec())
        .unwrap();
    match build_err(&llama, &for_gpt2) {
        PeftError::ShapeMismatch {
            what,
            expected,
            got,
            ..
        } => {
            assert!(what.contains("token_dim"), "{what}");
            assert_eq!((expected, got), (vec![16], vec![32]));
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    let mut layers = PrefixTuningConfig::new(2);
    layers.prompt_learning.num_layers = Some(5);
    assert!(build_err(&llama, &layers)
        .to_string()
        .contains("num_layers"));
    let mut submodules = PrefixTuningConfig::new(2);
    submodules.prompt_learning.num_transformer_submodules = Some(2);
    assert!(build_err(&llama, &submodules)
        .to_string()
        .contains("encoder-decoder"));

    // Saved tensors of the wrong shape name the key and both shapes; a missing key lists the keys found.
    let adapter = build(&llama, &PrefixTuningConfig::new(2), 0);
    let wrong = Tensor::zeros((3, 64), DType::F32, &Device::Cpu).unwrap();
    match adapter
        .load_tensors(&HashMap::from([(PROMPT_KEY.to_string(), wrong)]))
        .unwrap_err()
    {
        PeftError::ShapeMismatch {
            what,
            expected,
            got,
            ..
        } => {
            assert_eq!(what, PROMPT_KEY);
            assert_eq!((expected, got), (vec![2, 64], vec![3, 64]));
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    let err = adapter
        .load_tensors(&HashMap::from([(
            "other".to_string(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        )]))
        .unwrap_err();
    assert!(err.to_string().contains(PROMPT_KEY) && err.to_string().contains("other"));

    // Through the adapter folder: a file whose prefix has another length.
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), adapter.as_ref(), llama.spec()).unwrap();
    let path = dir.path().join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"num_virtual_tokens\": 2", "\"num_virtual_tokens\": 5"),
    )
    .unwrap();
    let err = load_adapter(dir.path(), &mut init(&llama, 0))
        .err()
        .unwrap();
    assert!(
        matches!(err, PeftError::ShapeMismatch { ref what, .. } if what == PROMPT_KEY),
        "{err}"
    );

    // A layer the prefix was not built for.
    assert!(adapter.attention_prefix(2, &ctx(1)).is_err());
}

#[test]
fn on_an_encoder_decoder_the_prefix_feeds_decoder_layers_from_hf_peft_slots_and_says_so() {
    let t5 = peft_models::t5::tiny(2);
    let adapter = build(&t5, &PrefixTuningConfig::p_tuning_v2(3), 0);
    let saved = serde_json::to_value(adapter.config()).unwrap();
    assert_eq!(saved["task_type"], "SEQ_2_SEQ_LM");
    assert_eq!(saved["num_transformer_submodules"], 2);
    assert!(
        adapter
            .notes()
            .iter()
            .any(|n| n.contains("decoder's self-attention only")),
        "{:?}",
        adapter.notes()
    );
    // Decoder layer 1 of 2 takes slot 2 mod 2 = 0: the same prefix as layer 0.
    let (l0, l1) = (
        prefix(adapter.as_ref(), 0, 1),
        prefix(adapter.as_ref(), 1, 1),
    );
    assert_eq!(max_diff(&l0.key, &l1.key), 0.0);
    // A decoder-only model's layers keep their own slots, and there is no note.
    let gpt2 = peft_models::tiny::gpt2(2);
    let adapter = build(&gpt2, &PrefixTuningConfig::p_tuning_v2(3), 0);
    assert!(adapter.notes().is_empty());
    let (l0, l1) = (
        prefix(adapter.as_ref(), 0, 1),
        prefix(adapter.as_ref(), 1, 1),
    );
    assert!(max_diff(&l0.key, &l1.key) > 0.0);
}
