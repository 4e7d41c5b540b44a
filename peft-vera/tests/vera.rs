//! VeRA's own behaviour beyond the shared contract: a fresh adapter is a no-op, merging gives the unmerged
//! outputs and unmerging restores the frozen weights, and a file that does not fit its config is refused
//! naming what to change.

use std::collections::HashMap;

use candle_core::Tensor;
use peft_core::adapter_io::{load_adapter, save_adapter};
use peft_core::hooks::NoHooks;
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_testing::{init, logits, max_diff};
use peft_vera::{lambda_key, LayerSelection, TargetModules, VeraConfig, VERA_A_KEY};

const IDS: [u32; 6] = [5, 17, 42, 8, 3, 1];

/// Moves every trained vector away from its start (so that the adapter changes the model).
fn perturb(adapter: &dyn Adapter) {
    for (i, (_, var)) in adapter.trainable().into_iter().enumerate() {
        let t = var.as_tensor();
        let n = t.elem_count();
        let values: Vec<f32> = (0..n)
            .map(|j| ((i * 31 + j * 7) % 13) as f32 / 13.0 - 0.4)
            .collect();
        var.set(&Tensor::from_vec(values, t.shape(), t.device()).unwrap())
            .unwrap();
    }
}

#[test]
fn a_fresh_adapter_is_a_no_op_and_init_weights_false_is_not() {
    let model = peft_models::tiny::llama(1);
    let frozen = logits(&model, &NoHooks, &IDS);
    let fresh = VeraConfig::new(16, ["q_proj", "v_proj"])
        .build(&mut init(&model, 0))
        .unwrap();
    assert_eq!(
        max_diff(&logits(&model, fresh.as_ref(), &IDS), &frozen),
        0.0
    );
    let random = VeraConfig {
        init_weights: false,
        ..VeraConfig::new(16, ["q_proj", "v_proj"])
    };
    let random = random.build(&mut init(&model, 0)).unwrap();
    assert!(max_diff(&logits(&model, random.as_ref(), &IDS), &frozen) > 1e-3);
}

#[test]
fn merging_gives_the_hooked_outputs_and_unmerging_restores_the_weights() {
    for mut model in [
        Box::new(peft_models::tiny::gpt2(2)) as Box<dyn BaseModel>,
        Box::new(peft_models::tiny::llama(2)),
    ] {
        let config = VeraConfig {
            target_modules: Some(TargetModules::Pattern("all-linear".into())),
            ..VeraConfig::new(8, Vec::<String>::new())
        };
        let adapter = config.build(&mut init(model.as_ref(), 0)).unwrap();
        perturb(adapter.as_ref());
        let frozen = logits(model.as_ref(), &NoHooks, &IDS);
        let hooked = logits(model.as_ref(), adapter.as_ref(), &IDS);
        assert!(max_diff(&hooked, &frozen) > 1e-2);
        adapter.merge_into(model.as_mut()).unwrap();
        // Merged: the hooks add nothing, the weights carry the update.
        let merged = logits(model.as_ref(), adapter.as_ref(), &IDS);
        assert!(
            max_diff(&merged, &hooked) < 1e-4,
            "{}",
            max_diff(&merged, &hooked)
        );
        assert!(adapter.merge_into(model.as_mut()).is_err());
        adapter.unmerge_from(model.as_mut()).unwrap();
        let back = logits(model.as_ref(), &NoHooks, &IDS);
        assert!(
            max_diff(&back, &frozen) < 1e-4,
            "{}",
            max_diff(&back, &frozen)
        );
        assert!(adapter.unmerge_from(model.as_mut()).is_err());
    }
}

#[test]
fn a_saved_adapter_loads_with_its_projections_or_redraws_them() {
    peft_vera::register();
    let model = peft_models::tiny::gpt2(3);
    for save_projection in [true, false] {
        let config = VeraConfig {
            save_projection,
            projection_prng_key: 9,
            layers_to_transform: Some(LayerSelection::Many(vec![0])),
            ..VeraConfig::new(8, ["c_attn", "mlp.c_fc"])
        };
        let adapter = config.build(&mut init(&model, 0)).unwrap();
        perturb(adapter.as_ref());
        let dir = tempfile::tempdir().unwrap();
        save_adapter(dir.path(), adapter.as_ref(), model.spec()).unwrap();
        let loaded = load_adapter(dir.path(), &mut init(&model, 5))
            .unwrap()
            .adapter;
        // Layer 0 only: c_attn (out 96) and mlp.c_fc (out 128), each with lambda_d [8].
        assert_eq!(loaded.num_trainable(), 96 + 8 + 128 + 8);
        let diff = max_diff(
            &logits(&model, loaded.as_ref(), &IDS),
            &logits(&model, adapter.as_ref(), &IDS),
        );
        assert_eq!(diff, 0.0, "save_projection = {save_projection}");
    }
}

