//! P-tuning on the seeded tiny models: HF PEFT's config defaults, the encoder's parameters (names, counts,
//! init), the embedding hook, gradients (finite differences through the MLP and the LSTM), saving the encoder's
//! output and loading it back, and training through the shared trainer.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use peft_core::adapter_io::{load_adapter, save_adapter, CONFIG_FILE};
use peft_core::hooks::{Ctx, NoHooks};
use peft_core::method::{Adapter, PeftMethod};
use peft_core::model::BaseModel;
use peft_core::PeftError;
use peft_prompt::{PromptEncoderConfig, PromptEncoderReparameterizationType as Kind};
use peft_testing::{init, seeded_tiny_models, toy_classification_task};
use peft_train::generate::last_logits;
use peft_train::task::{Task, Tuned};
use peft_train::train::{TrainConfig, Trainer};

fn config(n: usize, kind: Kind, hidden: Option<usize>) -> PromptEncoderConfig {
    let mut cfg = PromptEncoderConfig::new(n, kind);
    cfg.encoder_hidden_size = hidden;
    cfg
}

fn build(model: &dyn BaseModel, cfg: &PromptEncoderConfig, seed: u64) -> Box<dyn Adapter> {
    cfg.build(&mut init(model, seed)).unwrap()
}

fn prompt_of(adapter: &dyn Adapter) -> Tensor {
    let tensors = adapter.tensors().unwrap();
    assert_eq!(tensors.len(), 1);
    assert_eq!(tensors[0].0, "prompt_embeddings");
    tensors[0].1.clone()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    peft_core::compare::max_abs_diff(a, b).unwrap()
}

/// Parameters HF PEFT's `PromptEncoder` has: the embedding plus its head.
fn expected_count(kind: Kind, n: usize, d: usize, h: usize, layers: usize) -> usize {
    let linear = |i: usize, o: usize| i * o + o;
    match kind {
        Kind::Mlp => n * d + linear(d, h) + linear(h, h) + linear(h, d),
        Kind::Lstm => {
            let lstm: usize = (0..layers)
                .map(|k| {
                    let input = if k == 0 { d } else { 2 * h };
                    2 * (4 * h * (input + h) + 8 * h)
                })
                .sum();
            n * d + lstm + linear(2 * h, 2 * h) + linear(2 * h, d)
        }
    }
}

