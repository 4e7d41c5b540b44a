//! IA3 on the seeded tiny models: HF PEFT's shapes and names, the hook's arithmetic, initialisation, the file
//! format and its errors, training through the shared trainer, merging, and the experiment-file path.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use peft_core::adapter_io::{load_adapter, save_adapter, CONFIG_FILE, WEIGHTS_FILE};
use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::spec::SiteKind;
use peft_core::PeftError;
use peft_ia3_example::{Ia3Config, ModuleSelection};
use peft_testing::{
    fixture, init, lm_task, logits, max_diff, read_json, seeded_tiny_models, train,
};

fn build(model: &dyn BaseModel, cfg: &Ia3Config) -> Box<dyn Adapter> {
    cfg.build(&mut init(model, 0)).unwrap()
}

/// Sets every vector to seeded values around one (`1 + scale * N(0, 1)`), through `load_tensors`.
fn perturb(adapter: &dyn Adapter, scale: f64, seed: u64) {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let values: HashMap<String, Tensor> = adapter
        .tensors()
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let n = t.elem_count();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    let z: f32 = rand_distr::StandardNormal.sample(&mut rng);
                    1.0 + scale as f32 * z
                })
                .collect();
            (k, Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap())
        })
        .collect();
    adapter.load_tensors(&values).unwrap();
}

const IDS: [u32; 6] = [5, 17, 42, 8, 99, 63];

