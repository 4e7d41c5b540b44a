//! DoRA (`use_dora`) on the seeded tiny models: the magnitude vectors (their keys, shapes, initial values and
//! count), merging and unmerging, saving and loading, and training moving them.

use candle_core::Tensor;
use peft_core::adapter_io::{load_adapter, save_adapter};
use peft_core::hooks::NoHooks;
use peft_core::method::Adapter;
use peft_core::model::BaseModel;
use peft_lora::{magnitude_key, BiasMode, InitLoraWeights, Lora, LoraConfig, TargetModules};
use peft_testing::{init, logits, max_diff, rule_lm_task, train};

const IDS: [u32; 6] = [3, 17, 42, 8, 99, 5];

fn dora_all_linear(init_weights: bool) -> LoraConfig {
    LoraConfig {
        use_dora: true,
        use_rslora: true,
        bias: BiasMode::All,
        init_lora_weights: InitLoraWeights::Flag(init_weights),
        target_modules: Some(TargetModules::Pattern("all-linear".into())),
        ..LoraConfig::new(4, Vec::<String>::new())
    }
}

fn build(config: &LoraConfig, model: &dyn BaseModel, seed: u64) -> Lora {
    config.build_lora(&mut init(model, seed)).unwrap()
}

fn row_norms(w: &Tensor) -> Tensor {
    w.sqr().unwrap().sum(1).unwrap().sqrt().unwrap()
}

fn diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

fn tiny_models(seed: u64) -> [Box<dyn BaseModel>; 2] {
    [
        Box::new(peft_models::tiny::gpt2(seed)),
        Box::new(peft_models::tiny::llama(seed)),
    ]
}

/// Multiplies every magnitude by a factor per row (1 + 0.1 * row index mod 3), as training would move it.
fn move_magnitudes(lora: &Lora) {
    for layer in lora.layers() {
        let m = layer.dora().unwrap().magnitude_var();
        let rows = m.dims()[0];
        let factors: Vec<f32> = (0..rows).map(|i| 1.0 + 0.1 * (i % 3) as f32).collect();
        let factors = Tensor::new(factors.as_slice(), m.device()).unwrap();
        m.set(&m.as_tensor().mul(&factors).unwrap()).unwrap();
    }
}

#[test]
fn magnitudes_start_at_the_row_norms_under_hf_keys_and_add_out_features_each() {
    for model in tiny_models(0) {
        let plain = LoraConfig {
            use_dora: false,
            ..dora_all_linear(true)
        };
        let lora = build(&plain, model.as_ref(), 1);
        let dora = build(&dora_all_linear(true), model.as_ref(), 1);
        let mut extra = 0;
        for (l, d) in lora.layers().iter().zip(dora.layers()) {
            // The same factors from the same seed: DoRA draws nothing more.
            assert_eq!(diff(l.a(), d.a()), 0.0);
            let w = model.frozen_linear(d.site()).unwrap().weight().unwrap();
            let m = d.dora().unwrap().magnitude();
            assert_eq!(m.dims(), &[w.dims()[0]]);
            // B = 0: the norms of W itself.
            assert!(diff(m, &row_norms(&w)) < 1e-5, "{}", d.name());
            extra += w.dims()[0];
        }
        assert_eq!(dora.num_trainable(), lora.num_trainable() + extra);
        let keys: Vec<String> = dora.trainable().into_iter().map(|(k, _)| k).collect();
        for d in dora.layers() {
            assert!(keys.contains(&magnitude_key(d.name())), "{}", d.name());
        }
        // A fresh DoRA adapter is a no-op, as a fresh LoRA one is.
        let d = max_diff(
            &logits(model.as_ref(), &dora, &IDS),
            &logits(model.as_ref(), &NoHooks, &IDS),
        );
        assert!(d < 1e-5, "a fresh DoRA adapter moves the logits by {d}");
    }
    // With both factors drawn (init false), the magnitude is the norm of W + scale B A.
    let model = peft_models::tiny::llama(0);
    let dora = build(&dora_all_linear(false), &model, 1);
    for d in dora.layers() {
        let w = model.frozen_linear(d.site()).unwrap().weight().unwrap();
        let adapted = (&w + d.delta_weight().unwrap()).unwrap();
        assert!(diff(d.dora().unwrap().magnitude(), &row_norms(&adapted)) < 1e-5);
        assert!(diff(&row_norms(&adapted), &row_norms(&w)) > 1e-3);
    }
}

