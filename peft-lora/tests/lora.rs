//! The LoRA adapter on the seeded tiny models: initial values, the update and its scale, trainable biases,
//! merging and unmerging, saving and loading, training, dropout, and the errors a user can meet.

use candle_core::{DType, Device, Tensor};
use peft_core::adapter_io::{load_adapter, save_adapter};
use peft_core::hooks::{Hooks, NoHooks};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::{BaseModel, Batch};
use peft_core::PeftError;
use peft_lora::{BiasMode, InitLoraWeights, Lora, LoraConfig, TargetModules};
use peft_testing::{init, lm_task, logits, max_diff, train};

const IDS: [u32; 6] = [3, 17, 42, 8, 99, 5];

fn build(config: &LoraConfig, model: &dyn BaseModel, seed: u64) -> Lora {
    config.build_lora(&mut init(model, seed)).unwrap()
}

fn build_err(config: &LoraConfig, model: &dyn BaseModel) -> String {
    match config.build_lora(&mut init(model, 0)) {
        Ok(_) => panic!("built an adapter from {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn all_linear(r: usize) -> LoraConfig {
    LoraConfig {
        r,
        target_modules: Some(TargetModules::Pattern("all-linear".into())),
        ..LoraConfig::default()
    }
}

fn random_init(config: LoraConfig) -> LoraConfig {
    LoraConfig {
        init_lora_weights: InitLoraWeights::Flag(false),
        ..config
    }
}

#[test]
fn default_init_bounds_a_and_zeroes_b_so_a_fresh_adapter_is_a_no_op() {
    let model = peft_models::tiny::llama(0);
    let lora = build(&all_linear(4), &model, 1);
    assert_eq!(lora.layers().len(), 14);
    for layer in lora.layers() {
        let bound = 1.0 / (layer.a().dim(1).unwrap() as f32).sqrt();
        let a = values(layer.a());
        let widest = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(widest <= bound, "{}: |A| {widest} > {bound}", layer.name());
        assert!(
            widest > 0.8 * bound,
            "{}: A spans only {widest} of {bound}",
            layer.name()
        );
        assert!(
            values(layer.b()).iter().all(|&v| v == 0.0),
            "{}: B is not zero",
            layer.name()
        );
    }
    let diff = max_diff(
        &logits(&model, &lora, &IDS),
        &logits(&model, &NoHooks, &IDS),
    );
    assert_eq!(diff, 0.0, "a fresh adapter changed the logits by {diff}");
}

#[test]
fn gaussian_init_draws_a_with_std_one_over_r() {
    let model = peft_models::tiny::llama(0);
    let config = LoraConfig {
        init_lora_weights: InitLoraWeights::Named("gaussian".into()),
        ..all_linear(4)
    };
    let lora = build(&config, &model, 1);
    let a: Vec<f32> = lora.layers().iter().flat_map(|l| values(l.a())).collect();
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    let std = (a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
    assert!(
        (std - 0.25).abs() < 0.02,
        "std {std} over {} values, expected 1/r = 0.25",
        a.len()
    );
    assert!(mean.abs() < 0.02, "mean {mean}");
    assert!(lora
        .layers()
        .iter()
        .all(|l| values(l.b()).iter().all(|&v| v == 0.0)));
}

#[test]
fn init_false_draws_both_factors_so_the_adapter_changes_the_model() {
    let model = peft_models::tiny::llama(0);
    let lora = build(&random_init(all_linear(4)), &model, 1);
    for layer in lora.layers() {
        let b = values(layer.b());
        let bound = 1.0 / 2.0; // 1/sqrt(r)
        assert!(b.iter().all(|v| v.abs() <= bound));
        assert!(b.iter().fold(0f32, |m, v| m.max(v.abs())) > 0.8 * bound);
    }
    let diff = max_diff(
        &logits(&model, &lora, &IDS),
        &logits(&model, &NoHooks, &IDS),
    );
    assert!(
        diff > 1e-2,
        "init_lora_weights = false left the logits within {diff}"
    );
}

#[test]
fn the_same_seed_gives_the_same_adapter() {
    let model = peft_models::tiny::gpt2(0);
    let config = random_init(LoraConfig::new(4, ["c_attn"]));
    let tensors = |seed| build(&config, &model, seed).tensors().unwrap();
    let (a, b, c) = (tensors(5), tensors(5), tensors(6));
    for ((x, y), (_, z)) in a.iter().zip(&b).zip(&c) {
        assert_eq!(values(&x.1), values(&y.1), "{}", x.0);
        assert_ne!(values(&x.1), values(z), "{}", x.0);
    }
}

#[test]
fn the_update_is_scale_times_x_a_t_b_t_with_alpha_over_r_or_sqrt_r() {
    let model = peft_models::tiny::llama(0);
    let plain = LoraConfig {
        lora_alpha: 8.0,
        ..random_init(LoraConfig::new(4, ["q_proj"]))
    };
    let rs = LoraConfig {
        use_rslora: true,
        rank_pattern: [("layers.1.self_attn.q_proj".to_string(), 16)].into(),
        ..plain.clone()
    };
    assert_eq!(build(&plain, &model, 0).layers()[0].scale(), 2.0); // 8 / 4
    let rs_lora = build(&rs, &model, 0);
    assert_eq!(rs_lora.layers()[0].scale(), 4.0); // 8 / sqrt(4)
    assert_eq!(rs_lora.layers()[1].rank(), 16);
    assert_eq!(rs_lora.layers()[1].scale(), 2.0); // 8 / sqrt(16)
    assert_eq!(rs.scale_for(16, 8.0), 2.0);
    assert_eq!(plain.scale_for(16, 8.0), 0.5);

    for lora in [build(&plain, &model, 3), rs_lora] {
        let layer = &lora.layers()[1];
        let x = Tensor::randn(0f32, 1., (2, 3, 32), &Device::Cpu).unwrap();
        let zeros = Tensor::zeros((2, 3, 32), DType::F32, &Device::Cpu).unwrap();
        let update = lora
            .linear(layer.site(), &x, &|_: &Tensor| Ok(zeros.clone()))
            .unwrap();
        let expected = (x
            .broadcast_matmul(&layer.a().t().unwrap())
            .unwrap()
            .broadcast_matmul(&layer.b().t().unwrap())
            .unwrap()
            * layer.scale())
        .unwrap();
        let diff = peft_core::compare::max_abs_diff(&update, &expected).unwrap();
        assert!(diff < 1e-5, "update differs from scale x A^T B^T by {diff}");
        // Other sites pass through untouched.
        let other = model
            .spec()
            .find_site("model.layers.0.self_attn.k_proj")
            .unwrap();
        let through = lora.linear(other, &x, &|x: &Tensor| Ok(x.clone())).unwrap();
        assert_eq!(values(&through), values(&x));
    }
}

/// The frozen weights of the adapted sites.
fn weights(model: &dyn BaseModel, lora: &Lora) -> Vec<Tensor> {
    lora.layers()
        .iter()
        .map(|l| model.frozen_linear(l.site()).unwrap().weight().unwrap())
        .collect()
}

#[test]
fn merge_adds_scale_b_a_and_unmerge_restores_the_weights() {
    let models: [Box<dyn BaseModel>; 2] = [
        Box::new(peft_models::tiny::gpt2(2)),
        Box::new(peft_models::tiny::llama(2)),
    ];
    for mut model in models {
        let config = LoraConfig {
            use_rslora: true,
            ..random_init(all_linear(4))
        };
        let lora = build(&config, model.as_ref(), 4);
        let original = weights(model.as_ref(), &lora);
        let base_logits = logits(model.as_ref(), &NoHooks, &IDS);
        let unmerged = logits(model.as_ref(), &lora, &IDS);

        lora.merge_into(model.as_mut()).unwrap();
        assert!(lora.is_merged());
        for ((layer, before), after) in lora
            .layers()
            .iter()
            .zip(&original)
            .zip(weights(model.as_ref(), &lora))
        {
            let added = (&after - before).unwrap();
            let diff =
                peft_core::compare::max_abs_diff(&added, &layer.delta_weight().unwrap()).unwrap();
            assert!(
                diff < 1e-6,
                "{}: merged weight is off by {diff}",
                layer.name()
            );
        }
        // Merged, the hook adds nothing: the same logits with or without it, and as before merging.
        let merged = logits(model.as_ref(), &lora, &IDS);
        assert_eq!(merged, logits(model.as_ref(), &NoHooks, &IDS));
        let diff = max_diff(&merged, &unmerged);
        assert!(diff < 1e-4, "merged logits differ from unmerged by {diff}");
        assert!(
            max_diff(&merged, &base_logits) > 1e-2,
            "the adapter is a no-op"
        );

        let msg = lora.merge_into(model.as_mut()).unwrap_err().to_string();
        assert!(msg.contains("already merged"), "{msg}");
        let msg = lora
            .load_tensors(&Default::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unmerge"), "{msg}");

        lora.unmerge_from(model.as_mut()).unwrap();
        assert!(!lora.is_merged());
        for (before, after) in original.iter().zip(weights(model.as_ref(), &lora)) {
            let diff = peft_core::compare::max_abs_diff(before, &after).unwrap();
            assert!(diff < 1e-6, "unmerge left the weights {diff} away");
        }
        assert!(max_diff(&logits(model.as_ref(), &NoHooks, &IDS), &base_logits) < 1e-5);
        assert!(max_diff(&logits(model.as_ref(), &lora, &IDS), &unmerged) < 1e-5);
        let msg = lora.unmerge_from(model.as_mut()).unwrap_err().to_string();
        assert!(msg.contains("not merged"), "{msg}");
    }
}

#[test]
fn merging_into_another_model_is_refused_and_changes_nothing() {
    let llama = peft_models::tiny::llama(0);
    let lora = build(&random_init(all_linear(4)), &llama, 0);
    let mut gpt2 = peft_models::tiny::gpt2(0);
    let before = logits(&gpt2, &NoHooks, &IDS);
    assert!(lora.merge_into(&mut gpt2).is_err());
    assert!(!lora.is_merged());
    assert_eq!(logits(&gpt2, &NoHooks, &IDS), before);
}

/// Trainable parameters of the LoRA factors alone: r (in + out) per adapted module.
fn factor_count(lora: &Lora) -> usize {
    lora.layers()
        .iter()
        .map(|l| l.rank() * (l.a().dim(1).unwrap() + l.b().dim(0).unwrap()))
        .sum()
}

#[test]
fn bias_modes_train_copies_of_the_frozen_biases_under_hf_peft_keys() {
    let model = peft_models::tiny::gpt2(1);
    let spec = model.spec();
    let with = |bias| {
        build(
            &LoraConfig {
                bias,
                ..LoraConfig::new(4, ["c_attn"])
            },
            &model,
            0,
        )
    };
    let dim = |name: &str| match spec.site(spec.find_site(name).unwrap()).kind {
        peft_core::spec::SiteKind::Linear { out_features, .. } => out_features,
        peft_core::spec::SiteKind::Norm { dim } => dim,
    };

    let none = with(BiasMode::None);
    assert_eq!(none.num_trainable(), factor_count(&none));
    assert!(none.trainable().iter().all(|(k, _)| !k.ends_with("bias")));

    let lora_only = with(BiasMode::LoraOnly);
    let keys: Vec<String> = lora_only.trainable().into_iter().map(|(k, _)| k).collect();
    assert!(
        keys.contains(&"base_model.model.transformer.h.0.attn.c_attn.base_layer.bias".to_string())
    );
    let c_attn_biases = 2 * dim("transformer.h.0.attn.c_attn");
    assert_eq!(
        lora_only.num_trainable(),
        factor_count(&lora_only) + c_attn_biases
    );

    let all = with(BiasMode::All);
    let keys: Vec<String> = all.trainable().into_iter().map(|(k, _)| k).collect();
    for key in [
        "base_model.model.transformer.h.1.attn.c_attn.base_layer.bias",
        "base_model.model.transformer.h.1.attn.c_proj.bias",
        "base_model.model.transformer.h.0.mlp.c_fc.bias",
        "base_model.model.transformer.h.0.ln_1.bias",
        "base_model.model.transformer.ln_f.bias",
    ] {
        assert!(keys.contains(&key.to_string()), "bias = all lacks {key}");
    }
    let every_bias: usize = spec
        .sites
        .iter()
        .filter(|s| s.has_bias)
        .map(|s| dim(&s.name))
        .sum();
    assert_eq!(all.num_trainable(), factor_count(&all) + every_bias);

    // The copies start at the frozen values (a fresh adapter is still a no-op) and replace them.
    let base = logits(&model, &NoHooks, &IDS);
    assert!(max_diff(&logits(&model, &all, &IDS), &base) < 1e-6);
    let (_, ln_f) = all
        .trainable()
        .into_iter()
        .find(|(k, _)| k.ends_with("transformer.ln_f.bias"))
        .unwrap();
    ln_f.set(&(ln_f.as_tensor() + 1.0).unwrap()).unwrap();
    assert!(
        max_diff(&logits(&model, &all, &IDS), &base) > 1e-2,
        "the trained bias is not used"
    );

    // LLaMA has no biases: nothing to add.
    let llama = peft_models::tiny::llama(0);
    let all = build(
        &LoraConfig {
            bias: BiasMode::All,
            ..all_linear(4)
        },
        &llama,
        0,
    );
    assert_eq!(all.num_trainable(), factor_count(&all));
}

#[test]
fn build_fills_in_what_hf_peft_fills_in() {
    let gpt2 = peft_models::tiny::gpt2(0);
    let lora = build(&LoraConfig::default(), &gpt2, 0);
    let c = lora.lora_config();
    assert_eq!(c.target_modules, Some(TargetModules::list(["c_attn"])));
    assert!(c.fan_in_fan_out, "GPT-2's Conv1D sets fan_in_fan_out");
    let llama = peft_models::tiny::llama(0);
    let asked = LoraConfig {
        fan_in_fan_out: true,
        ..LoraConfig::default()
    };
    let lora = build(&asked, &llama, 0);
    assert!(
        !lora.lora_config().fan_in_fan_out,
        "nn.Linear clears fan_in_fan_out"
    );
    assert_eq!(
        lora.lora_config().common.task_type.as_deref(),
        Some("CAUSAL_LM")
    );
}

#[test]
fn build_errors_say_what_to_do() {
    let llama = peft_models::tiny::llama(0);
    let msg = build_err(&LoraConfig::new(0, ["q_proj"]), &llama);
    assert!(msg.contains("r = 0"), "{msg}");
    let msg = build_err(&LoraConfig::new(4, ["c_attn"]), &llama);
    assert!(
        msg.contains("`c_attn` not found") && msg.contains("q_proj, k_proj, v_proj, o_proj"),
        "{msg}"
    );
    let msg = build_err(
        &LoraConfig {
            use_dora: true,
            lora_bias: true,
            ..LoraConfig::default()
        },
        &llama,
    );
    assert!(msg.contains("DoRA"), "{msg}");
    let msg = build_err(
        &LoraConfig {
            modules_to_save: Some(vec!["lm_head".into()]),
            ..LoraConfig::default()
        },
        &llama,
    );
    assert!(msg.contains("modules_to_save"), "{msg}");
}

#[test]
fn saved_adapters_load_back_and_mismatched_files_are_refused_by_key() {
    let model = peft_models::tiny::llama(0);
    let lora = build(
        &random_init(LoraConfig::new(4, ["q_proj", "v_proj"])),
        &model,
        2,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter");
    save_adapter(&path, &lora, model.spec()).unwrap();
    let loaded = load_adapter(&path, &mut init(&model, 99)).unwrap().adapter;
    assert_eq!(loaded.tensors().unwrap().len(), 8);
    for ((k, a), (_, b)) in lora
        .tensors()
        .unwrap()
        .iter()
        .zip(loaded.tensors().unwrap())
    {
        assert_eq!(values(a), values(&b), "{k}");
    }
    assert_eq!(
        max_diff(
            &logits(&model, loaded.as_ref(), &IDS),
            &logits(&model, &lora, &IDS)
        ),
        0.0
    );

    let config_path = path.join("adapter_config.json");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let load_with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut config = saved.clone();
        edit(&mut config);
        std::fs::write(&config_path, config.to_string()).unwrap();
        match load_adapter(&path, &mut init(&model, 0)) {
            Ok(_) => panic!("loaded with {config}"),
            Err(e) => e,
        }
    };

    // Another rank: a shape mismatch naming the key, both shapes and the adapter folder.
    match load_with(&|c| c["r"] = 8.into()) {
        PeftError::ShapeMismatch {
            what,
            expected,
            got,
            got_from,
            ..
        } => {
            assert_eq!(
                what,
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
            );
            assert_eq!((expected, got), (vec![8, 32], vec![4, 32]));
            assert!(got_from.contains("adapter"), "{got_from}");
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    let msg =
        load_with(&|c| c["target_modules"] = serde_json::json!(["q_proj", "v_proj", "k_proj"]))
            .to_string();
    assert!(
        msg.contains("no tensor `base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight`"),
        "{msg}"
    );
    let msg = load_with(&|c| c["target_modules"] = serde_json::json!(["q_proj"])).to_string();
    assert!(
        msg.contains("does not describe") && msg.contains("v_proj"),
        "{msg}"
    );
    // A DoRA config needs the magnitude vectors, which a plain LoRA file lacks.
    let msg = load_with(&|c| c["use_dora"] = true.into()).to_string();
    assert!(msg.contains("lora_magnitude_vector"), "{msg}");

    // A refused file leaves the adapter as it was.
    let mut tensors: std::collections::HashMap<String, Tensor> =
        lora.tensors().unwrap().into_iter().collect();
    let before = lora.tensors().unwrap();
    for t in tensors.values_mut() {
        *t = (&*t + 1.0).unwrap();
    }
    let last = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight".to_string();
    tensors.insert(
        last,
        Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        lora.load_tensors(&tensors),
        Err(PeftError::ShapeMismatch { .. })
    ));
    for ((k, a), (_, b)) in before.iter().zip(lora.tensors().unwrap()) {
        assert_eq!(values(a), values(&b), "{k} changed by a refused load");
    }
}

#[test]
fn training_moves_both_factors_and_lowers_the_loss() {
    let model = peft_models::tiny::llama(0);
    let lora = build(
        &LoraConfig::new(4, ["q_proj", "v_proj", "down_proj"]),
        &model,
        0,
    );
    let before = lora.tensors().unwrap();
    let task = lm_task([vec![5, 6, 7, 8, 9, 10], vec![11, 12, 13, 14, 15, 16]]);
    let report = train(&model, &lora, &task, 10, 2, 0.02);
    let (first, last) = (report.losses[0], *report.losses.last().unwrap());
    assert!(last < first - 0.1, "loss went from {first} to {last}");
    for ((k, a), (_, b)) in before.iter().zip(lora.tensors().unwrap()) {
        let moved = peft_core::compare::max_abs_diff(a, &b).unwrap();
        assert!(moved > 1e-4, "{k} moved only {moved}");
    }
}

#[test]
fn dropout_acts_while_training_and_not_under_no_grad() {
    let model = peft_models::tiny::llama(0);
    let config = random_init(LoraConfig::new(4, ["q_proj", "v_proj"]));
    let dropped = build(
        &LoraConfig {
            lora_dropout: 0.5,
            ..config.clone()
        },
        &model,
        3,
    );
    let plain = build(&config, &model, 3);
    let batch = Batch::single(&IDS, &Device::Cpu).unwrap();
    let hidden = |hooks: &dyn Hooks| values(&model.forward(&batch, hooks).unwrap().hidden);
    let (a, b) = (hidden(&dropped), hidden(&dropped));
    assert!(
        max_diff(&a, &b) > 1e-4,
        "two training passes with dropout 0.5 agree"
    );
    // Evaluation (no_grad) is deterministic and equals the adapter without dropout.
    assert_eq!(logits(&model, &dropped, &IDS), logits(&model, &plain, &IDS));
}

#[test]
fn configs_round_trip_through_the_method_registry() {
    let model = peft_models::tiny::gpt2(0);
    let lora = build(
        &LoraConfig {
            lora_alpha: 16.0,
            ..LoraConfig::new(2, ["c_fc"])
        },
        &model,
        0,
    );
    let json = serde_json::to_string(lora.config()).unwrap();
    let back: Box<dyn PeftMethod> = serde_json::from_str(&json).unwrap();
    let rebuilt = back.build(&mut init(&model, 0)).unwrap();
    assert_eq!(rebuilt.num_trainable(), lora.num_trainable());
    assert_eq!(serde_json::to_string(rebuilt.config()).unwrap(), json);
}

/// LoRA run through [`Hooks::linear`] only (the trait's default `project`): the frozen product, the update
/// and their sum as separate ops, the composed form of the fused adapted projection.
struct ThroughLinear<'a>(&'a Lora);

impl Hooks for ThroughLinear<'_> {
    fn linear(
        &self,
        site: peft_core::spec::SiteId,
        x: &Tensor,
        next: &peft_core::hooks::LinearFn,
    ) -> peft_core::Result<Tensor> {
        self.0.linear(site, x, next)
    }

    fn bias(&self, site: peft_core::spec::SiteId) -> Option<Tensor> {
        self.0.bias(site)
    }
}

#[test]
fn the_fused_adapted_projection_gives_the_composed_hidden_states_and_gradients() {
    let models: [Box<dyn BaseModel>; 2] = [
        Box::new(peft_models::tiny::llama(2)),
        Box::new(peft_models::tiny::gpt2(2)),
    ];
    for model in models {
        // Random B, so that the update is not zero; every linear layer adapted.
        let lora = build(&random_init(all_linear(4)), model.as_ref(), 3);
        let batch = Batch::single(&IDS, &Device::Cpu).unwrap();
        let run = |hooks: &dyn Hooks| {
            let hidden = model.forward(&batch, hooks).unwrap().hidden;
            let weighting = Tensor::arange(0f32, hidden.elem_count() as f32, &Device::Cpu)
                .unwrap()
                .reshape(hidden.dims())
                .unwrap()
                .sin()
                .unwrap();
            let grads = (&hidden * &weighting)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let per_var: Vec<Vec<f32>> = lora
                .trainable()
                .iter()
                .map(|(name, v)| {
                    values(
                        grads
                            .get(v.as_tensor())
                            .unwrap_or_else(|| panic!("{name}: no gradient")),
                    )
                })
                .collect();
            (values(&hidden), per_var)
        };
        let (fused_hidden, fused_grads) = run(&lora);
        let (composed_hidden, composed_grads) = run(&ThroughLinear(&lora));
        let scale = composed_hidden.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max_diff(&fused_hidden, &composed_hidden) <= 1e-5 * scale.max(1.0));
        for (f, c) in fused_grads.iter().zip(&composed_grads) {
            let scale = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "a gradient of zeros proves nothing");
            assert!(
                max_diff(f, c) <= 1e-4 * scale,
                "{} vs {scale}",
                max_diff(f, c)
            );
        }
    }
}