#[test]
fn default_targets_follow_hf_shapes_and_names() {
    // GPT-2: c_attn scales its output ([3h, 1]); mlp.c_proj is feed-forward and scales its input ([1, inner]).
    // LLaMA: k_proj / v_proj outputs ([kv, 1]); down_proj's input ([1, inner]).
    let expected = [
        ("gpt2", vec![("attn.c_attn", false), ("mlp.c_proj", true)]),
        (
            "llama",
            vec![
                ("self_attn.k_proj", false),
                ("self_attn.v_proj", false),
                ("mlp.down_proj", true),
            ],
        ),
    ];
    for (model, (arch, per_layer)) in seeded_tiny_models(3).iter().zip(expected) {
        let spec = model.spec();
        assert_eq!(spec.architecture, arch);
        let adapter = build(model.as_ref(), &Ia3Config::default());
        let trainable = adapter.trainable();
        assert_eq!(trainable.len(), spec.num_layers * per_layer.len());
        let mut count = 0;
        for (i, (name, var)) in trainable.iter().enumerate() {
            let (suffix, ff) = per_layer[i % per_layer.len()];
            let module = name
                .strip_prefix("base_model.model.")
                .and_then(|n| n.strip_suffix(".ia3_l"))
                .unwrap_or_else(|| panic!("not an HF PEFT key: {name}"));
            assert!(module.ends_with(suffix), "{module} is not {suffix}");
            let site = spec.site(spec.find_site(module).expect("a site of the model"));
            let SiteKind::Linear {
                in_features,
                out_features,
                fan_in_fan_out,
            } = site.kind
            else {
                panic!("{module} is not linear")
            };
            assert_eq!(fan_in_fan_out, arch == "gpt2");
            let shape = if ff {
                vec![1, in_features]
            } else {
                vec![out_features, 1]
            };
            assert_eq!(var.dims(), shape.as_slice(), "{name}");
            count += shape.iter().product::<usize>();
        }
        assert_eq!(adapter.num_trainable(), count);
        // The saved config carries the resolved lists and the model's weight layout.
        let saved = serde_json::to_value(adapter.config()).unwrap();
        let suffixes = |v: &serde_json::Value| v.as_array().unwrap().len();
        assert_eq!(saved["peft_type"], "IA3");
        assert_eq!(suffixes(&saved["target_modules"]), per_layer.len());
        assert_eq!(suffixes(&saved["feedforward_modules"]), 1);
        assert_eq!(saved["fan_in_fan_out"], arch == "gpt2");
        // Trainable names are exactly the saved keys.
        let keys: Vec<String> = adapter
            .tensors()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            trainable.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn ones_init_leaves_the_model_unchanged() {
    for model in seeded_tiny_models(3) {
        let adapter = build(model.as_ref(), &Ia3Config::default());
        let diff = max_diff(
            &logits(model.as_ref(), adapter.as_ref(), &IDS),
            &logits(model.as_ref(), &NoHooks, &IDS),
        );
        assert!(diff < 1e-6, "an all-ones adapter changed logits by {diff}");
    }
}

#[test]
fn the_hook_scales_inputs_of_feedforward_modules_and_outputs_of_the_others() {
    let model = peft_models::tiny::gpt2(3);
    let adapter = build(&model, &Ia3Config::default());
    perturb(adapter.as_ref(), 0.5, 1);
    let x = Tensor::randn(0f32, 1., (2, 3, 32), &Device::Cpu).unwrap();
    for (name, var) in adapter.trainable() {
        let module = &name["base_model.model.".len()..name.len() - ".ia3_l".len()];
        let site = model.spec().find_site(module).unwrap();
        let frozen = model.frozen_linear(site).unwrap();
        let (w, b) = (frozen.weight().unwrap(), frozen.bias().unwrap());
        // Reference arithmetic in plain candle ops, independent of the hook.
        let affine = |x: &Tensor| {
            x.broadcast_matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(b)
                .unwrap()
        };
        let l = var.as_tensor().flatten_all().unwrap();
        let x_in = Tensor::randn(0f32, 1., (2, 3, w.dims()[1]), &Device::Cpu).unwrap();
        let expected = if var.dims()[0] == 1 {
            affine(&x_in.broadcast_mul(&l).unwrap()) // feed-forward: the input is scaled
        } else {
            affine(&x_in).broadcast_mul(&l).unwrap() // otherwise the output, frozen bias included
        };
        let got = adapter
            .linear(site, &x_in, &|x: &Tensor| frozen.forward(x))
            .unwrap();
        let diff = peft_core::compare::max_abs_diff(&got, &expected).unwrap();
        assert!(
            diff < 1e-4,
            "{name}: hook differs from the formula by {diff}"
        );
    }
    // A site without a vector is passed through.
    let untouched = model
        .spec()
        .find_site("transformer.h.0.attn.c_proj")
        .unwrap();
    let y = adapter
        .linear(untouched, &x, &|x: &Tensor| Ok(x.clone()))
        .unwrap();
    assert_eq!(peft_core::compare::max_abs_diff(&y, &x).unwrap(), 0.0);
}

#[test]
fn init_ia3_weights_false_draws_seeded_standard_normals() {
    let model = peft_models::tiny::llama(1);
    let cfg = Ia3Config {
        init_ia3_weights: false,
        ..Ia3Config::default()
    };
    let values = |seed: u64| -> Vec<f32> {
        let a = cfg.build(&mut init(&model, seed)).unwrap();
        a.tensors()
            .unwrap()
            .iter()
            .flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    let a = values(5);
    assert_eq!(a, values(5));
    assert_ne!(a, values(6));
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32;
    assert!(
        mean.abs() < 0.2 && (var - 1.0).abs() < 0.3,
        "mean {mean}, var {var}"
    );
}

#[test]
fn saved_adapters_round_trip_in_hf_format() {
    peft_ia3_example::register();
    for model in seeded_tiny_models(3) {
        let mut cfg = Ia3Config::default();
        cfg.common.base_model_name_or_path = Some(model.spec().name_or_path.clone());
        let adapter = build(model.as_ref(), &cfg);
        perturb(adapter.as_ref(), 0.3, 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adapter");
        save_adapter(&path, adapter.as_ref(), model.spec()).unwrap();
        let json = read_json(&path.join(CONFIG_FILE));
        assert_eq!(json["peft_type"], "IA3");
        assert!(json["target_modules"].is_array() && json["feedforward_modules"].is_array());
        let saved = candle_core::safetensors::load(path.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        assert_eq!(saved.len(), adapter.trainable().len());
        assert!(saved
            .keys()
            .all(|k| k.starts_with("base_model.model.") && k.ends_with(".ia3_l")));
        let loaded = load_adapter(&path, &mut init(model.as_ref(), 9)).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let diff = max_diff(
            &logits(model.as_ref(), adapter.as_ref(), &IDS),
            &logits(model.as_ref(), loaded.adapter.as_ref(), &IDS),
        );
        assert_eq!(diff, 0.0, "reloaded adapter gives other logits");
    }
}

#[test]
fn hf_config_fields_parse_and_unsupported_choices_are_refused() {
    peft_ia3_example::register();
    // Every field HF PEFT writes (peft_version and auto_mapping included) is accepted.
    let text =
        std::fs::read_to_string(fixture("adapters/hf-tiny-gpt2-ia3/adapter_config.json")).unwrap();
    let config: Box<dyn PeftMethod> = serde_json::from_str(&text).unwrap();
    assert_eq!(config.typetag_name(), "IA3");
    assert_eq!(config.common().task_type.as_deref(), Some("CAUSAL_LM"));

    let model = peft_models::tiny::gpt2(0);
    let err = |cfg: Ia3Config| {
        cfg.build(&mut init(&model, 0))
            .err()
            .expect("refused")
            .to_string()
    };
    let e = err(Ia3Config {
        modules_to_save: Some(vec!["lm_head".into()]),
        ..Ia3Config::default()
    });
    assert!(
        e.contains("modules_to_save") && e.contains("lm_head"),
        "{e}"
    );
    let e = err(Ia3Config {
        target_modules: Some(ModuleSelection::names(["c_attn"])),
        feedforward_modules: Some(ModuleSelection::names(["c_fc"])),
        ..Ia3Config::default()
    });
    assert!(e.contains("subset") && e.contains("c_fc"), "{e}");
    let e = err(Ia3Config {
        target_modules: Some(ModuleSelection::names(["q_proj"])),
        feedforward_modules: Some(ModuleSelection::names(Vec::<String>::new())),
        ..Ia3Config::default()
    });
    assert!(e.contains("q_proj") && e.contains("c_attn"), "{e}");
    let e = err(Ia3Config {
        target_modules: Some(ModuleSelection::Pattern(r".*\.(c_attn|c_fc)".into())),
        ..Ia3Config::default()
    });
    assert!(e.contains("regular expression"), "{e}");
    // fan_in_fan_out is corrected from the model, as HF PEFT does (with a warning there).
    let built = Ia3Config::default()
        .build(&mut init(&peft_models::tiny::llama(0), 0))
        .unwrap();
    assert_eq!(
        serde_json::to_value(built.config()).unwrap()["fan_in_fan_out"],
        false
    );
}

#[test]
fn load_errors_name_the_key_and_both_shapes() {
    let model = peft_models::tiny::llama(0);
    let adapter = build(&model, &Ia3Config::default());
    let mut tensors: HashMap<String, Tensor> = adapter.tensors().unwrap().into_iter().collect();
    let key = "base_model.model.model.layers.1.mlp.down_proj.ia3_l".to_string();
    assert_eq!(tensors[&key].dims(), &[1, 64]);

    let mut wrong = tensors.clone();
    wrong.insert(
        key.clone(),
        Tensor::ones((64, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    match adapter.load_tensors(&wrong).unwrap_err() {
        PeftError::ShapeMismatch {
            what,
            expected,
            got,
            ..
        } => {
            assert_eq!(what, key);
            assert_eq!((expected, got), (vec![1, 64], vec![64, 1]));
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    let mut extra = tensors.clone();
    extra.insert(
        "base_model.model.model.layers.0.self_attn.q_proj.ia3_l".into(),
        tensors[&key].clone(),
    );
    let e = adapter.load_tensors(&extra).unwrap_err().to_string();
    assert!(e.contains("q_proj"), "{e}");
    tensors.remove(&key);
    let e = adapter.load_tensors(&tensors).unwrap_err().to_string();
    assert!(e.contains(&key), "{e}");
    // A refused file leaves the adapter as it was (all ones).
    assert_eq!(
        max_diff(
            &logits(&model, adapter.as_ref(), &IDS),
            &logits(&model, &NoHooks, &IDS)
        ),
        0.0
    );
}

#[test]
fn the_shared_trainer_trains_the_vectors_and_nothing_else() {
    for model in seeded_tiny_models(3) {
        let adapter = build(model.as_ref(), &Ia3Config::default());
        let params_before = model.parameters();
        let task = lm_task((0..6u32).map(|i| (0..8).map(|t| 10 + (i + t * 3) % 7).collect()));
        let report = train(model.as_ref(), adapter.as_ref(), &task, 30, 3, 0.1);
        let (first, last) = (report.losses[0], *report.losses.last().unwrap());
        assert!(last < first * 0.9, "loss did not fall: {first} -> {last}");
        // The frozen weights are untouched.
        for ((n, a), (_, b)) in params_before.iter().zip(model.parameters()) {
            assert_eq!(
                peft_core::compare::max_abs_diff(a, &b).unwrap(),
                0.0,
                "{n} changed"
            );
        }
        // Under no_grad the vectors are read detached (no graph is kept during evaluation).
        let x = Tensor::ones((1, 2, 32), DType::F32, &Device::Cpu).unwrap();
        let (name, _) = &adapter.trainable()[0];
        let module = &name["base_model.model.".len()..name.len() - ".ia3_l".len()];
        let site = model.spec().find_site(module).unwrap();
        let frozen = model.frozen_linear(site).unwrap();
        let tracked = adapter
            .linear(site, &x, &|x: &Tensor| frozen.forward(x))
            .unwrap();
        assert!(tracked.track_op());
        let detached = peft_core::grad::no_grad(|| {
            adapter
                .linear(site, &x, &|x: &Tensor| frozen.forward(x))
                .unwrap()
        });
        assert!(!detached.track_op());
    }
}

#[test]
fn merging_folds_the_vectors_into_weights_and_bias_and_unmerging_restores_them() {
    let mut models = seeded_tiny_models(3);
    for model in models.iter_mut() {
        let adapter = build(model.as_ref(), &Ia3Config::default());
        perturb(adapter.as_ref(), 0.4, 3);
        let base = logits(model.as_ref(), &NoHooks, &IDS);
        let adapted = logits(model.as_ref(), adapter.as_ref(), &IDS);
        assert!(
            max_diff(&base, &adapted) > 1e-2,
            "the adapter should change the logits"
        );

        adapter.merge_into(model.as_mut()).unwrap();
        let merged = logits(model.as_ref(), &NoHooks, &IDS);
        assert!(
            max_diff(&merged, &adapted) < 1e-4,
            "merged weights differ from the hooks by {}",
            max_diff(&merged, &adapted)
        );
        // While merged the hooks add nothing, so the adapter can stay installed.
        let both = logits(model.as_ref(), adapter.as_ref(), &IDS);
        assert!(max_diff(&both, &adapted) < 1e-4);
        let e = adapter.merge_into(model.as_mut()).unwrap_err().to_string();
        assert!(e.contains("already merged"), "{e}");

        adapter.unmerge_from(model.as_mut()).unwrap();
        let restored = logits(model.as_ref(), &NoHooks, &IDS);
        assert!(
            max_diff(&restored, &base) < 1e-4,
            "unmerge left a difference of {}",
            max_diff(&restored, &base)
        );
        assert!(max_diff(&logits(model.as_ref(), adapter.as_ref(), &IDS), &adapted) < 1e-4);
        let e = adapter
            .unmerge_from(model.as_mut())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not merged"), "{e}");
    }
}

#[test]
fn experiment_files_and_stacks_know_ia3_once_the_crate_is_linked() {
    peft_ia3_example::register();
    peft_cli::link_methods();
    let text = "peft_type = \"IA3\"\ntarget_modules = [\"k_proj\", \"v_proj\", \"down_proj\"]\nfeedforward_modules = [\"down_proj\"]\n";
    let table: toml::Table = toml::from_str(text).unwrap();
    let method = peft_cli::experiment::parse_method(&table, text).unwrap();
    assert_eq!(method.typetag_name(), "IA3");
    // A misspelt key is refused by name, as for the workspace's own methods.
    let typo = "peft_type = \"IA3\"\nfeedforward_module = [\"down_proj\"]\n";
    let e = peft_cli::experiment::parse_method(&toml::from_str(typo).unwrap(), typo)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`feedforward_module`") && e.contains("feedforward_modules"),
        "{e}"
    );

    // IA3 stacks with a workspace method (prompt tuning) through the core's STACK.
    let model = peft_models::tiny::llama(0);
    let stack: Box<dyn PeftMethod> = serde_json::from_str(
        r#"{"peft_type": "STACK", "adapters": [{"peft_type": "IA3"}, {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2}]}"#,
    )
    .unwrap();
    let built = stack.build(&mut init(&model, 0)).unwrap();
    let ia3 = build(&model, &Ia3Config::default()).num_trainable();
    assert_eq!(built.num_trainable(), ia3 + 2 * 32);
    assert!(built
        .trainable()
        .iter()
        .any(|(k, _)| k == "adapters.0.base_model.model.model.layers.0.mlp.down_proj.ia3_l"));
}