#[test]
fn merging_gives_the_unmerged_logits_and_unmerging_restores_the_weights() {
    for mut model in tiny_models(2) {
        let dora = build(&dora_all_linear(false), model.as_ref(), 4);
        move_magnitudes(&dora);
        let original: Vec<Tensor> = dora
            .layers()
            .iter()
            .map(|l| model.frozen_linear(l.site()).unwrap().weight().unwrap())
            .collect();
        let base = logits(model.as_ref(), &NoHooks, &IDS);
        let unmerged = logits(model.as_ref(), &dora, &IDS);
        assert!(max_diff(&unmerged, &base) > 1e-2, "the adapter is a no-op");

        dora.merge_into(model.as_mut()).unwrap();
        for (l, before) in dora.layers().iter().zip(&original) {
            // m / ||W + s B A||_row * (W + s B A): every row of the merged weight has norm m.
            let after = model.frozen_linear(l.site()).unwrap().weight().unwrap();
            let m = l.dora().unwrap().magnitude();
            assert!(diff(&row_norms(&after), m) < 1e-4, "{}", l.name());
            let direction = (before + l.delta_weight().unwrap()).unwrap();
            let cos = (after.mul(&direction).unwrap().sum(1).unwrap()
                / (row_norms(&after) * row_norms(&direction)).unwrap())
            .unwrap();
            assert!(diff(&cos, &cos.ones_like().unwrap()) < 1e-5, "{}", l.name());
        }
        let merged = logits(model.as_ref(), &dora, &IDS);
        assert_eq!(merged, logits(model.as_ref(), &NoHooks, &IDS));
        let d = max_diff(&merged, &unmerged);
        assert!(d < 1e-4, "merged logits differ from unmerged by {d}");
        assert!(dora.merge_into(model.as_mut()).is_err());

        dora.unmerge_from(model.as_mut()).unwrap();
        for (l, before) in dora.layers().iter().zip(&original) {
            let after = model.frozen_linear(l.site()).unwrap().weight().unwrap();
            assert!(
                diff(before, &after) < 1e-6,
                "{}: unmerge left the weight off",
                l.name()
            );
        }
        assert!(max_diff(&logits(model.as_ref(), &dora, &IDS), &unmerged) < 1e-5);
        assert!(max_diff(&logits(model.as_ref(), &NoHooks, &IDS), &base) < 1e-5);
        assert!(dora.unmerge_from(model.as_mut()).is_err());
    }
}

#[test]
fn saved_dora_adapters_load_back_with_their_magnitudes() {
    let model = peft_models::tiny::gpt2(0);
    let dora = build(&dora_all_linear(false), &model, 3);
    move_magnitudes(&dora);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), &dora, model.spec()).unwrap();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["use_dora"], true);
    let loaded = load_adapter(dir.path(), &mut init(&model, 9))
        .unwrap()
        .adapter;
    let ours: std::collections::HashMap<_, _> = dora.tensors().unwrap().into_iter().collect();
    for (key, t) in loaded.tensors().unwrap() {
        assert_eq!(diff(&t, &ours[&key]), 0.0, "{key}");
    }
    assert_eq!(loaded.tensors().unwrap().len(), ours.len());
    assert_eq!(
        logits(&model, loaded.as_ref(), &IDS),
        logits(&model, &dora, &IDS)
    );
}

#[test]
fn training_moves_the_magnitudes_and_lowers_the_loss() {
    let model = peft_models::tiny::llama(1);
    let config = LoraConfig {
        use_dora: true,
        ..LoraConfig::new(4, ["q_proj", "v_proj", "down_proj"])
    };
    let dora = build(&config, &model, 2);
    let before: Vec<Tensor> = dora
        .layers()
        .iter()
        .map(|l| l.dora().unwrap().magnitude().copy().unwrap())
        .collect();
    let report = train(&model, &dora, &rule_lm_task(), 10, 4, 0.02);
    let (first, last) = (report.losses[0], *report.losses.last().unwrap());
    assert!(last < first - 0.1, "loss went from {first} to {last}");
    for (l, m0) in dora.layers().iter().zip(&before) {
        assert!(
            diff(l.dora().unwrap().magnitude(), m0) > 1e-4,
            "{}",
            l.name()
        );
    }
}

#[test]
fn every_zoo_architecture_takes_dora_on_every_linear_layer_and_merges_it_exactly() {
    use peft_core::hooks::Hooks;
    for name in [
        "tiny-gpt2",
        "tiny-llama",
        "tiny-opt",
        "tiny-bert",
        "tiny-t5",
    ] {
        let mut loaded = peft_testing::tiny(name);
        let dora = build(&dora_all_linear(false), loaded.model.as_ref(), 5);
        assert!(!dora.layers().is_empty(), "{name}");
        move_magnitudes(&dora);
        let frozen: Vec<_> = dora
            .layers()
            .iter()
            .map(|l| loaded.model.frozen_linear(l.site()).unwrap().clone())
            .collect();
        let inputs: Vec<Tensor> = frozen
            .iter()
            .map(|f| {
                Tensor::randn(0f32, 1.0, (3, f.in_features()), &candle_core::Device::Cpu).unwrap()
            })
            .collect();
        let hooked: Vec<Tensor> = dora
            .layers()
            .iter()
            .zip(&frozen)
            .zip(&inputs)
            .map(|((l, f), x)| {
                // The frozen bias replaced by the trained copy (bias = "all"), as the models' apply_linear does.
                let bias = dora.bias(l.site());
                let next = |x: &Tensor| f.forward_with_bias(x, bias.as_ref().or(f.bias()));
                dora.linear(l.site(), x, &next).unwrap()
            })
            .collect();
        dora.merge_into(loaded.model.as_mut()).unwrap();
        for (((l, f), x), y) in dora.layers().iter().zip(&frozen).zip(&inputs).zip(&hooked) {
            let bias = dora.bias(l.site());
            let merged = loaded.model.frozen_linear(l.site()).unwrap();
            let expected = merged
                .forward_with_bias(x, bias.as_ref().or(merged.bias()))
                .unwrap();
            let d = diff(y, &expected);
            assert!(d < 1e-4, "{name} {}: merged output off by {d}", l.name());
            // Not plain LoRA's output on the original weights.
            let delta_t = l.delta_weight().unwrap().t().unwrap();
            let plain = (f.forward_with_bias(x, bias.as_ref().or(f.bias())).unwrap()
                + x.matmul(&delta_t).unwrap())
            .unwrap();
            assert!(
                diff(y, &plain) > 1e-3,
                "{name} {}: DoRA gives LoRA's output",
                l.name()
            );
        }
        dora.unmerge_from(loaded.model.as_mut()).unwrap();
    }
}
