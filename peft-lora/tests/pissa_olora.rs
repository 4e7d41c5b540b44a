//! PiSSA and OLoRA (`init_lora_weights = "pissa"`, `"pissa_niter_<K>"`, `"olora"`) on the seeded tiny models:
//! a fresh adapter leaves the model's output as it was (its factors' part is taken out of the base), the
//! factors are W's top singular part / QR factors, the shared base is never changed, training moves the
//! adapter, a saved adapter reloads equal (its starting factors recomputed from the base), merging and the
//! conversion to plain LoRA give the same output, and the settings that cannot work are refused.

use candle_core::Tensor;
use peft_core::adapter_io::{load_adapter, save_adapter};
use peft_core::hooks::NoHooks;
use peft_core::method::Adapter;
use peft_core::model::BaseModel;
use peft_lora::decompose::top_singular;
use peft_lora::{InitLoraWeights, Lora, LoraConfig, TargetModules};
use peft_testing::{init, logits, max_diff, rule_lm_task, train};

const IDS: [u32; 6] = [3, 17, 42, 8, 99, 5];

fn config(init_weights: &str, r: usize) -> LoraConfig {
    LoraConfig {
        init_lora_weights: InitLoraWeights::Named(init_weights.into()),
        lora_alpha: 4.0,
        target_modules: Some(TargetModules::Pattern("all-linear".into())),
        ..LoraConfig::new(r, Vec::<String>::new())
    }
}

fn build(config: &LoraConfig, model: &dyn BaseModel, seed: u64) -> Lora {
    config.build_lora(&mut init(model, seed)).unwrap()
}