#[test]
fn files_that_do_not_fit_the_config_are_refused_naming_the_fix() {
    let model = peft_models::tiny::llama(0);
    let with = VeraConfig::new(8, ["q_proj"])
        .build(&mut init(&model, 0))
        .unwrap();
    let tensors: HashMap<String, Tensor> = with.tensors().unwrap().into_iter().collect();
    // The file has the projections but the config says they were not saved, and the other way round.
    let without = VeraConfig {
        save_projection: false,
        ..VeraConfig::new(8, ["q_proj"])
    }
    .build(&mut init(&model, 0))
    .unwrap();
    let err = without.load_tensors(&tensors).unwrap_err().to_string();
    assert!(err.contains("save_projection = true"), "{err}");
    let mut lambdas_only = tensors.clone();
    lambdas_only.retain(|k, _| k.contains("vera_lambda"));
    let err = with.load_tensors(&lambdas_only).unwrap_err().to_string();
    assert!(err.contains("save_projection = false"), "{err}");
    // A lambda of the wrong rank names the key and both shapes, and changes nothing.
    let mut wrong = tensors.clone();
    let key = lambda_key("model.layers.0.self_attn.q_proj", "d");
    wrong.insert(
        key.clone(),
        Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let err = with.load_tensors(&wrong).unwrap_err().to_string();
    assert!(
        err.contains(&key) && err.contains("[4]") && err.contains("[8]"),
        "{err}"
    );
    // Projections of another width.
    let mut narrow = tensors.clone();
    narrow.insert(
        VERA_A_KEY.into(),
        Tensor::zeros((8, 16), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let err = with.load_tensors(&narrow).unwrap_err().to_string();
    assert!(err.contains(VERA_A_KEY) && err.contains("[8, 16]"), "{err}");
}

#[test]
fn bad_configs_are_refused() {
    let model = peft_models::tiny::llama(0);
    let cases = [
        (VeraConfig::new(0, ["q_proj"]), "r = 0"),
        (
            VeraConfig {
                vera_dropout: 1.0,
                ..VeraConfig::new(4, ["q_proj"])
            },
            "vera_dropout",
        ),
        (
            VeraConfig {
                layers_to_transform: Some(LayerSelection::One(0)),
                target_modules: Some(TargetModules::Pattern(".*q_proj".into())),
                ..VeraConfig::default()
            },
            "layers_to_transform",
        ),
        (VeraConfig::new(4, ["nonexistent"]), "nonexistent"),
    ];
    for (config, expected) in cases {
        let Err(err) = config.build(&mut init(&model, 0)) else {
            panic!("{expected}: built");
        };
        let err = err.to_string();
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

#[test]
fn gradients_of_both_vectors_equal_those_of_hf_peft_formula() {
    use candle_core::{DType, Device};
    use peft_core::hooks::Hooks;
    use peft_vera::VeraConfig;
    let model = peft_models::tiny::gpt2(0);
    let config = VeraConfig {
        init_weights: false,
        ..VeraConfig::new(8, ["mlp.c_fc"])
    };
    let vera = config.build_vera(&mut init(&model, 3)).unwrap();
    let layer = &vera.layers()[0];
    let (inp, out) = (32, 128);
    let site = layer.site();
    let values: Vec<f32> = (0..3 * inp)
        .map(|i| ((i * 37) % 17) as f32 / 17.0 - 0.5)
        .collect();
    let x = Tensor::from_vec(values, (3, inp), &Device::Cpu).unwrap();
    let weights: Vec<f32> = (0..3 * out).map(|i| ((i * 11) % 7) as f32 - 3.0).collect();
    let w = Tensor::from_vec(weights, (3, out), &Device::Cpu).unwrap();
    let zero = |x: &Tensor| Ok(Tensor::zeros((x.dim(0)?, out), DType::F32, x.device())?);

    // Through the hook (the fused low-rank kernel).
    let y = vera.linear(site, &x, &zero).unwrap();
    let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    // HF PEFT's formula, lambda_b * ((lambda_d * (x A^T)) B^T), from candle's primitives.
    let p = vera.projections();
    let h = x.matmul(&p.a_for(inp).unwrap().t().unwrap()).unwrap();
    let h = h.broadcast_mul(layer.lambda_d()).unwrap();
    let y_ref = h.matmul(&p.b_for(out).unwrap().t().unwrap()).unwrap();
    let y_ref = y_ref.broadcast_mul(layer.lambda_b()).unwrap();
    let grads_ref = (y_ref * &w).unwrap().sum_all().unwrap().backward().unwrap();
    for v in [layer.lambda_b(), layer.lambda_d()] {
        let (g, r) = (grads.get(v).unwrap(), grads_ref.get(v).unwrap());
        let scale = r
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = peft_core::compare::max_abs_diff(g, r).unwrap();
        assert!(scale > 1e-2 && diff < 1e-4 * scale, "{diff} of {scale}");
    }
}