#[test]
fn an_hf_config_gets_hf_defaults_and_model_fields_when_built() {
    let cfg: Box<dyn PeftMethod> =
        serde_json::from_str(r#"{"peft_type": "P_TUNING", "num_virtual_tokens": 3}"#).unwrap();
    assert!(cfg.is_prompt_learning());
    for model in seeded_tiny_models(3) {
        let adapter = cfg.build(&mut init(model.as_ref(), 0)).unwrap();
        let saved = serde_json::to_value(adapter.config()).unwrap();
        let spec = model.spec();
        assert_eq!(saved["peft_type"], "P_TUNING");
        assert_eq!(saved["encoder_reparameterization_type"], "MLP");
        assert_eq!(saved["encoder_hidden_size"], spec.hidden_size);
        assert_eq!(saved["encoder_num_layers"], 2);
        assert_eq!(saved["encoder_dropout"], 0.0);
        assert_eq!(saved["token_dim"], spec.hidden_size);
        assert_eq!(saved["num_layers"], spec.num_layers);
        assert_eq!(saved["num_attention_heads"], spec.num_heads);
        assert_eq!(saved["num_transformer_submodules"], 1);
        assert_eq!(saved["task_type"], "CAUSAL_LM");
        let d = spec.hidden_size;
        assert_eq!(
            adapter.num_trainable(),
            expected_count(Kind::Mlp, 3, d, d, 2)
        );
    }
}

#[test]
fn encoder_parameters_have_torch_names_counts_and_init() {
    let model = peft_models::tiny::gpt2(0);
    let d = model.spec().hidden_size;
    let mlp = build(&model, &config(6, Kind::Mlp, Some(24)), 1);
    let names: Vec<String> = mlp.trainable().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "embedding.weight",
            "mlp_head.0.weight",
            "mlp_head.0.bias",
            "mlp_head.2.weight",
            "mlp_head.2.bias",
            "mlp_head.4.weight",
            "mlp_head.4.bias"
        ]
    );
    assert_eq!(mlp.num_trainable(), expected_count(Kind::Mlp, 6, d, 24, 2));

    let mut cfg = config(6, Kind::Lstm, Some(10));
    cfg.encoder_num_layers = 3;
    let lstm = build(&model, &cfg, 1);
    assert_eq!(
        lstm.num_trainable(),
        expected_count(Kind::Lstm, 6, d, 10, 3)
    );
    let vars: HashMap<String, Var> = lstm.trainable().into_iter().collect();
    assert_eq!(vars.len(), 1 + 3 * 2 * 4 + 4);
    assert_eq!(vars["lstm_head.weight_ih_l0"].dims(), &[40, d]);
    assert_eq!(vars["lstm_head.weight_ih_l2_reverse"].dims(), &[40, 20]);
    assert_eq!(vars["lstm_head.weight_hh_l1"].dims(), &[40, 10]);
    assert_eq!(vars["lstm_head.bias_hh_l1_reverse"].dims(), &[40]);
    assert_eq!(vars["mlp_head.0.weight"].dims(), &[20, 20]);
    assert_eq!(vars["mlp_head.2.weight"].dims(), &[d, 20]);

    // PyTorch's init: Linear uniform in ±1/sqrt(fan_in), LSTM uniform in ±1/sqrt(hidden), Embedding N(0, 1).
    let values = |v: &Var| v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let spread = |v: &Var| values(v).iter().fold(0f32, |m, x| m.max(x.abs()));
    let mlp_vars: HashMap<String, Var> = mlp.trainable().into_iter().collect();
    for (name, bound) in [
        ("mlp_head.0.weight", 1.0 / (d as f32).sqrt()),
        ("mlp_head.2.weight", 1.0 / 24f32.sqrt()),
        ("mlp_head.4.bias", 1.0 / 24f32.sqrt()),
    ] {
        let s = spread(&mlp_vars[name]);
        assert!(
            s <= bound && s > 0.8 * bound,
            "{name}: max |w| {s}, bound {bound}"
        );
    }
    let s = spread(&vars["lstm_head.weight_hh_l1"]);
    let bound = 1.0 / 10f32.sqrt();
    assert!(
        s <= bound && s > 0.8 * bound,
        "LSTM: max |w| {s}, bound {bound}"
    );
    let emb = values(&mlp_vars["embedding.weight"]);
    let mean = emb.iter().sum::<f32>() / emb.len() as f32;
    let var = emb.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / emb.len() as f32;
    assert!(
        mean.abs() < 0.15 && (var - 1.0).abs() < 0.25,
        "embedding mean {mean}, var {var}"
    );

    // Seeded: the same seed gives the same encoder, another seed another one.
    let again = build(&model, &config(6, Kind::Mlp, Some(24)), 1);
    assert_eq!(
        max_diff(&prompt_of(mlp.as_ref()), &prompt_of(again.as_ref())),
        0.0
    );
    let other = build(&model, &config(6, Kind::Mlp, Some(24)), 2);
    assert!(max_diff(&prompt_of(mlp.as_ref()), &prompt_of(other.as_ref())) > 1e-3);
}

#[test]
fn the_hook_prepends_the_encoder_output_with_mask_one() {
    for model in seeded_tiny_models(3) {
        for kind in [Kind::Mlp, Kind::Lstm] {
            let adapter = build(model.as_ref(), &config(3, kind, None), 0);
            let h = model.spec().hidden_size;
            let x = Tensor::zeros((2, 4, h), DType::F32, &Device::Cpu).unwrap();
            let mask = Tensor::new(&[[1f32, 1., 1., 0.], [1., 1., 1., 1.]], &Device::Cpu).unwrap();
            let mut ctx = Ctx::new(mask);
            let y = adapter.embeddings(x, &mut ctx).unwrap();
            assert_eq!(y.dims(), &[2, 7, h]);
            assert_eq!(ctx.virtual_tokens, 3);
            assert_eq!(
                ctx.attention_mask.to_vec2::<f32>().unwrap()[0],
                vec![1., 1., 1., 1., 1., 1., 0.]
            );
            let prompt = prompt_of(adapter.as_ref());
            assert_eq!(prompt.dims(), &[3, h]);
            for row in 0..2 {
                assert_eq!(max_diff(&y.i(row).unwrap().i(..3).unwrap(), &prompt), 0.0);
            }
            // The output is the encoder's, not the raw embedding table.
            let vars: HashMap<String, Var> = adapter.trainable().into_iter().collect();
            assert!(max_diff(&prompt, vars["embedding.weight"].as_tensor()) > 1e-2);
            let ids = [5u32, 6, 7];
            let plain = last_logits(model.as_ref(), &NoHooks, &ids).unwrap();
            let prompted = last_logits(model.as_ref(), adapter.as_ref(), &ids).unwrap();
            assert!(max_diff(&plain, &prompted) > 1e-3);
        }
    }
}