fn tiny_models(seed: u64) -> [Box<dyn BaseModel>; 2] {
    [
        Box::new(peft_models::tiny::gpt2(seed)),
        Box::new(peft_models::tiny::llama(seed)),
    ]
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

/// Moves every factor as training would: A and B each plus a fixed pattern.
fn move_factors(lora: &Lora) {
    for (name, var) in lora.trainable() {
        let t = var.as_tensor();
        let n = t.elem_count();
        let shift: Vec<f32> = (0..n).map(|i| 0.02 * ((i % 7) as f32 - 3.0)).collect();
        let shift = Tensor::from_vec(shift, t.dims(), t.device()).unwrap();
        var.set(&(t + shift).unwrap()).unwrap();
        assert!(name.contains("lora_"), "{name} is not a LoRA factor");
    }
}

#[test]
fn a_fresh_adapter_leaves_the_output_unchanged_and_the_base_untouched() {
    for model in tiny_models(0) {
        let base = logits(model.as_ref(), &NoHooks, &IDS);
        let weights_before: Vec<(String, Tensor)> = model.parameters();
        for how in ["pissa", "pissa_niter_2", "olora"] {
            let lora = build(&config(how, 2), model.as_ref(), 1);
            assert!(
                lora.layers().iter().all(|l| l.initial().is_some()),
                "{how}: every layer keeps its starting factors"
            );
            // Not a zero update: the factors are the base's own part.
            assert!(
                max_abs(lora.layers()[0].b()) > 1e-3,
                "{how}: B starts at zero"
            );
            let out = logits(model.as_ref(), &lora, &IDS);
            let diff = max_diff(&base, &out);
            assert!(
                diff < 1e-4,
                "{how}: a fresh adapter moved the logits by {diff}"
            );
        }
        for ((name, before), (_, after)) in weights_before.iter().zip(model.parameters()) {
            assert_eq!(
                max_abs(&(before - &after).unwrap()),
                0.0,
                "{name} of the shared base changed"
            );
        }
    }
}

#[test]
fn pissa_takes_the_top_singular_part_and_olora_the_qr_factors() {
    let model = peft_models::tiny::llama(0);
    let pissa = build(&config("pissa", 3), &model, 0);
    for layer in pissa.layers() {
        let w = model.frozen_linear(layer.site()).unwrap().weight().unwrap();
        let (a0, b0) = layer.initial().unwrap();
        let part = (b0.matmul(a0).unwrap() * layer.scale()).unwrap();
        // What is left has W's 4th singular value on top: the top 3 are all in the adapter.
        let residual = (&w - &part).unwrap();
        let left = top_singular(&residual, 1)
            .unwrap()
            .s
            .to_vec1::<f32>()
            .unwrap()[0];
        let fourth = top_singular(&w, 4).unwrap().s.to_vec1::<f32>().unwrap()[3];
        assert!(
            (left - fourth).abs() < 1e-4 * fourth.max(1.0),
            "{}: residual's top singular value {left}, W's 4th {fourth}",
            layer.name()
        );
        // A = sqrt(S / scale) V^T and B = U sqrt(S / scale): the same row / column norms.
        let a_norms = a0.sqr().unwrap().sum(1).unwrap();
        let b_norms = b0.sqr().unwrap().sum(0).unwrap();
        assert!(max_abs(&(a_norms - b_norms).unwrap()) < 1e-4);
    }
    let olora = build(&config("olora", 3), &model, 0);
    for layer in olora.layers() {
        let (_, b0) = layer.initial().unwrap();
        let gram = b0.t().unwrap().matmul(b0).unwrap();
        let eye = Tensor::eye(3, candle_core::DType::F32, gram.device()).unwrap();
        assert!(
            max_abs(&(gram - eye).unwrap()) < 1e-5,
            "{}: OLoRA's B has orthonormal columns",
            layer.name()
        );
    }
}

#[test]
fn randomized_pissa_is_the_same_on_every_build_whatever_the_seed() {
    let model = peft_models::tiny::llama(0);
    let one = build(&config("pissa_niter_3", 2), &model, 1);
    let two = build(&config("pissa_niter_3", 2), &model, 99);
    for (a, b) in one.layers().iter().zip(two.layers()) {
        assert_eq!(
            a.a().to_vec2::<f32>().unwrap(),
            b.a().to_vec2::<f32>().unwrap(),
            "{}: the test matrix must not depend on the run's seed (a saved adapter rebuilds it)",
            a.name()
        );
    }
}

#[test]
fn trained_adapters_reload_merge_and_convert_to_plain_lora_with_equal_output() {
    for mut model in tiny_models(0) {
        let base = logits(model.as_ref(), &NoHooks, &IDS);
        for how in ["pissa", "olora"] {
            let lora = build(&config(how, 2), model.as_ref(), 1);
            move_factors(&lora);
            let ours = logits(model.as_ref(), &lora, &IDS);
            assert!(
                max_diff(&base, &ours) > 1e-3,
                "{how}: moving the factors changed nothing"
            );

            // Saved as HF PEFT saves it by default: A and B, init_lora_weights kept; B0 A0 are rebuilt on load.
            let dir = tempfile::tempdir().unwrap();
            save_adapter(dir.path(), &lora, model.spec()).unwrap();
            let saved: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(saved["init_lora_weights"], how);
            let loaded = load_adapter(dir.path(), &mut init(model.as_ref(), 5))
                .unwrap()
                .adapter;
            let diff = max_diff(&ours, &logits(model.as_ref(), loaded.as_ref(), &IDS));
            assert!(diff < 1e-5, "{how}: reloaded adapter differs by {diff}");

            // Converted: rank 2r, alpha doubled, plain LoRA over the unchanged base.
            let plain = lora.to_plain_lora().unwrap();
            assert_eq!(plain.lora_config().r, 4);
            assert_eq!(plain.lora_config().lora_alpha, 8.0);
            let diff = max_diff(&ours, &logits(model.as_ref(), &plain, &IDS));
            assert!(diff < 1e-4, "{how}: converted adapter differs by {diff}");
            let dir = tempfile::tempdir().unwrap();
            save_adapter(dir.path(), &plain, model.spec()).unwrap();
            let reloaded = load_adapter(dir.path(), &mut init(model.as_ref(), 5))
                .unwrap()
                .adapter;
            let diff = max_diff(&ours, &logits(model.as_ref(), reloaded.as_ref(), &IDS));
            assert!(
                diff < 1e-4,
                "{how}: converted and reloaded differs by {diff}"
            );

            // Merged: W + s (B A - B0 A0), and back.
            lora.merge_into(model.as_mut()).unwrap();
            let merged = logits(model.as_ref(), &lora, &IDS);
            assert!(
                max_diff(&ours, &merged) < 1e-4,
                "{how}: merged output differs"
            );
            lora.unmerge_from(model.as_mut()).unwrap();
            assert!(max_diff(&base, &logits(model.as_ref(), &NoHooks, &IDS)) < 1e-4);
        }
    }
}

#[test]
fn training_from_pissa_moves_only_the_factors_and_lowers_the_loss() {
    let model = peft_models::tiny::llama(0);
    let lora = build(&config("pissa", 2), &model, 0);
    let before: Vec<Tensor> = lora
        .trainable()
        .iter()
        .map(|(_, v)| v.as_tensor().copy().unwrap())
        .collect();
    let initial_a0 = lora.layers()[0].initial().unwrap().0.copy().unwrap();
    let report = train(&model, &lora, &rule_lm_task(), 10, 4, 0.02);
    let (first, last) = (report.losses[0], *report.losses.last().unwrap());
    assert!(last < first, "loss {first} -> {last}");
    let moved = lora
        .trainable()
        .iter()
        .zip(&before)
        .filter(|((_, v), b)| max_abs(&(v.as_tensor() - *b).unwrap()) > 0.0)
        .count();
    assert_eq!(moved, before.len(), "every factor trains");
    let a0 = lora.layers()[0].initial().unwrap().0;
    assert_eq!(max_abs(&(a0 - initial_a0).unwrap()), 0.0, "A0 stays frozen");
}

#[test]
fn settings_that_cannot_work_are_refused_with_the_fix() {
    let model = peft_models::tiny::llama(0);
    let mut init_ctx = init(&model, 0);
    let dora = LoraConfig {
        use_dora: true,
        ..config("pissa", 2)
    };
    let err = dora.build_lora(&mut init_ctx).unwrap_err().to_string();
    assert!(err.contains("use_dora") && err.contains("pissa"), "{err}");
    let err = config("pissa_niter_x", 2)
        .build_lora(&mut init_ctx)
        .unwrap_err()
        .to_string();
    assert!(err.contains("pissa_niter_4"), "{err}");
    let err = config("pissa", 40)
        .build_lora(&mut init_ctx)
        .unwrap_err()
        .to_string();
    assert!(err.contains("between 1 and"), "{err}");
    let plain = LoraConfig::new(2, ["q_proj"])
        .build_lora(&mut init_ctx)
        .unwrap();
    let err = plain.to_plain_lora().unwrap_err().to_string();
    assert!(err.contains("plain LoRA already"), "{err}");
    // A saved adapter whose init changed the base in a way not implemented here.
    let mut corda = config("corda", 2);
    corda.common.inference_mode = true;
    let err = corda.build_lora(&mut init_ctx).unwrap_err().to_string();
    assert!(
        err.contains("path_initial_model_for_weight_conversion"),
        "{err}"
    );
}