#[test]
fn encoder_gradients_match_finite_differences_and_frozen_weights_get_none() {
    let task = toy_classification_task(8);
    for model in seeded_tiny_models(3) {
        for kind in [Kind::Mlp, Kind::Lstm] {
            let adapter = build(model.as_ref(), &config(3, kind, Some(8)), 4);
            let loss = task
                .loss(model.as_ref(), &Tuned::of(adapter.as_ref()), &[0, 1, 2, 3])
                .unwrap()
                .loss;
            let grads = loss.backward().unwrap();
            for (name, p) in model.parameters() {
                assert!(grads.get(&p).is_none(), "frozen {name} received a gradient");
            }
            let arch = model.spec().architecture.clone();
            for (name, var) in adapter.trainable() {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{arch} {kind:?}: {name} has no gradient"));
                let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
                assert!(
                    g.iter().any(|v| v.abs() > 0.0),
                    "{arch} {kind:?}: {name} has an all-zero gradient"
                );
                // Central differences on two elements of every parameter (f64 loss from f32 forward).
                let base: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
                let loss_with = |i: usize, delta: f32| {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    task.loss(model.as_ref(), &Tuned::of(adapter.as_ref()), &[0, 1, 2, 3])
                        .unwrap()
                        .loss
                        .to_scalar::<f32>()
                        .unwrap() as f64
                };
                let h = 1e-2f32;
                for i in [0, base.len() - 1] {
                    let numeric = (loss_with(i, h) - loss_with(i, -h)) / (2.0 * h as f64);
                    let analytic = g[i] as f64;
                    assert!(
                        (numeric - analytic).abs() <= 2e-3 + 3e-2 * analytic.abs(),
                        "{arch} {kind:?} {name}[{i}]: numeric {numeric} vs analytic {analytic}"
                    );
                }
                var.set(&Tensor::from_vec(base, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
    }
}

#[test]
fn saving_writes_the_encoder_output_and_loading_reproduces_the_logits() {
    let dir = tempfile::tempdir().unwrap();
    for model in seeded_tiny_models(3) {
        for kind in [Kind::Mlp, Kind::Lstm] {
            let adapter = build(model.as_ref(), &config(4, kind, Some(12)), 9);
            let path = dir
                .path()
                .join(format!("{}-{kind:?}", model.spec().architecture));
            save_adapter(&path, adapter.as_ref(), model.spec()).unwrap();
            let saved: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path.join(CONFIG_FILE)).unwrap())
                    .unwrap();
            assert_eq!(saved["peft_type"], "P_TUNING");
            assert_eq!(saved["inference_mode"], true);
            assert_eq!(saved["encoder_hidden_size"], 12);
            let tensors = candle_core::safetensors::load(
                path.join("adapter_model.safetensors"),
                &Device::Cpu,
            )
            .unwrap();
            assert_eq!(tensors.keys().collect::<Vec<_>>(), ["prompt_embeddings"]);
            assert_eq!(
                max_diff(&tensors["prompt_embeddings"], &prompt_of(adapter.as_ref())),
                0.0
            );

            let loaded = load_adapter(&path, &mut init(model.as_ref(), 1)).unwrap();
            assert!(loaded.warnings.is_empty());
            // Loaded for inference: no encoder, the saved output is the prompt.
            let names: Vec<String> = loaded
                .adapter
                .trainable()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            assert_eq!(names, ["prompt_embeddings"]);
            let ids = [1u32, 2, 3, 4];
            let a = last_logits(model.as_ref(), adapter.as_ref(), &ids).unwrap();
            let b = last_logits(model.as_ref(), loaded.adapter.as_ref(), &ids).unwrap();
            assert!(max_diff(&a, &b) < 1e-6, "{kind:?}: {}", max_diff(&a, &b));

            // A training adapter cannot take the output back: the encoder is not recoverable from it.
            let err = adapter.load_tensors(&tensors).unwrap_err().to_string();
            assert!(err.contains("cannot be rebuilt"), "{err}");
        }
    }
}

#[test]
fn invalid_configs_are_refused_with_what_to_do() {
    let model = peft_models::tiny::gpt2(0);
    let refused = |json: &str| {
        let cfg: Box<dyn PeftMethod> = serde_json::from_str(json).unwrap();
        cfg.build(&mut init(&model, 0)).err().unwrap()
    };
    let err = refused(
        r#"{"peft_type":"P_TUNING","num_virtual_tokens":2,"encoder_reparameterization_type":"LSTM","encoder_dropout":0.1}"#,
    );
    assert!(
        matches!(err, PeftError::Unsupported(_)) && err.to_string().contains("0.0"),
        "{err}"
    );
    let err = refused(r#"{"peft_type":"P_TUNING","num_virtual_tokens":2,"token_dim":576}"#);
    assert!(
        err.to_string().contains("576") && err.to_string().contains("32"),
        "{err}"
    );
    let err = refused(r#"{"peft_type":"P_TUNING","num_virtual_tokens":0}"#);
    assert!(err.to_string().contains("num_virtual_tokens"), "{err}");
    let err = refused(r#"{"peft_type":"P_TUNING","num_virtual_tokens":2,"encoder_hidden_size":0}"#);
    assert!(err.to_string().contains("encoder_hidden_size"), "{err}");
    let err = refused(
        r#"{"peft_type":"P_TUNING","num_virtual_tokens":2,"encoder_reparameterization_type":"LSTM","encoder_num_layers":0}"#,
    );
    assert!(err.to_string().contains("encoder_num_layers"), "{err}");
    let err = serde_json::from_str::<Box<dyn PeftMethod>>(
        r#"{"peft_type":"P_TUNING","num_virtual_tokens":2,"encoder_reparameterization_type":"GRU"}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("GRU"), "{err}");
    // An LSTM adapter saved with dropout loads for inference: no LSTM is built then.
    let cfg: Box<dyn PeftMethod> = serde_json::from_str(
        r#"{"peft_type":"P_TUNING","num_virtual_tokens":2,"encoder_reparameterization_type":"LSTM","encoder_dropout":0.1,"inference_mode":true}"#,
    )
    .unwrap();
    assert_eq!(
        cfg.build(&mut init(&model, 0)).unwrap().num_trainable(),
        2 * 32
    );
}

#[test]
fn training_through_the_shared_trainer_lowers_the_loss() {
    let model = peft_models::tiny::llama(5);
    let task = toy_classification_task(16);
    for (kind, lr) in [(Kind::Mlp, 0.01), (Kind::Lstm, 0.01)] {
        let adapter = build(&model, &config(4, kind, Some(16)), 11);
        let before = prompt_of(adapter.as_ref());
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            max_steps: 20,
            batch_size: 4,
            learning_rate: lr,
            warmup_steps: 2,
            eval_every: 10,
            output_dir: dir.path().to_path_buf(),
            progress: false,
            ..TrainConfig::default()
        };
        let report = Trainer::new(&model, adapter.as_ref(), &task, cfg)
            .run()
            .unwrap();
        let losses = &report.losses;
        let first = losses[..3].iter().sum::<f64>() / 3.0;
        let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
        assert!(
            last < first * 0.8,
            "{kind:?}: loss did not fall: {first} -> {last}"
        );
        assert!(max_diff(&before, &prompt_of(adapter.as_ref())) > 1e-3);
        // The trainer's final adapter is the encoder's output, loadable for inference.
        let loaded = load_adapter(&dir.path().join("adapter"), &mut init(&model, 0)).unwrap();
        assert_eq!(
            max_diff(
                &prompt_of(loaded.adapter.as_ref()),
                &prompt_of(adapter.as_ref())
            ),
            0.0
        );
    }
}
